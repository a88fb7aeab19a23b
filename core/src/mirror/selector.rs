//! Label selectors in `kubectl -l` syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k`, `!k`, joined by commas (AND). An empty selector selects nothing here
//! (the spec's choice for `target-namespace-selector`: an empty annotation must not mean "every
//! namespace").

use std::collections::BTreeMap;

/// One requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `k=v`, `k==v`.
    Equals(String, String),
    /// `k!=v` (also true when `k` is absent).
    NotEquals(String, String),
    /// `k in (…)`.
    In(String, Vec<String>),
    /// `k notin (…)` (also true when `k` is absent).
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    DoesNotExist(String),
}

/// A parsed selector (AND of its requirements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

pub(crate) fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(|p| crate::naming::validate_dns1123_subdomain(p).is_ok())
}

pub(crate) fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("{rest:?}: expected a (list) of values"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(format!("{bad:?} is not a label value"));
    }
    Ok(values)
}

impl Selector {
    /// Parses `s`; `None` for an empty selector (selects nothing).
    pub fn parse(s: &str) -> Result<Option<Selector>, String> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        let mut reqs = Vec::new();
        for part in split_top(s)? {
            let part = part.trim();
            if part.is_empty() {
                return Err("empty requirement".into());
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::DoesNotExist(k.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = part.split_once(" notin") {
                Requirement::NotIn(k.trim().to_owned(), set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in") {
                Requirement::In(k.trim().to_owned(), set(rest)?)
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, value) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::DoesNotExist(k) => (k, None),
            };
            if !valid_key(key) {
                return Err(format!("{key:?} is not a label key"));
            }
            if let Some(v) = value
                && !valid_value(v)
            {
                return Err(format!("{v:?} is not a label value"));
            }
            reqs.push(req);
        }
        Ok(Some(Selector(reqs)))
    }

    /// True when `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forms_and_matching() {
        let l = labels(&[("env", "prod"), ("team", "a"), ("example.com/tier", "web")]);
        let cases = [
            ("env=prod", true),
            ("env==prod", true),
            ("env!=prod", false),
            ("env!=dev", true),
            ("missing!=x", true),
            ("env in (prod, dev)", true),
            ("env notin (prod)", false),
            ("missing notin (x)", true),
            ("team", true),
            ("!team", false),
            ("!missing", true),
            ("example.com/tier=web,env=prod", true),
            ("env=prod, team=b", false),
        ];
        for (s, want) in cases {
            let sel = Selector::parse(s).unwrap().unwrap();
            assert_eq!(sel.matches(&l), want, "{s}");
        }
        assert_eq!(Selector::parse("").unwrap(), None, "empty selects nothing");
        assert_eq!(Selector::parse("  ").unwrap(), None);
    }

    #[test]
    fn errors() {
        for bad in [
            "env in (prod",
            "env in prod",
            "Bad Key=1",
            "env=has space",
            "a,,b",
            "env=-x",
            "(",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
