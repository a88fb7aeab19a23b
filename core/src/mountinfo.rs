//! `/proc/self/mountinfo`, parsed (proc(5)), and the question the agent asks of it: is the
//! mount at a target a bind of a given source directory?
//!
//! A bind mount's entry names the *filesystem-relative* root of what was bound, not the path
//! it was bound from; so the source path is first resolved to (device, root within that
//! filesystem) through the mount that contains it, and compared with the target's entry.

use std::path::{Component, Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount ID.
    pub id: u32,
    /// Parent mount ID.
    pub parent: u32,
    /// `major:minor` of the filesystem.
    pub device: String,
    /// The directory of the filesystem that forms this mount's root.
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    /// Filesystem type.
    pub fs_type: String,
}

impl MountEntry {
    /// True when the mount propagates to and from peers (`shared:N`).
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }

    /// The peer group the mount belongs to (`shared:N`), if it is shared.
    pub fn peer_group(&self) -> Option<&str> {
        self.optional.iter().find_map(|o| o.strip_prefix("shared:"))
    }

    /// True when the mount is a slave of a peer group (`master:N`).
    pub fn is_slave(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("master:"))
    }
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.len() - i >= 4
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let mut f = line.split(' ');
    let id = f.next()?.parse().ok()?;
    let parent = f.next()?.parse().ok()?;
    let device = f.next()?.to_owned();
    // A bind whose source directory was removed shows its root as `<root>//deleted`: the
    // source is gone, which is what garbage collection needs to know.
    let raw_root = f.next()?;
    let root = unescape(raw_root.strip_suffix("//deleted").unwrap_or(raw_root));
    let mount_point = unescape(f.next()?);
    let _options = f.next()?;
    let mut optional = Vec::new();
    loop {
        match f.next()? {
            "-" => break,
            o => optional.push(o.to_owned()),
        }
    }
    let fs_type = f.next()?.to_owned();
    Some(MountEntry {
        id,
        parent,
        device,
        root,
        mount_point,
        optional,
        fs_type,
    })
}

/// The mount table, with lookups by mount point (a pass asks it once or twice per pod, so
/// lookups must not scan the table).
#[derive(Debug, Clone, Default)]
pub struct MountTable {
    entries: Vec<MountEntry>,
    /// Mount point → indexes into `entries`, in list order.
    by_point: std::collections::HashMap<PathBuf, Vec<usize>>,
}

impl MountTable {
    /// Parses mountinfo text.
    pub fn parse(text: &str) -> Self {
        let entries = parse(text);
        let mut by_point: std::collections::HashMap<PathBuf, Vec<usize>> =
            std::collections::HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_point.entry(e.mount_point.clone()).or_default().push(i);
        }
        Self { entries, by_point }
    }

    /// Parses mountinfo as read from /proc: the kernel escapes only space, tab, newline and
    /// backslash, so a path may hold any other byte. An entry with invalid UTF-8 keeps its
    /// other fields (the path gets replacement characters and matches nothing of ours);
    /// the rest of the table is unaffected.
    pub fn parse_bytes(bytes: &[u8]) -> Self {
        Self::parse(&String::from_utf8_lossy(bytes))
    }

    /// Every entry, in mount order.
    pub fn entries(&self) -> &[MountEntry] {
        &self.entries
    }

    /// The topmost mount whose mount point is exactly `path`.
    ///
    /// Mounts stacked on one point form a chain, each the parent of the one above it; the top
    /// is the one no other mount there sits on. List order is not enough: a mount tucked
    /// beneath others (by propagation, or `MOVE_MOUNT_BENEATH`) is listed after them. Should
    /// the chain be ambiguous, the last listed candidate wins.
    pub fn at(&self, path: &Path) -> Option<&MountEntry> {
        let here = self.by_point.get(path)?;
        let under_another = |e: &MountEntry| {
            here.iter()
                .any(|&o| self.entries[o].parent == e.id && self.entries[o].id != e.id)
        };
        here.iter()
            .rev()
            .map(|&i| &self.entries[i])
            .find(|e| !under_another(e))
            .or_else(|| here.last().map(|&i| &self.entries[i]))
    }

    /// The mount that contains `path`: the topmost at the longest mount point that is a prefix.
    pub fn containing(&self, path: &Path) -> Option<&MountEntry> {
        path.ancestors().find_map(|p| self.at(p))
    }

    /// `path` as (device, path within that filesystem), through the mount that contains it.
    pub fn resolve(&self, path: &Path) -> Option<(String, PathBuf)> {
        let m = self.containing(path)?;
        let rest = path.strip_prefix(&m.mount_point).ok()?;
        Some((m.device.clone(), join_clean(&m.root, rest)))
    }

    /// True when the topmost mount at `target` is a bind of exactly `source`.
    pub fn is_bind_of(&self, target: &Path, source: &Path) -> bool {
        match (self.at(target), self.resolve(source)) {
            (Some(t), Some((dev, root))) => t.device == dev && t.root == root,
            _ => false,
        }
    }

    /// Where the mount at `target` comes from, as a path under `within` (a directory whose
    /// containing mount is known), when it is a bind of something below `within`.
    pub fn bind_source_under(&self, target: &Path, within: &Path) -> Option<PathBuf> {
        let t = self.at(target)?;
        let (dev, root) = self.resolve(within)?;
        if t.device != dev {
            return None;
        }
        let rel = t.root.strip_prefix(&root).ok()?;
        Some(within.join(rel))
    }
}

fn join_clean(base: &Path, rest: &Path) -> PathBuf {
    let mut out = base.to_path_buf();
    for c in rest.components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of a node: / on vda1, /var/lib/kubelet a shared bind of itself (kubelet does
    // that), a tmpfs volume inside a pod directory, and our bind mount of that pod directory.
    const NODE: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 254:1 /var/lib/kubelet /var/lib/kubelet rw,relatime shared:9 - ext4 /dev/vda1 rw
41 30 0:52 / /var/lib/kubelet/pods/aaaa/volumes/kubernetes.io~secret/tok rw shared:20 - tmpfs tmpfs rw
50 22 254:1 /var/lib/kubelet/pods/aaaa /var/lib/loft/vc/kubelet/pods/1111 rw,relatime shared:9 - ext4 /dev/vda1 rw
51 50 0:52 / /var/lib/loft/vc/kubelet/pods/1111/volumes/kubernetes.io~secret/tok rw shared:20 - tmpfs tmpfs rw
60 22 254:1 /srv/other /var/lib/loft/vc/kubelet/pods/2222 rw - ext4 /dev/vda1 rw
70 22 0:60 / /mnt/with\\040space rw - tmpfs tmpfs rw
bogus line
";

    #[test]
    fn parses_fields_and_escapes() {
        let t = MountTable::parse(NODE);
        assert_eq!(t.entries().len(), 7, "the bogus line is skipped");
        let e = &t.entries()[1];
        assert_eq!((e.id, e.parent, e.device.as_str()), (30, 22, "254:1"));
        assert_eq!(e.root, Path::new("/var/lib/kubelet"));
        assert!(e.is_shared());
        assert_eq!(t.entries()[6].mount_point, Path::new("/mnt/with space"));
        assert!(!t.entries()[5].is_shared());
    }

    #[test]
    fn resolves_paths_through_their_mount() {
        let t = MountTable::parse(NODE);
        let (dev, root) = t.resolve(Path::new("/var/lib/kubelet/pods/aaaa")).unwrap();
        assert_eq!(
            (dev.as_str(), root.as_path()),
            ("254:1", Path::new("/var/lib/kubelet/pods/aaaa"))
        );
        assert_eq!(
            t.containing(Path::new(
                "/var/lib/kubelet/pods/aaaa/volumes/kubernetes.io~secret/tok/x"
            ))
            .unwrap()
            .id,
            41
        );
    }

    #[test]
    fn tells_our_bind_from_a_foreign_mount() {
        let t = MountTable::parse(NODE);
        assert!(t.is_bind_of(
            Path::new("/var/lib/loft/vc/kubelet/pods/1111"),
            Path::new("/var/lib/kubelet/pods/aaaa")
        ));
        assert!(!t.is_bind_of(
            Path::new("/var/lib/loft/vc/kubelet/pods/2222"),
            Path::new("/var/lib/kubelet/pods/aaaa")
        ));
        assert!(!t.is_bind_of(
            Path::new("/var/lib/loft/vc/kubelet/pods/3333"),
            Path::new("/var/lib/kubelet/pods/aaaa")
        ));
        let pods = Path::new("/var/lib/kubelet/pods");
        assert_eq!(
            t.bind_source_under(Path::new("/var/lib/loft/vc/kubelet/pods/1111"), pods),
            Some(PathBuf::from("/var/lib/kubelet/pods/aaaa"))
        );
        assert_eq!(
            t.bind_source_under(Path::new("/var/lib/loft/vc/kubelet/pods/2222"), pods),
            None,
            "not from kubelet"
        );
    }

    #[test]
    fn deleted_sources_and_invalid_utf8() {
        let text = b"1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 8:1 /k/pods/u1//deleted /loft/t rw - ext4 /dev/sda rw\n3 1 8:1 /x /loft/\xff rw - ext4 /dev/sda rw\n";
        let t = MountTable::parse_bytes(text);
        assert_eq!(
            t.entries().len(),
            3,
            "an invalid byte spoils one path, not the table"
        );
        assert_eq!(
            t.at(Path::new("/loft/t")).unwrap().root,
            Path::new("/k/pods/u1")
        );
        assert_eq!(
            t.bind_source_under(Path::new("/loft/t"), Path::new("/k/pods")),
            Some(PathBuf::from("/k/pods/u1"))
        );
    }

    #[test]
    fn the_top_of_a_stack_is_the_mount_nothing_sits_on() {
        // Stacked in list order: 3 sits on 2.
        let text = "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 8:1 /a /t rw - ext4 /dev/sda rw\n3 2 8:1 /b /t rw - ext4 /dev/sda rw\n";
        let t = MountTable::parse(text);
        assert_eq!(t.at(Path::new("/t")).unwrap().id, 3);
        assert!(t.is_bind_of(Path::new("/t"), Path::new("/b")));
        // Tucked beneath: 4 is listed last but 2 now sits on it, and 3 on 2.
        let tucked = "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 4 8:1 /a /t rw - ext4 /dev/sda rw\n3 2 8:1 /b /t rw - ext4 /dev/sda rw\n4 1 8:1 /c /t rw - ext4 /dev/sda rw\n";
        let t = MountTable::parse(tucked);
        assert_eq!(t.at(Path::new("/t")).unwrap().id, 3);
        assert!(!t.is_bind_of(Path::new("/t"), Path::new("/c")));
        // The containing mount of a path below follows the same rule.
        assert_eq!(t.containing(Path::new("/t/x")).unwrap().id, 3);
        assert_eq!(t.resolve(Path::new("/t/x")).unwrap().1, Path::new("/b/x"));
    }
}
