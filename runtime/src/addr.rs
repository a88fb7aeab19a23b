//! Listen addresses as operators write them in Kubernetes manifests: `:9090` means every
//! interface, `127.0.0.1:9090` and `[::1]:9090` one of them.

use std::net::SocketAddr;

/// A listen address that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid listen address {input:?}: expected ':PORT', 'IP:PORT' or '[IPv6]:PORT'")]
pub struct AddrError {
    input: String,
}

/// Parses `:PORT` (all interfaces), `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_listen_addr(input: &str) -> Result<SocketAddr, AddrError> {
    let err = || AddrError {
        input: input.to_owned(),
    };
    let candidate = match input.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => input.to_owned(),
    };
    candidate.parse().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_addresses() {
        assert_eq!(
            parse_listen_addr(":9090").unwrap().to_string(),
            "0.0.0.0:9090"
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:8080").unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            parse_listen_addr("[::1]:8081").unwrap().to_string(),
            "[::1]:8081"
        );
        for bad in ["", ":", "9090", ":http", "localhost:80", ":99999"] {
            assert!(parse_listen_addr(bad).is_err(), "{bad:?}");
        }
    }
}
