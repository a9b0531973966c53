//! Plain TCP: the default transport.

use std::net::SocketAddr;

use tokio::net::{TcpStream, ToSocketAddrs};

use super::{Farewell, Scheme};
use crate::Server;
use crate::Status;
use crate::client::endpoint::Endpoint;
use crate::server::{Refusal, Slot};

impl Server {
    /// Listens for plain TCP; returns the bound address (use port 0 to let the OS pick).
    pub async fn listen_tcp(&self, addr: impl ToSocketAddrs) -> Result<SocketAddr, Status> {
        self.listen(addr, serve_tcp).await
    }
}

/// An accepted TCP socket, from its admission to the end of its connection.
pub(crate) async fn serve_tcp(
    server: Server,
    stream: TcpStream,
    remote: SocketAddr,
    admitted: Result<Slot, Refusal>,
) {
    match admitted {
        Ok(slot) => {
            let (reader, writer) = stream.into_split();
            server
                .serve_stream(reader, writer, remote, Scheme::Tcp, slot)
                .await;
        }
        Err(refusal) => {
            let open = std::future::ready(Ok(stream));
            server.turn_away(open, refusal, Farewell::Handshake).await;
        }
    }
}

/// Connects to `endpoint`'s host and port, with Nagle off (packets are small and batched
/// already).
pub(crate) async fn connect(
    endpoint: &Endpoint,
) -> Result<(TcpStream, Option<SocketAddr>), Status> {
    let tcp = TcpStream::connect(endpoint.authority())
        .await
        .map_err(|e| {
            Status::network_error(format!("cannot connect to {endpoint}: {e}")).with_source(e)
        })?;
    let _ = tcp.set_nodelay(true);
    let remote = tcp.peer_addr().ok();
    Ok((tcp, remote))
}
