//! Where a server listens and a client connects, as text and as data.

use std::fmt;
use std::str::FromStr;

#[cfg(unix)]
use std::path::PathBuf;

/// An address odo processes meet at.
///
/// Written as `unix:/path/to/socket` (Unix only), `tcp:host:port` (IPv6
/// hosts in brackets: `tcp:[::1]:7000`), or `pipe:\\.\pipe\name` (Windows
/// only). [`Display`](fmt::Display) prints the same form that
/// [`FromStr`] parses, so an endpoint survives a round trip through a
/// command line or a control message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket at this path.
    #[cfg(unix)]
    Unix(PathBuf),
    /// A TCP address: a host name or IP address, and a port.
    Tcp {
        /// A host name (`localhost`) or IP address (`127.0.0.1`, `::1`),
        /// without brackets.
        host: String,
        /// The port; 0 asks the system for a free one when binding.
        port: u16,
    },
    /// A Windows named pipe, such as `\\.\pipe\odo-worker-1`.
    #[cfg(windows)]
    Pipe(String),
}

/// Why a string is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The string does not start with a known scheme.
    #[error(
        "endpoint {input:?} has no known scheme: expected unix:/path, tcp:host:port or pipe:\\\\.\\pipe\\name"
    )]
    UnknownScheme {
        /// The string given.
        input: String,
    },
    /// The scheme exists but not on this platform.
    #[error("endpoint {input:?}: {scheme} endpoints are not supported on this platform")]
    Unsupported {
        /// The string given.
        input: String,
        /// The scheme, such as `unix`.
        scheme: &'static str,
    },
    /// A `unix:` or `pipe:` endpoint without a path or name.
    #[error("endpoint {input:?} names no path")]
    EmptyPath {
        /// The string given.
        input: String,
    },
    /// A `tcp:` endpoint that is not `host:port`.
    #[error("endpoint {input:?} is not tcp:host:port ({reason})")]
    BadTcp {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `pipe:` endpoint whose name does not start with `\\.\pipe\`.
    #[error("endpoint {input:?}: a pipe name must start with \\\\.\\pipe\\")]
    BadPipe {
        /// The string given.
        input: String,
    },
}

impl Endpoint {
    /// A TCP endpoint on the IPv4 loopback address with port 0: binding it
    /// picks a free port, and [`crate::Server::endpoint`] tells which.
    pub fn tcp_loopback_any_port() -> Endpoint {
        Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(input: &str) -> Result<Endpoint, EndpointError> {
        if let Some(rest) = input.strip_prefix("tcp:") {
            return parse_tcp(input, rest);
        }
        if let Some(rest) = input.strip_prefix("unix:") {
            return parse_unix(input, rest);
        }
        if let Some(rest) = input.strip_prefix("pipe:") {
            return parse_pipe(input, rest);
        }
        Err(EndpointError::UnknownScheme {
            input: input.into(),
        })
    }
}

fn parse_tcp(input: &str, rest: &str) -> Result<Endpoint, EndpointError> {
    let bad = |reason| EndpointError::BadTcp {
        input: input.into(),
        reason,
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number in 0..=65535"))?;
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| bad("unclosed [ around the host"))?;
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("the bracketed host is not an IPv6 address"));
        }
        inner
    } else {
        if host.contains(':') {
            return Err(bad("an IPv6 host must be written in brackets"));
        }
        host
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("the host contains whitespace"));
    }
    Ok(Endpoint::Tcp {
        host: host.into(),
        port,
    })
}

#[cfg(unix)]
fn parse_unix(input: &str, rest: &str) -> Result<Endpoint, EndpointError> {
    if rest.is_empty() {
        return Err(EndpointError::EmptyPath {
            input: input.into(),
        });
    }
    Ok(Endpoint::Unix(PathBuf::from(rest)))
}

#[cfg(not(unix))]
fn parse_unix(input: &str, _rest: &str) -> Result<Endpoint, EndpointError> {
    Err(EndpointError::Unsupported {
        input: input.into(),
        scheme: "unix",
    })
}

#[cfg(windows)]
fn parse_pipe(input: &str, rest: &str) -> Result<Endpoint, EndpointError> {
    if rest.is_empty() {
        return Err(EndpointError::EmptyPath {
            input: input.into(),
        });
    }
    match rest.get(..9) {
        Some(prefix) if prefix.eq_ignore_ascii_case(r"\\.\pipe\") && rest.len() > 9 => {
            Ok(Endpoint::Pipe(rest.into()))
        }
        _ => Err(EndpointError::BadPipe {
            input: input.into(),
        }),
    }
}

#[cfg(not(windows))]
fn parse_pipe(input: &str, _rest: &str) -> Result<Endpoint, EndpointError> {
    Err(EndpointError::Unsupported {
        input: input.into(),
        scheme: "pipe",
    })
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(unix)]
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            #[cfg(windows)]
            Endpoint::Pipe(name) => write!(f, "pipe:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        let parsed = input.parse::<Endpoint>();
        match (parsed, expected) {
            (Ok(ep), Ok(printed)) => assert_eq!(ep.to_string(), printed, "{input}"),
            (Err(e), Err(message)) => {
                assert!(e.to_string().contains(message), "{input}: {e}")
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn tcp_endpoints() {
        check("tcp:127.0.0.1:7000", Ok("tcp:127.0.0.1:7000"));
        check("tcp:localhost:0", Ok("tcp:localhost:0"));
        check("tcp:[::1]:80", Ok("tcp:[::1]:80"));
        check("tcp:::1:80", Err("brackets"));
        check("tcp:[::1:80", Err("unclosed"));
        check("tcp:[nothex]:80", Err("IPv6"));
        check("tcp:127.0.0.1", Err("port"));
        check("tcp:127.0.0.1:70000", Err("port"));
        check("tcp::80", Err("empty host"));
        check("tcp:a b:80", Err("whitespace"));
        check("http://x", Err("no known scheme"));
        check("", Err("no known scheme"));
    }

    #[cfg(unix)]
    #[test]
    fn unix_endpoints() {
        check("unix:/run/odo/w1.sock", Ok("unix:/run/odo/w1.sock"));
        check("unix:", Err("no path"));
        check(r"pipe:\\.\pipe\x", Err("not supported"));
    }

    #[cfg(windows)]
    #[test]
    fn pipe_endpoints() {
        check(r"pipe:\\.\pipe\odo", Ok(r"pipe:\\.\pipe\odo"));
        check(r"pipe:odo", Err("must start"));
        check("unix:/x", Err("not supported"));
    }
}
