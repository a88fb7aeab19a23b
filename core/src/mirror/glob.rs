//! Namespace-name patterns.
//!
//! * [`Glob`]: Go's `path.Match` syntax, which kubemirror's target lists use: `*` any run of
//!   characters, `?` one character, `[a-z0-9]` / `[^…]` classes, `\c` a literal `c`. Unlike
//!   kubemirror, an item with a class but no `*`/`?` is a pattern too (`[a-b]pp1` matches
//!   `app1`). A pattern is validated whole, as Go does (a syntax error anywhere is an error,
//!   whatever the name), and must hold only what a namespace name can (lowercase letters,
//!   digits, `-`) besides its glob syntax.
//! * [`simple_match`]: the `namespacePattern` of transform rules, where only `*` and `?` are
//!   special and everything else, brackets included, is literal.

/// Why a pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(pub String);

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated Go `path.Match` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
}

/// True when `item` uses glob syntax (and so is a pattern, not a literal name).
pub fn is_pattern(item: &str) -> bool {
    item.contains(['*', '?', '['])
}

impl Glob {
    /// Parses and validates `pattern`.
    pub fn new(pattern: &str) -> Result<Glob, BadPattern> {
        if pattern.is_empty() {
            return Err(BadPattern("empty pattern".into()));
        }
        if let Some(c) = pattern.chars().find(
            |c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '*' | '?' | '[' | ']' | '^' | '\\'),
        ) {
            return Err(BadPattern(format!(
                "{pattern:?}: {c:?} cannot appear in a namespace name"
            )));
        }
        let g = Glob {
            pattern: pattern.chars().collect(),
        };
        // Validate the whole pattern, as Go does after a mismatch.
        g.validate()
            .map_err(|()| BadPattern(format!("{pattern:?}: syntax error in pattern")))?;
        Ok(g)
    }

    /// True when `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        match_here(&self.pattern, &name).unwrap_or(false)
    }

    fn validate(&self) -> Result<(), ()> {
        let mut p = &self.pattern[..];
        while !p.is_empty() {
            match p[0] {
                '*' | '?' => p = &p[1..],
                '[' => p = class_end(&p[1..])?,
                '\\' => {
                    if p.len() < 2 {
                        return Err(());
                    }
                    p = &p[2..];
                }
                _ => p = &p[1..],
            }
        }
        Ok(())
    }
}

/// The pattern after a class whose body starts at `p` (just past `[`).
fn class_end(mut p: &[char]) -> Result<&[char], ()> {
    if p.first() == Some(&'^') {
        p = &p[1..];
    }
    let mut ranges = 0;
    loop {
        if p.first() == Some(&']') && ranges > 0 {
            return Ok(&p[1..]);
        }
        let (_, rest) = class_char(p)?;
        p = rest;
        if p.first() == Some(&'-') {
            let (_, rest) = class_char(&p[1..])?;
            p = rest;
        }
        ranges += 1;
    }
}

/// One character of a class (`\c` escapes), and the rest.
fn class_char(p: &[char]) -> Result<(char, &[char]), ()> {
    match p {
        [] | ['-' | ']', ..] => Err(()),
        ['\\', c, rest @ ..] => Ok((*c, rest)),
        ['\\'] => Err(()),
        [c, rest @ ..] => Ok((*c, rest)),
    }
}

/// Does class body `p` (past `[`) match `c`? Returns the verdict and the rest of the pattern.
fn class_matches(mut p: &[char], c: char) -> Result<(bool, &[char]), ()> {
    let negated = p.first() == Some(&'^');
    if negated {
        p = &p[1..];
    }
    let mut matched = false;
    let mut ranges = 0;
    loop {
        if p.first() == Some(&']') && ranges > 0 {
            return Ok((matched != negated, &p[1..]));
        }
        let (lo, rest) = class_char(p)?;
        p = rest;
        let mut hi = lo;
        if p.first() == Some(&'-') {
            let (h, rest) = class_char(&p[1..])?;
            hi = h;
            p = rest;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
        ranges += 1;
    }
}

/// Backtracking matcher for `*` (namespace names hold no `/`, Go's separator).
fn match_here(p: &[char], n: &[char]) -> Result<bool, ()> {
    match p.first() {
        None => Ok(n.is_empty()),
        Some('*') => {
            let rest = &p[1..];
            for i in 0..=n.len() {
                if match_here(rest, &n[i..])? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Some('?') => Ok(!n.is_empty() && match_here(&p[1..], &n[1..])?),
        Some('[') => {
            let Some(&c) = n.first() else {
                return Ok(false);
            };
            let (ok, rest) = class_matches(&p[1..], c)?;
            Ok(ok && match_here(rest, &n[1..])?)
        }
        Some('\\') => {
            let lit = *p.get(1).ok_or(())?;
            Ok(n.first() == Some(&lit) && match_here(&p[2..], &n[1..])?)
        }
        Some(&lit) => Ok(n.first() == Some(&lit) && match_here(&p[1..], &n[1..])?),
    }
}

/// The `namespacePattern` of a transform rule: `*` any run, `?` one character, everything else
/// literal; an empty pattern matches only the empty name.
pub fn simple_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        for ok in [
            "app-*",
            "*-app-*-db",
            "my-namespace",
            "app-?",
            "app-[abc]",
            "app-[z-a]",
            "[^a-c]x",
            "all",
        ] {
            assert!(Glob::new(ok).is_ok(), "{ok}");
        }
        for bad in ["app-[", "", "[]", "app-[a-", "App-*", "a/b", "a_b", "x\\"] {
            assert!(Glob::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn matching() {
        let m = |p: &str, n: &str| Glob::new(p).unwrap().matches(n);
        assert!(m("app-frontend", "app-frontend"));
        assert!(m("app-*", "app-frontend"));
        assert!(m("*-frontend", "app-frontend"));
        assert!(m("app-*-frontend", "app-prod-frontend"));
        assert!(m("*-app-*-db", "my-app-prod-db"));
        assert!(m("app?", "app1"));
        assert!(m("[a-b]pp1", "app1"), "a class is a pattern too");
        assert!(m("app-[abc]", "app-b"));
        assert!(!m("app-[^abc]", "app-b"));
        assert!(!m("app-[z-a]", "app-b"), "an empty range matches nothing");
        assert!(!m("app-*", "backend"));
        assert!(!m("prod-*", "production-app"));
        assert!(!m("app?", "app12"));
    }

    #[test]
    fn namespace_patterns_of_transform_rules() {
        for (p, n) in [
            ("*", "anything"),
            ("prod-*", "prod-app-1"),
            ("*-staging", "app-staging"),
            ("app-*-db", "app-prod-db"),
            ("app-*", "app-"),
            ("app-??", "app-12"),
            ("app-?-*", "app-1-prod"),
            ("", ""),
            ("service-v*", "service-v1.2.3"),
        ] {
            assert!(simple_match(p, n), "{p} ~ {n}");
        }
        for (p, n) in [
            ("app-?", "app-12"),
            ("app-?", "app-"),
            ("", "text"),
            ("production", "prod"),
            ("prod", "production"),
            ("[a]", "a"),
        ] {
            assert!(!simple_match(p, n), "{p} !~ {n}");
        }
    }
}
