//! Parsing the URL a client connects to.

use std::fmt;

use crate::Status;
use crate::transport::Scheme;

/// `scheme://host:port/path` split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) scheme: Scheme,
    /// The host without brackets (`::1`, `example.com`).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The path with its query, `/` when absent.
    pub(crate) path: String,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, Status> {
        let bad = |why: &str| Status::bad_request(format!("bad url {url:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => Scheme::Tcp,
            "tls" => Scheme::Tls,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "quic" => Scheme::Quic,
            other => {
                return Err(bad(&format!(
                    "unsupported scheme {other:?} (tcp, tls, ws, wss, quic)"
                )));
            }
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match (port, scheme) {
            (Some(port), _) => port.parse().map_err(|_| bad("bad port"))?,
            (None, Scheme::Ws) => 80,
            (None, Scheme::Wss) => 443,
            (None, _) => return Err(bad("no port")),
        };
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Endpoint {
            scheme,
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `host:port`, bracketing IPv6 hosts.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.name(), self.authority())?;
        if matches!(self.scheme, Scheme::Ws | Scheme::Wss) {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        let tcp = Endpoint::parse("tcp://127.0.0.1:5001").unwrap();
        assert_eq!(
            (tcp.scheme, tcp.host.as_str(), tcp.port),
            (Scheme::Tcp, "127.0.0.1", 5001)
        );
        let ws = Endpoint::parse("ws://[::1]:8080/quick_start?token=a").unwrap();
        assert_eq!(
            (ws.host.as_str(), ws.path.as_str()),
            ("::1", "/quick_start?token=a")
        );
        assert_eq!(ws.authority(), "[::1]:8080");
        assert_eq!(Endpoint::parse("wss://example.com/s").unwrap().port, 443);
        assert_eq!(Endpoint::parse("TLS://h:1").unwrap().scheme, Scheme::Tls);
        assert_eq!(
            Endpoint::parse("quic://[::1]:9").unwrap().scheme,
            Scheme::Quic
        );
        assert_eq!(
            Endpoint::parse("ws://h:1").unwrap().to_string(),
            "ws://h:1/"
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "127.0.0.1:1",
            "http://h:1",
            "tcp://h",
            "tcp://:1",
            "tcp://h:x",
            "ws://[::1:1",
        ] {
            let error = Endpoint::parse(url).unwrap_err();
            assert_eq!(error.code(), crate::Code::BadRequest, "{url}");
        }
    }
}
