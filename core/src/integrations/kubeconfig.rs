//! The kubeconfig policy (integrations.md "Kubeconfig policy"; security): whoever may write
//! Secrets in a namespace writes the kubeconfig an IntegrationTarget names, and the aggregator
//! acts on it with its own privileges. Only the selected context's cluster and user are used,
//! and they may hold only inline credentials: no command runs (`exec`, `auth-provider`), no file
//! of the aggregator is read and sent (`certificate-authority`, `client-certificate`,
//! `client-key`, `tokenFile`), no plain-text `http://` server, no proxy.

use base64::Engine;
use serde_yaml::{Mapping, Value};

/// How a target is authenticated.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// A bearer token.
    Token(String),
    /// A client certificate and key (PEM).
    ClientCertificate {
        /// PEM certificate.
        certificate: Vec<u8>,
        /// PEM key.
        key: Vec<u8>,
    },
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    /// Never prints a credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Token(_) => "Token(<redacted>)",
            Auth::ClientCertificate { .. } => "ClientCertificate(<redacted>)",
            Auth::Basic { .. } => "Basic(<redacted>)",
        })
    }
}

/// What a client of the target is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The `https://` URL.
    pub server: String,
    /// PEM CA bundle (`certificate-authority-data`).
    pub certificate_authority: Option<Vec<u8>>,
    /// `tls-server-name`.
    pub tls_server_name: Option<String>,
    /// `insecure-skip-tls-verify` (allowed, with a Warning Event per Secret version).
    pub insecure: bool,
    /// Credentials.
    pub auth: Auth,
}

/// Why a kubeconfig cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeconfigError {
    /// Not a kubeconfig, no such context, a missing cluster or user (`RegistrationFailed`).
    Parse(String),
    /// Refused by the policy (`InvalidSecret`); the text names the field and the alternative.
    Refused(String),
}

const ALTERNATIVE: &str = "use a token, a client certificate or basic auth";

fn named<'a>(list: Option<&'a Value>, key: &str, name: &str) -> Option<&'a Mapping> {
    list?.as_sequence()?.iter().find_map(|e| {
        (e.get("name")?.as_str()? == name)
            .then(|| e.get(key)?.as_mapping())
            .flatten()
    })
}

fn text(m: &Mapping, key: &str) -> Option<String> {
    m.get(key)?.as_str().map(str::to_owned)
}

fn data(m: &Mapping, key: &str, what: &str) -> Result<Option<Vec<u8>>, KubeconfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map(Some)
            .map_err(|_| KubeconfigError::Refused(format!("{what} {key} is not base64"))),
        Some(_) => Err(KubeconfigError::Refused(format!(
            "{what} {key} is not a string"
        ))),
    }
}

/// `url` without what could carry a credential: user info (`user:pw@`), query and fragment
/// are replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let (rest, tail) = match rest.find(['?', '#']) {
        Some(i) => (&rest[..i], "?***"),
        None => (rest, ""),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = match authority.rfind('@') {
        Some(i) => format!("***@{}", &authority[i + 1..]),
        None => authority.to_owned(),
    };
    format!("{scheme}{authority}{path}{tail}")
}

/// Parses `kubeconfig` and applies the policy to `context` (`None`: the current context).
pub fn parse(kubeconfig: &str, context: Option<&str>) -> Result<Endpoint, KubeconfigError> {
    let parse_err = |m: String| KubeconfigError::Parse(m);
    let refused = |m: String| KubeconfigError::Refused(m);
    let root: Value = serde_yaml::from_str(kubeconfig).map_err(|e| parse_err(e.to_string()))?;
    if !root.is_mapping() {
        return Err(parse_err("not a mapping".into()));
    }
    let context_name = match context {
        Some(c) => c.to_owned(),
        None => root
            .get("current-context")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| parse_err("no current-context and no context given".into()))?
            .to_owned(),
    };
    let ctx = named(root.get("contexts"), "context", &context_name)
        .ok_or_else(|| parse_err(format!("context \"{context_name}\" not found")))?;
    let cluster_name = text(ctx, "cluster").unwrap_or_default();
    let user_name = text(ctx, "user").unwrap_or_default();
    let cluster = named(root.get("clusters"), "cluster", &cluster_name).ok_or_else(|| {
        parse_err(format!(
            "context \"{context_name}\" names cluster \"{cluster_name}\", which is not in the file"
        ))
    })?;
    // A context without a user is allowed (no credentials); one naming a missing user is not.
    let empty = Mapping::new();
    let user = if user_name.is_empty() {
        &empty
    } else {
        named(root.get("users"), "user", &user_name).ok_or_else(|| {
            parse_err(format!(
                "context \"{context_name}\" names user \"{user_name}\", which is not in the file"
            ))
        })?
    };

    // The cluster.
    let c = format!("cluster \"{cluster_name}\"");
    for (k, _) in cluster {
        match k.as_str().unwrap_or("") {
            "server"
            | "certificate-authority-data"
            | "tls-server-name"
            | "insecure-skip-tls-verify"
            | "extensions" => {}
            "certificate-authority" => {
                return Err(refused(format!(
                    "{c} reads certificate-authority from a file; use certificate-authority-data"
                )));
            }
            "proxy-url" => {
                return Err(refused(format!(
                    "{c} sets proxy-url, which is not supported in v1alpha1"
                )));
            }
            other => {
                return Err(refused(format!(
                    "{c} sets {other:?}, which is not supported (only server, certificate-authority-data, tls-server-name, insecure-skip-tls-verify)"
                )));
            }
        }
    }
    let server = text(cluster, "server").unwrap_or_default();
    let host = server
        .strip_prefix("https://")
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    // No user info, query or fragment either: a URL is shown in status and logs, never a
    // credential that could hide in it.
    if host.is_none_or(|h| h.is_empty() || h.starts_with(':') || h.contains('@'))
        || server.contains(['?', '#'])
    {
        return Err(refused(format!(
            "server \"{}\" is not an https URL",
            redact_url(&server)
        )));
    }
    let insecure = match cluster.get("insecure-skip-tls-verify") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(refused(format!(
                "{c} insecure-skip-tls-verify is not true or false"
            )));
        }
    };

    // The user.
    let u = format!("user \"{user_name}\"");
    let mut seen = Vec::new();
    for (k, _) in user {
        let k = k.as_str().unwrap_or("");
        match k {
            "token"
            | "client-certificate-data"
            | "client-key-data"
            | "username"
            | "password"
            | "extensions" => seen.push(k),
            "exec" => {
                return Err(refused(format!(
                    "{u} uses an exec credential plugin; fleetmirror runs no command from a Secret — {ALTERNATIVE}"
                )));
            }
            "auth-provider" => {
                return Err(refused(format!(
                    "{u} uses an auth-provider plugin; fleetmirror runs no command from a Secret — {ALTERNATIVE}"
                )));
            }
            "tokenFile" => {
                return Err(refused(format!(
                    "{u} reads tokenFile from a file of the aggregator; put the token inline (token)"
                )));
            }
            "client-certificate" | "client-key" => {
                return Err(refused(format!(
                    "{u} reads {k} from a file of the aggregator; use {k}-data"
                )));
            }
            other => {
                return Err(refused(format!(
                    "{u} sets {other:?}, which is not supported — {ALTERNATIVE}"
                )));
            }
        }
    }
    let has = |k: &str| seen.contains(&k);
    let kinds = [
        has("token"),
        has("client-certificate-data") || has("client-key-data"),
        has("username") || has("password"),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(refused(format!(
            "{u} sets more than one kind of credential — {ALTERNATIVE}, one of them"
        )));
    }
    let auth = if has("token") {
        Auth::Token(
            text(user, "token").ok_or_else(|| refused(format!("{u} token is not a string")))?,
        )
    } else if kinds[1] {
        match (
            data(user, "client-certificate-data", &u)?,
            data(user, "client-key-data", &u)?,
        ) {
            (Some(certificate), Some(key)) => Auth::ClientCertificate { certificate, key },
            _ => {
                return Err(refused(format!(
                    "{u} needs both client-certificate-data and client-key-data"
                )));
            }
        }
    } else if kinds[2] {
        match (text(user, "username"), text(user, "password")) {
            (Some(username), Some(password)) => Auth::Basic { username, password },
            _ => return Err(refused(format!("{u} needs both username and password"))),
        }
    } else {
        Auth::None
    };
    Ok(Endpoint {
        server,
        certificate_authority: data(cluster, "certificate-authority-data", &c)?,
        tls_server_name: text(cluster, "tls-server-name"),
        insecure,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: prod\ncontexts:\n- name: prod\n  context: {{cluster: east, user: admin}}\n- name: other\n  context: {{cluster: nowhere, user: admin}}\nclusters:\n- name: east\n  cluster:\n{cluster}\nusers:\n- name: admin\n  user:\n{user}\n"
        )
    }

    const CLUSTER: &str = "    server: https://10.0.0.1:6443\n    certificate-authority-data: Y2E=";

    #[test]
    fn inline_credentials_are_used() {
        let e = parse(&config(CLUSTER, "    token: abc"), None).unwrap();
        assert_eq!(e.server, "https://10.0.0.1:6443");
        assert_eq!(e.certificate_authority.as_deref(), Some(&b"ca"[..]));
        assert_eq!(e.auth, Auth::Token("abc".into()));
        assert!(!e.insecure);
        assert_eq!(format!("{:?}", e.auth), "Token(<redacted>)");
        let e = parse(
            &config(
                CLUSTER,
                "    client-certificate-data: Y2VydA==\n    client-key-data: a2V5",
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            e.auth,
            Auth::ClientCertificate {
                certificate: b"cert".to_vec(),
                key: b"key".to_vec()
            }
        );
        let e = parse(
            &config(
                "    server: https://k8s.example.com\n    insecure-skip-tls-verify: true",
                "    username: u\n    password: p",
            ),
            None,
        )
        .unwrap();
        assert!(e.insecure);
        assert_eq!(
            e.auth,
            Auth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        let e = parse(&config(CLUSTER, "    {}"), None).unwrap();
        assert_eq!(e.auth, Auth::None);
    }

    #[test]
    fn what_cannot_be_used_is_a_parse_error() {
        for (text, context, needle) in [
            ("a: [".to_owned(), None, ""),
            ("- a".to_owned(), None, "not a mapping"),
            (
                config(CLUSTER, "    token: t"),
                Some("missing"),
                "context \"missing\" not found",
            ),
            (
                config(CLUSTER, "    token: t"),
                Some("other"),
                "cluster \"nowhere\"",
            ),
            (
                config(CLUSTER, "    token: t")
                    .replace("name: admin\n  user", "name: someone\n  user"),
                None,
                "user \"admin\"",
            ),
        ] {
            match parse(&text, context) {
                Err(KubeconfigError::Parse(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_policy_refuses_commands_files_plain_http_and_proxies() {
        let exec = "    exec:\n      command: /bin/sh\n      args: [-c, 'touch /tmp/pwned']\n      apiVersion: client.authentication.k8s.io/v1";
        for (cluster, user, needle) in [
            (
                CLUSTER,
                exec,
                "user \"admin\" uses an exec credential plugin; fleetmirror runs no command from a Secret — use a token, a client certificate or basic auth",
            ),
            (
                CLUSTER,
                "    auth-provider: {name: gcp}",
                "uses an auth-provider plugin",
            ),
            (
                CLUSTER,
                "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                "tokenFile",
            ),
            (
                CLUSTER,
                "    client-certificate: /etc/cert\n    client-key-data: a2V5",
                "client-certificate from a file",
            ),
            (
                CLUSTER,
                "    client-key: /etc/key",
                "client-key from a file",
            ),
            (
                "    server: https://x\n    certificate-authority: /etc/ca",
                "    token: t",
                "certificate-authority from a file; use certificate-authority-data",
            ),
            (
                "    server: http://10.0.0.1:8080",
                "    token: t",
                "server \"http://10.0.0.1:8080\" is not an https URL",
            ),
            (
                "    server: unix:///var/run/k8s.sock",
                "    token: t",
                "is not an https URL",
            ),
            (
                "    server: file:///etc/passwd",
                "    token: t",
                "is not an https URL",
            ),
            (
                "    server: https://",
                "    token: t",
                "is not an https URL",
            ),
            (
                "    server: https://x\n    proxy-url: http://proxy",
                "    token: t",
                "proxy-url, which is not supported in v1alpha1",
            ),
            (
                CLUSTER,
                "    token: t\n    username: u\n    password: p",
                "more than one kind",
            ),
            (
                CLUSTER,
                "    client-certificate-data: Y2VydA==",
                "needs both client-certificate-data and client-key-data",
            ),
            (
                CLUSTER,
                "    username: u",
                "needs both username and password",
            ),
            (
                CLUSTER,
                "    impersonate: admin",
                "\"impersonate\", which is not supported",
            ),
        ] {
            match parse(&config(cluster, user), None) {
                Err(KubeconfigError::Refused(m)) => assert!(m.contains(needle), "{needle}: {m}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn urls_in_messages_carry_no_credentials() {
        assert_eq!(
            redact_url("https://admin:s3cret@k8s:6443/x"),
            "https://***@k8s:6443/x"
        );
        assert_eq!(redact_url("http://k8s?token=abc"), "http://k8s?***");
        assert_eq!(redact_url("https://10.0.0.1:6443"), "https://10.0.0.1:6443");
        for server in [
            "https://admin:s3cret@k8s:6443",
            "http://u:s3cret@k8s",
            "https://k8s/?token=s3cret",
        ] {
            let k = format!(
                "clusters: [{{name: c, cluster: {{server: \"{server}\"}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
            );
            match parse(&k, None) {
                Err(KubeconfigError::Refused(why)) => assert!(!why.contains("s3cret"), "{why}"),
                other => panic!("{server}: {other:?}"),
            }
        }
    }
}
