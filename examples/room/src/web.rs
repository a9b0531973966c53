//! The browser client's files, served over plain HTTP next to the chat server.
//!
//! The page (`clients/typescript/web/room`: `index.html`, and `dist/app.js` that
//! `npm run build:web` bundles) talks to the chat over WebSocket; this module only hands out
//! the files and `config.json`, which tells the page the WebSocket port and path. It answers
//! `GET` and `HEAD` for those three paths and nothing else, reads at most one request head
//! per connection, and never touches a path the client names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where the page's files are in this repository.
pub const DEFAULT_ROOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../clients/typescript/web/room"
);

/// The longest request head read.
const MAX_HEAD: usize = 8 << 10;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    /// `/` or `/index.html`.
    Index,
    /// `/app.js`, the bundled client.
    App,
    /// `/config.json`: where the WebSocket is.
    Config,
}

/// The answer to a request head, decided without I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Serve this asset (`head`: headers only).
    Serve {
        /// The asset.
        asset: Asset,
        /// A `HEAD` request.
        head: bool,
    },
    /// 404.
    NotFound,
    /// 405: a method other than GET and HEAD.
    MethodNotAllowed,
    /// 400: not an HTTP request line.
    BadRequest,
}

/// Routes a request head (`GET /app.js HTTP/1.1\r\n…`); only the request line matters.
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let asset = match path {
        "/" | "/index.html" => Asset::Index,
        "/app.js" => Asset::App,
        "/config.json" => Asset::Config,
        _ => return Route::NotFound,
    };
    Route::Serve { asset, head }
}

/// The page's files and what `config.json` says.
#[derive(Clone, Debug)]
pub struct Site {
    root: PathBuf,
    ws: SocketAddr,
}

impl Site {
    /// The files under `root`, for a chat server whose WebSocket listens on `ws`.
    pub fn new(root: impl Into<PathBuf>, ws: SocketAddr) -> Site {
        Site {
            root: root.into(),
            ws,
        }
    }

    /// The status line, content type and body of an asset.
    async fn load(&self, asset: Asset) -> (&'static str, &'static str, Vec<u8>) {
        let file = |name: &str| self.root.join(name);
        let (path, content_type) = match asset {
            Asset::Config => {
                let config = format!(
                    r#"{{"ws_port":{},"ws_path":"{}"}}"#,
                    self.ws.port(),
                    crate::WS_PATH
                );
                return ("200 OK", "application/json", config.into_bytes());
            }
            Asset::Index => (file("index.html"), "text/html; charset=utf-8"),
            Asset::App => (file("dist/app.js"), "text/javascript; charset=utf-8"),
        };
        match tokio::fs::read(&path).await {
            Ok(body) => ("200 OK", content_type, body),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "web client file missing");
                let hint = format!(
                    "{} is missing ({error}): run `npm ci && npm run build:web` in clients/typescript\n",
                    path.display()
                );
                (
                    "404 Not Found",
                    "text/plain; charset=utf-8",
                    hint.into_bytes(),
                )
            }
        }
    }

    /// Serves the site on `addr` until the task is dropped; returns the bound address.
    pub async fn listen(
        self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let site = self.clone();
                        tokio::spawn(async move {
                            if let Err(error) = site.answer(stream).await {
                                tracing::debug!(%remote, %error, "web request failed");
                            }
                        });
                    }
                    Err(error) => tracing::warn!(%error, "web accept failed"),
                }
            }
        });
        Ok((bound, task))
    }

    async fn answer(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
            Ok(head) => head?,
            Err(_) => return Ok(()),
        };
        let (status, content_type, body, head_only) = match head.as_deref().map(route) {
            Some(Route::Serve { asset, head }) => {
                let (status, content_type, body) = self.load(asset).await;
                (status, content_type, body, head)
            }
            Some(Route::NotFound) => plain("404 Not Found", "not found\n"),
            Some(Route::MethodNotAllowed) => plain("405 Method Not Allowed", "GET or HEAD\n"),
            Some(Route::BadRequest) | None => plain("400 Bad Request", "bad request\n"),
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if !head_only {
            response.extend_from_slice(&body);
        }
        stream.write_all(&response).await?;
        stream.shutdown().await
    }
}

fn plain(status: &'static str, body: &str) -> (&'static str, &'static str, Vec<u8>, bool) {
    (
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
        false,
    )
}

/// Reads up to the blank line that ends a request head; `None` when the head is too long or
/// the peer stops early.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..read]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// Whether the bundled client is there (for a hint at start-up).
pub fn bundle_exists(root: &Path) -> bool {
    root.join("dist/app.js").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_three_assets_and_nothing_else() {
        let get = |path: &str| route(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let serve = |asset| Route::Serve { asset, head: false };
        assert_eq!(get("/"), serve(Asset::Index));
        assert_eq!(get("/index.html?x=1"), serve(Asset::Index));
        assert_eq!(get("/app.js"), serve(Asset::App));
        assert_eq!(get("/config.json"), serve(Asset::Config));
        for path in [
            "/../Cargo.toml",
            "/dist/app.js",
            "/app.js/",
            "//etc/passwd",
            "*",
        ] {
            assert_eq!(get(path), Route::NotFound, "{path}");
        }
        assert_eq!(
            route(b"HEAD /app.js HTTP/1.0\r\n\r\n"),
            Route::Serve {
                asset: Asset::App,
                head: true
            }
        );
        assert_eq!(route(b"POST / HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        for bad in [
            &b""[..],
            b"GET /\r\n",
            b"GET / HTTP/1.1 x\r\n",
            b"GET / SPDY\r\n",
            b"\xff\xfe / HTTP/1.1",
        ] {
            assert_eq!(route(bad), Route::BadRequest, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn serves_files_config_and_hints() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<p>hi</p>").unwrap();
        let ws: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let (addr, task) = Site::new(dir.path(), ws)
            .listen("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let fetch = |request: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let index = fetch("GET / HTTP/1.1\r\n\r\n").await;
        assert!(index.starts_with("HTTP/1.1 200 OK\r\n"), "{index}");
        assert!(index.ends_with("\r\n\r\n<p>hi</p>"), "{index}");
        let config = fetch("GET /config.json HTTP/1.1\r\n\r\n").await;
        assert!(
            config.ends_with(r#"{"ws_port":7002,"ws_path":"/room"}"#),
            "{config}"
        );
        let missing = fetch("GET /app.js HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(missing.contains("npm run build:web"), "{missing}");
        let head = fetch("HEAD / HTTP/1.1\r\n\r\n").await;
        assert!(
            head.contains("Content-Length: 9\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(
            fetch("DELETE / HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        assert!(fetch("nonsense\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        task.abort();
    }
}
