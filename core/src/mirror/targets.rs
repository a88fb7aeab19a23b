//! Target resolution: which namespaces a source is mirrored into, as a pure function of the
//! source's annotations, the namespaces (names, labels, terminating or not) and the flags.
//!
//! The union of the list forms (`all`, `all-labeled`, globs, literal names — existing or not)
//! and the label selector, minus the exclusions (the source's own namespace,
//! `--mirror-excluded-namespaces`, names outside `--mirror-included-namespaces`, namespaces
//! opted out with `<p>/allow-mirrors: "false"`, the source's `<p>/exclude-namespaces`,
//! terminating namespaces), sorted by name and cut at the limit. Bad input is reported
//! (`InvalidTarget`) and never deletes: while anything is invalid, [`Resolution::may_delete`]
//! is false; an unreadable exclusion also stops creation.

use std::collections::BTreeMap;

use super::glob::{Glob, is_pattern};
use super::keys::Keys;
use super::selector::Selector;

/// A namespace as resolution sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `deletionTimestamp` is set.
    pub terminating: bool,
}

/// The flags that shape resolution.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// `--mirror-excluded-namespaces`.
    pub excluded: Vec<Glob>,
    /// `--mirror-included-namespaces` (empty: all).
    pub included: Vec<Glob>,
    /// `--mirror-max-targets` (0: no limit).
    pub max_targets: usize,
}

/// Why a namespace a source selects gets no mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The namespace.
    pub namespace: String,
    /// Why, in words.
    pub reason: String,
}

/// The result of resolving one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Namespaces to mirror into, sorted by name, within the limit; `false`: the namespace
    /// does not exist (yet), so the mirror is pending.
    pub targets: Vec<(String, bool)>,
    /// Selected but never written, with the reason.
    pub refused: Vec<Refusal>,
    /// `InvalidTarget` messages (one per bad item), in order.
    pub invalid: Vec<String>,
    /// Over the limit: (kept, selected, first dropped).
    pub too_many: Option<(usize, usize, String)>,
    /// False while any input is invalid: existing mirrors are kept, none deleted.
    pub may_delete: bool,
    /// False while the exclusion list is invalid: no new mirror is created.
    pub may_create: bool,
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty())
}

fn is_namespace_name(s: &str) -> bool {
    crate::naming::validate_dns1123_label(s).is_ok()
}

/// Parses `--mirror-excluded-namespaces` / `--mirror-included-namespaces` style lists.
pub fn globs(flag: &str, s: &str) -> Result<Vec<Glob>, String> {
    items(s)
        .map(|i| Glob::new(i).map_err(|e| format!("{flag}: {e}")))
        .collect()
}

/// Resolves the targets of a source in `source_namespace` with `annotations`.
pub fn resolve(
    keys: &Keys,
    source_namespace: &str,
    annotations: &BTreeMap<String, String>,
    namespaces: &[Namespace],
    limits: &Limits,
) -> Resolution {
    let mut r = Resolution {
        may_delete: true,
        may_create: true,
        ..Default::default()
    };
    let by_name: BTreeMap<&str, &Namespace> =
        namespaces.iter().map(|n| (n.name.as_str(), n)).collect();
    let allow = keys.allow_mirrors();
    let opted = |n: &Namespace, v: &str| n.labels.get(&allow).map(String::as_str) == Some(v);

    // The forms: (namespace, named literally).
    let mut selected: BTreeMap<String, bool> = BTreeMap::new();
    if let Some(list) = annotations.get(&keys.target_namespaces()) {
        for item in items(list) {
            match item {
                "all" => {
                    for n in namespaces {
                        selected.entry(n.name.clone()).or_insert(false);
                    }
                }
                "all-labeled" => {
                    for n in namespaces.iter().filter(|n| opted(n, "true")) {
                        selected.entry(n.name.clone()).or_insert(false);
                    }
                }
                _ if is_pattern(item) => match Glob::new(item) {
                    Ok(g) => {
                        for n in namespaces.iter().filter(|n| g.matches(&n.name)) {
                            selected.entry(n.name.clone()).or_insert(false);
                        }
                    }
                    Err(e) => r.invalid.push(format!("target {item:?}: {e}")),
                },
                _ if !is_namespace_name(item) => r.invalid.push(format!(
                    "target {item:?} is not a namespace name, a glob, all or all-labeled"
                )),
                _ if item == source_namespace => r
                    .invalid
                    .push(format!("target {item:?} is the source's own namespace")),
                _ => {
                    selected.insert(item.to_owned(), true);
                }
            }
        }
    }
    if let Some(s) = annotations.get(&keys.target_namespace_selector()) {
        match Selector::parse(s) {
            Ok(Some(sel)) => {
                for n in namespaces.iter().filter(|n| sel.matches(&n.labels)) {
                    selected.entry(n.name.clone()).or_insert(false);
                }
            }
            Ok(None) => {}
            Err(e) => r
                .invalid
                .push(format!("target-namespace-selector {s:?}: {e}")),
        }
    }
    let mut exclude = Vec::new();
    if let Some(list) = annotations.get(&keys.exclude_namespaces()) {
        for item in items(list) {
            match Glob::new(item) {
                Ok(g) => exclude.push(g),
                Err(e) => {
                    r.invalid.push(format!("exclude-namespaces {item:?}: {e}"));
                    r.may_create = false;
                }
            }
        }
    }
    let mut limit = limits.max_targets;
    if let Some(v) = annotations.get(&keys.max_targets()) {
        match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => limit = if limit == 0 { n } else { limit.min(n) },
            _ => r
                .invalid
                .push(format!("max-targets {v:?} is not an integer of at least 1")),
        }
    }
    r.may_delete = r.invalid.is_empty();

    let mut kept: Vec<(String, bool)> = Vec::new();
    for (name, literal) in selected {
        let ns = by_name.get(name.as_str());
        let why = if name == source_namespace {
            Some("the source's own namespace".to_owned())
        } else if limits.excluded.iter().any(|g| g.matches(&name)) {
            Some("excluded by --mirror-excluded-namespaces".into())
        } else if !limits.included.is_empty() && !limits.included.iter().any(|g| g.matches(&name)) {
            Some("not in --mirror-included-namespaces".into())
        } else if ns.is_some_and(|n| opted(n, "false")) {
            Some(format!("the namespace opted out ({allow}=false)"))
        } else if exclude.iter().any(|g| g.matches(&name)) {
            Some("excluded by the source's exclude-namespaces".into())
        } else if ns.is_some_and(|n| n.terminating) {
            Some("the namespace is terminating".into())
        } else {
            None
        };
        match why {
            // Namespaces that patterns skip are not worth a line; named ones, and terminating
            // ones, are.
            Some(reason) if literal || ns.is_some_and(|n| n.terminating) => {
                r.refused.push(Refusal {
                    namespace: name,
                    reason,
                })
            }
            Some(_) => {}
            None => kept.push((name.clone(), ns.is_some())),
        }
    }
    // Sorted by name (BTreeMap order), then cut: the same namespaces every time.
    if limit > 0 && kept.len() > limit {
        let dropped = kept.split_off(limit);
        r.too_many = Some((limit, limit + dropped.len(), dropped[0].0.clone()));
        for (name, _) in dropped {
            r.refused.push(Refusal {
                namespace: name,
                reason: format!("beyond the target limit of {limit}"),
            });
        }
    }
    r.refused.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    r.targets = kept;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "fleetmirror.io";

    fn ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            terminating: false,
        }
    }

    /// kubemirror's resolution table: app1, app2, app-frontend, app-backend, prod-db, prod-api,
    /// kube-system, default; app1, app-frontend, prod-db opted in; the source in default.
    fn fleet() -> Vec<Namespace> {
        let yes = [("fleetmirror.io/allow-mirrors", "true")];
        vec![
            ns("app1", &yes),
            ns("app2", &[]),
            ns("app-frontend", &yes),
            ns("app-backend", &[]),
            ns("prod-db", &yes),
            ns("prod-api", &[]),
            ns("kube-system", &[]),
            ns("default", &[]),
        ]
    }

    fn limits() -> Limits {
        Limits {
            excluded: globs("x", "kube-system,kube-public,kube-node-lease").unwrap(),
            included: vec![],
            max_targets: 100,
        }
    }

    fn resolve_with(
        source_ns: &str,
        ann: &[(&str, &str)],
        namespaces: &[Namespace],
        l: &Limits,
    ) -> Resolution {
        let keys = Keys::new(P).unwrap();
        let a: BTreeMap<String, String> = ann
            .iter()
            .map(|(k, v)| (format!("{P}/{k}"), v.to_string()))
            .collect();
        resolve(&keys, source_ns, &a, namespaces, l)
    }

    fn names(r: &Resolution) -> Vec<&str> {
        r.targets.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn targets(list: &str) -> Vec<String> {
        let r = resolve_with(
            "default",
            &[("target-namespaces", list)],
            &fleet(),
            &limits(),
        );
        names(&r).into_iter().map(String::from).collect()
    }

    #[test]
    fn kubemirrors_resolution_table() {
        assert_eq!(
            targets("all"),
            [
                "app-backend",
                "app-frontend",
                "app1",
                "app2",
                "prod-api",
                "prod-db"
            ]
        );
        assert_eq!(targets("all-labeled"), ["app-frontend", "app1", "prod-db"]);
        assert_eq!(targets("app-*"), ["app-backend", "app-frontend"]);
        assert_eq!(
            targets("app-*,prod-*"),
            ["app-backend", "app-frontend", "prod-api", "prod-db"]
        );
        assert_eq!(targets("app1,app2"), ["app1", "app2"]);
        assert_eq!(
            targets("app-*,app-frontend"),
            ["app-backend", "app-frontend"]
        );
        assert_eq!(
            targets("a, b ,"),
            ["a", "b"],
            "items trimmed, empty ones dropped"
        );
        assert_eq!(targets("a,,b"), ["a", "b"]);
        let r = resolve_with(
            "app1",
            &[("target-namespaces", "app1")],
            &fleet(),
            &limits(),
        );
        assert!(r.targets.is_empty());
        assert_eq!(
            r.invalid.len(),
            1,
            "a literal naming the source's namespace"
        );
        let three = vec![ns("app1", &[]), ns("app2", &[]), ns("app3", &[])];
        let only = Limits {
            included: globs("x", "specific-ns").unwrap(),
            ..limits()
        };
        let r = resolve_with("default", &[("target-namespaces", "all")], &three, &only);
        assert!(r.targets.is_empty());
        let r = resolve_with(
            "default",
            &[("target-namespaces", "missing-ns")],
            &three,
            &limits(),
        );
        assert_eq!(
            r.targets,
            [("missing-ns".to_owned(), false)],
            "a literal need not exist yet"
        );
    }

    #[test]
    fn fleetmirror_rows() {
        let mut f = fleet();
        f[0].labels
            .insert("fleetmirror.io/allow-mirrors".into(), "false".into());
        let r = resolve_with("default", &[("target-namespaces", "app1")], &f, &limits());
        assert!(
            r.targets.is_empty(),
            "an opted-out namespace is never reached, even by name"
        );
        assert_eq!(r.refused[0].namespace, "app1");
        assert_eq!(targets("[a-b]pp1"), ["app1"]);
        let r = resolve_with(
            "default",
            &[("target-namespace-selector", "")],
            &fleet(),
            &limits(),
        );
        assert!(r.targets.is_empty(), "an empty selector selects nothing");
        let r = resolve_with(
            "default",
            &[("target-namespace-selector", "env in (prod")],
            &fleet(),
            &limits(),
        );
        assert_eq!(r.invalid.len(), 1);
        assert!(!r.may_delete);
        let r = resolve_with(
            "default",
            &[
                ("target-namespaces", "prod-*"),
                ("exclude-namespaces", "*-api"),
            ],
            &fleet(),
            &limits(),
        );
        assert_eq!(names(&r), ["prod-db"]);
        let five: Vec<Namespace> = ["e", "c", "a", "d", "b"]
            .iter()
            .map(|n| ns(n, &[]))
            .collect();
        let three = Limits {
            max_targets: 3,
            ..limits()
        };
        for _ in 0..5 {
            let r = resolve_with("default", &[("target-namespaces", "all")], &five, &three);
            assert_eq!(
                names(&r),
                ["a", "b", "c"],
                "the first 3 by name, every time"
            );
            assert_eq!(r.too_many, Some((3, 5, "d".into())));
            assert_eq!(r.refused.len(), 2);
        }
        let r = resolve_with(
            "default",
            &[("target-namespaces", "all"), ("max-targets", "2")],
            &five,
            &three,
        );
        assert_eq!(names(&r), ["a", "b"], "max-targets lowers the limit");
        let r = resolve_with(
            "default",
            &[("target-namespaces", "all"), ("max-targets", "9")],
            &five,
            &three,
        );
        assert_eq!(names(&r).len(), 3, "never raises it");
        let r = resolve_with(
            "default",
            &[("target-namespaces", "all"), ("max-targets", "0")],
            &five,
            &three,
        );
        assert!(!r.invalid.is_empty() && !r.may_delete);
    }

    #[test]
    fn selectors_exclusions_and_terminating_namespaces() {
        let mut f = vec![
            ns("a", &[("env", "prod")]),
            ns("b", &[("env", "dev")]),
            ns("c", &[("env", "prod")]),
        ];
        f[2].terminating = true;
        let r = resolve_with(
            "default",
            &[("target-namespace-selector", "env=prod")],
            &f,
            &limits(),
        );
        assert_eq!(names(&r), ["a"]);
        assert_eq!(
            r.refused,
            [Refusal {
                namespace: "c".into(),
                reason: "the namespace is terminating".into()
            }]
        );
        let r = resolve_with(
            "default",
            &[
                ("target-namespaces", "b"),
                ("target-namespace-selector", "env=prod"),
            ],
            &f,
            &limits(),
        );
        assert_eq!(names(&r), ["a", "b"], "list and selector are OR'd");
        let r = resolve_with(
            "default",
            &[
                ("target-namespaces", "all"),
                ("exclude-namespaces", "bad-["),
            ],
            &f,
            &limits(),
        );
        assert!(
            !r.may_create && !r.may_delete,
            "an unreadable exclusion stops creation"
        );
        let r = resolve_with(
            "default",
            &[("target-namespaces", "app-[, Not_A_Name, a")],
            &f,
            &limits(),
        );
        assert_eq!(r.invalid.len(), 2, "{:?}", r.invalid);
        assert!(r.invalid[0].contains("app-["), "in order");
        assert_eq!(names(&r), ["a"], "the valid forms still apply");
        assert!(!r.may_delete);
        let r = resolve_with(
            "default",
            &[("target-namespaces", "kube-system")],
            &fleet(),
            &limits(),
        );
        assert!(r.targets.is_empty());
        assert_eq!(
            r.refused[0].reason,
            "excluded by --mirror-excluded-namespaces"
        );
    }
}
