//! A first-match route evaluator: a VirtualService and a request in, the destination Istio
//! would route it to out (the first `http` entry whose `match` list is empty or has an entry
//! whose every condition holds; its first destination). Test support, used by the unit tests
//! and by every end-to-end routing test to judge what the controller wrote.
//!
//! Supported conditions: `headers` and `withoutHeaders` (`exact`, `prefix`, `regex`, header
//! names compared case-insensitively, regexes matched against the whole value as RE2 does in
//! Envoy) and `uri` (`exact`, `prefix`, `regex`). Anything else is an error, so a test never
//! silently judges a route it does not understand.

use serde_json::Value;

/// A request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    headers: Vec<(String, String)>,
    path: String,
}

impl Request {
    /// `GET /` without headers.
    pub fn new() -> Request {
        Request {
            headers: vec![],
            path: "/".into(),
        }
    }

    /// With header `name: value`.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// With path `path`.
    pub fn path(mut self, path: &str) -> Request {
        self.path = path.into();
        self
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn string_match(m: &Value, value: &str) -> Result<bool, String> {
    let Some(m) = m.as_object() else {
        return Err(format!("not a StringMatch: {m}"));
    };
    let mut result = true;
    for (k, v) in m {
        let v = v.as_str().ok_or_else(|| format!("{k} is not a string"))?;
        result &= match k.as_str() {
            "exact" => value == v,
            "prefix" => value.starts_with(v),
            "regex" => regex::Regex::new(&format!("^(?:{v})$"))
                .map_err(|e| format!("regex {v:?}: {e}"))?
                .is_match(value),
            other => return Err(format!("unsupported StringMatch {other}")),
        };
    }
    Ok(result)
}

fn condition_holds(cond: &Value, request: &Request) -> Result<bool, String> {
    let Some(cond) = cond.as_object() else {
        return Err("a match entry is not a mapping".into());
    };
    for (k, v) in cond {
        let holds = match k.as_str() {
            "name" => true,
            "uri" => string_match(v, &request.path)?,
            "headers" | "withoutHeaders" => {
                let Some(headers) = v.as_object() else {
                    return Err(format!("{k} is not a mapping"));
                };
                let mut all = true;
                for (name, m) in headers {
                    let present = match request.get(name) {
                        Some(value) => string_match(m, value)?,
                        None => false,
                    };
                    all &= if k == "headers" { present } else { !present };
                }
                all
            }
            other => return Err(format!("unsupported match condition {other}")),
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The destination host of the route `request` takes through `vs` (`None`: no route matches,
/// Istio answers 404).
pub fn destination(vs: &Value, request: &Request) -> Result<Option<String>, String> {
    let http = vs["spec"]["http"]
        .as_array()
        .ok_or("spec.http is not a list")?;
    for r in http {
        let matches = match &r["match"] {
            Value::Null => true,
            Value::Array(a) if a.is_empty() => true,
            Value::Array(a) => {
                let mut any = false;
                for c in a {
                    any |= condition_holds(c, request)?;
                }
                any
            }
            _ => return Err("match is not a list".into()),
        };
        if matches {
            return Ok(r["route"][0]["destination"]["host"]
                .as_str()
                .map(str::to_owned));
        }
    }
    Ok(None)
}

/// The golden requests of routing.md against a VirtualService for `service` with copies in
/// `copy` and `other_copy` and none in `absent`, prod in `prod`, header `header`, baggage key
/// `baggage_key`: each case's name, request and the host it must reach. Shared by unit and
/// end-to-end tests.
#[allow(clippy::too_many_arguments)]
pub fn golden(
    service: &str,
    prod: &str,
    copy: &str,
    other_copy: &str,
    absent: &str,
    header: &str,
    baggage_key: Option<&str>,
    domain: &str,
) -> Vec<(String, Request, String)> {
    let host = |ns: &str| format!("{service}.{ns}.svc.{domain}");
    let upper_header = header.to_ascii_uppercase();
    let mut cases = vec![
        ("header absent", Request::new(), host(prod)),
        (
            "exact namespace",
            Request::new().header(header, copy),
            host(copy),
        ),
        (
            "value in another case",
            Request::new().header(header, &copy.to_ascii_uppercase()),
            host(prod),
        ),
        (
            "header name in another case",
            Request::new().header(&upper_header, copy),
            host(copy),
        ),
        (
            "namespace without a copy",
            Request::new().header(header, absent),
            host(prod),
        ),
    ];
    if let Some(k) = baggage_key {
        cases.extend([
            (
                "baggage member alone",
                Request::new().header("baggage", &format!("{k}={copy}")),
                host(copy),
            ),
            (
                "baggage among others",
                Request::new().header("baggage", &format!("a=1,{k}={copy},b=2")),
                host(copy),
            ),
            (
                "baggage with spaces and properties",
                Request::new().header("baggage", &format!("a=1, {k} = {copy};ttl=3")),
                host(copy),
            ),
            (
                "baggage key as a property",
                Request::new().header("baggage", &format!("a=1;{k}={copy}")),
                host(prod),
            ),
            (
                "baggage longer value",
                Request::new().header("baggage", &format!("{k}={copy}x")),
                host(prod),
            ),
            (
                "baggage key suffix",
                Request::new().header("baggage", &format!("x{k}={copy}")),
                host(prod),
            ),
            (
                "header and baggage disagree",
                Request::new()
                    .header(header, other_copy)
                    .header("baggage", &format!("{k}={copy}")),
                host(other_copy),
            ),
        ]);
    }
    cases
        .into_iter()
        .map(|(what, r, want)| (what.to_owned(), r, want))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_match_wins_and_conditions_are_anded() {
        let vs = json!({"spec": {"http": [
            {"match": [{"headers": {"x-a": {"exact": "1"}, "x-b": {"prefix": "p"}}}], "route": [{"destination": {"host": "ab"}}]},
            {"match": [{"uri": {"prefix": "/api"}}, {"headers": {"x-c": {"regex": "c+"}}}], "route": [{"destination": {"host": "api-or-c"}}]},
            {"match": [{"withoutHeaders": {"x-d": {"exact": "1"}}}], "route": [{"destination": {"host": "no-d"}}]},
        ]}});
        let d = |r: Request| destination(&vs, &r).unwrap();
        assert_eq!(
            d(Request::new().header("X-A", "1").header("x-b", "pq")).as_deref(),
            Some("ab")
        );
        assert_eq!(
            d(Request::new().header("x-a", "1").path("/api/x")).as_deref(),
            Some("api-or-c")
        );
        assert_eq!(
            d(Request::new().header("x-c", "ccc")).as_deref(),
            Some("api-or-c")
        );
        assert_eq!(
            d(Request::new().header("x-c", "ccx")).as_deref(),
            Some("no-d")
        );
        assert_eq!(d(Request::new().header("x-d", "1")), None);
        assert!(
            destination(
                &json!({"spec": {"http": [{"match": [{"port": 80}]}]}}),
                &Request::new()
            )
            .is_err()
        );
    }
}
