//! stmp over QUIC: the settings both sides share (the ALPN, transport timers lined up with the
//! stmp heartbeat, the UDP socket), the server's listener on quinn's endpoint, and the
//! client's connect, whose connection `client` drives in its own tasks.

mod client;
#[cfg(test)]
mod test_peer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::ToSocketAddrs;

use crate::Status;
use crate::client::ClientBuilder;
use crate::client::dial::{Dialed, stream_handshake};
use crate::client::endpoint::Endpoint;
use crate::server::{Slot, Ticket};
use crate::transport::Scheme;

/// The ALPN protocol id of stmp over QUIC.
pub const ALPN: &[u8] = b"stmp/1";

/// How many packets that ask for an acknowledgement the peer is asked to take before it must
/// send one (QUIC's ACK frequency extension; quinn's default asks for one every other
/// packet). With calls in flight each way the acknowledgements ride on the answers and the
/// next requests; asked for every other packet, about a quarter of a busy connection's
/// datagrams carried nothing else, and every datagram costs both ends a packet's encryption,
/// bookkeeping and syscall share. The peer still acknowledges within its `max_ack_delay`, and
/// at once when packets arrive out of order. Peers without the extension (quic-go) ignore it.
const ACK_ELICITING_THRESHOLD: u32 = 8;

/// QUIC's own idle timeout and keep-alive, derived from the stmp read timeout: keep-alives
/// hold NAT mappings open well inside it, and QUIC gives up on a lost peer when stmp would.
/// Also asks the peer for fewer acknowledgements ([`ACK_ELICITING_THRESHOLD`]).
pub(crate) fn transport_config(read_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    if let Ok(idle) = quinn::IdleTimeout::try_from(read_timeout) {
        transport.max_idle_timeout(Some(idle));
    }
    transport.keep_alive_interval(Some(read_timeout / 3));
    // One bidirectional stream carries the connection; the peer needs no others.
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_concurrent_bidi_streams(1u32.into());
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    transport.ack_frequency_config(Some(acks));
    Arc::new(transport)
}

/// The kernel buffer asked for on a QUIC endpoint's UDP socket, each way. A UDP socket drops
/// the datagrams that arrive while its receive buffer is full, and QUIC takes every drop for
/// congestion: it resends and slows down. Linux gives a socket 208 KiB, and 64 calls of
/// 64 KiB in flight on one connection overflowed it on loopback (1.4 % of datagrams dropped,
/// 3.5k calls/s); with this, 9k calls/s. Nothing is reserved up front: the buffer only
/// bounds what may queue. The kernel grants up to its own limit (`net.core.rmem_max` and
/// `wmem_max` on Linux).
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket bound to `addr` for a QUIC endpoint, with [`UDP_BUFFER_BYTES`] asked for each
/// way. With `dual_stack`, an IPv6 socket also reaches IPv4 peers where the system allows
/// (as `quinn::Endpoint::client` does).
fn udp_socket(addr: SocketAddr, dual_stack: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if dual_stack
        && addr.is_ipv6()
        && let Err(error) = socket.set_only_v6(false)
    {
        tracing::debug!(%error, "the QUIC socket stays IPv6 only");
    }
    // Asking is enough: the kernel caps the size at its limit rather than refusing, and a
    // smaller buffer still works.
    if let Err(error) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(%error, "the QUIC socket keeps its receive buffer");
    }
    if let Err(error) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(%error, "the QUIC socket keeps its send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub(crate) fn server_config(
    tls: &rustls::ServerConfig,
    read_timeout: Duration,
) -> Result<quinn::ServerConfig, Status> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| {
        Status::bad_request(format!("TLS config unusable for QUIC: {e}")).with_source(e)
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(read_timeout));
    Ok(config)
}

pub(crate) fn client_config(
    tls: &rustls::ClientConfig,
    read_timeout: Duration,
) -> Result<quinn::ClientConfig, Status> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| {
        Status::bad_request(format!("TLS config unusable for QUIC: {e}")).with_source(e)
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(read_timeout));
    Ok(config)
}

/// Connection errors as statuses: a TLS failure is the client's configuration (`BadRequest`,
/// not retried); anything else is the network.
pub(crate) fn connection_error(error: quinn::ConnectionError) -> Status {
    let status = match &error {
        quinn::ConnectionError::TransportError(transport)
            if is_crypto(u64::from(transport.code)) =>
        {
            Status::bad_request(format!("QUIC TLS: {transport}"))
        }
        quinn::ConnectionError::ConnectionClosed(closed)
            if is_crypto(u64::from(closed.error_code)) =>
        {
            Status::bad_request(format!(
                "QUIC TLS: the server refused the handshake: {closed}"
            ))
        }
        // What a server over its connection limit answers (`Incoming::refuse`).
        quinn::ConnectionError::ConnectionClosed(closed)
            if closed.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Status::too_many_requests(format!("QUIC: the server refused the connection: {closed}"))
        }
        _ => Status::network_error(format!("QUIC: {error}")),
    };
    status.with_source(error)
}

/// QUIC carries TLS alerts as transport error codes 0x100–0x1ff (RFC 9001 section 4.8).
fn is_crypto(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

impl crate::Server {
    /// Listens for QUIC (ALPN `stmp/1`) on a UDP address: one endpoint, one UDP port, serves
    /// every client; each connection carries stmp on one bidirectional stream. The TLS
    /// config must allow TLS 1.3 (the configs of [`tls::server_config`](crate::tls::server_config) do).
    pub async fn listen_quic(
        &self,
        addr: impl ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<SocketAddr, Status> {
        let config = server_config(&tls, self.inner.config.engine.read_timeout)?;
        let addr = tokio::net::lookup_host(addr)
            .await
            .map_err(super::cannot_listen)?
            .next()
            .ok_or_else(|| Status::bad_request("cannot listen: the address resolves to nothing"))?;
        let socket = udp_socket(addr, false).map_err(super::cannot_listen)?;
        if let Ok(granted) = socket2::SockRef::from(&socket).recv_buffer_size()
            && granted < UDP_BUFFER_BYTES
        {
            tracing::warn!(
                %addr,
                granted,
                asked = UDP_BUFFER_BYTES,
                "the QUIC socket got a smaller receive buffer than asked for; bursts of large \
                 messages may be dropped and slowed down (on Linux, raise net.core.rmem_max)"
            );
        }
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(super::cannot_listen)?;
        let local = endpoint.local_addr().map_err(super::cannot_listen)?;
        let server = self.clone();
        self.inner.listeners.spawn(async move {
            loop {
                let incoming = tokio::select! {
                    biased;
                    _ = server.inner.stop_accepting.cancelled() => break,
                    incoming = endpoint.accept() => incoming,
                };
                let Some(incoming) = incoming else { break };
                match server.inner.admission.ticket() {
                    Ticket::Serve(slot) => {
                        // Boxed: the connection's task keeps its arguments for as long as
                        // it lives, and an `Incoming` is 0.8 KB.
                        let incoming = Box::new(incoming);
                        let serving = server.clone().serve_quic(incoming, slot);
                        server.inner.connections.spawn(serving);
                    }
                    // QUIC refuses with one stateless packet: no task, no TLS handshake.
                    Ticket::Refuse(refusal) => {
                        let remote = incoming.remote_address();
                        tracing::debug!(%remote, status = %refusal.status, "refusing a QUIC connection");
                        incoming.refuse();
                    }
                    Ticket::Drop => incoming.ignore(),
                }
            }
            tracing::debug!(%local, "QUIC listener stopped");
            // Connections still open keep the endpoint's socket until they end.
            endpoint.wait_idle().await;
        });
        tracing::info!(%local, "listening (QUIC)");
        Ok(local)
    }

    pub(super) async fn serve_quic(self, incoming: Box<quinn::Incoming>, slot: Slot) {
        let remote = incoming.remote_address();
        let timeout = self.inner.config.handshake_timeout;
        let opened = tokio::time::timeout(timeout, async {
            let connection = incoming.accept()?.await?;
            let (send, recv) = connection.accept_bi().await?;
            Ok::<_, quinn::ConnectionError>((connection, send, recv))
        })
        .await;
        let (connection, send, recv) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return tracing::debug!(%remote, %error, "QUIC handshake failed"),
            Err(_) => return tracing::debug!(%remote, "QUIC handshake timed out"),
        };
        self.serve_stream(recv, send, remote, Scheme::Quic, slot)
            .await;
        // Let the peer read the last packets (its Close) before the connection goes.
        let grace = self.inner.config.engine.close_grace;
        let _ = tokio::time::timeout(grace, connection.closed()).await;
        connection.close(0u32.into(), b"");
    }
}

/// Opens a QUIC connection and its one stream, then runs the stmp handshake on it. The
/// connection lives as long as the dialed connection's transport.
pub(crate) async fn connect(endpoint: &Endpoint, config: &ClientBuilder) -> Result<Dialed, Status> {
    let tls = config.tls.clone().ok_or_else(|| {
        Status::bad_request(format!(
            "{endpoint} needs TLS settings (ClientBuilder::tls)"
        ))
    })?;
    let remote = tokio::net::lookup_host(endpoint.authority())
        .await
        .map_err(|e| Status::network_error(format!("cannot resolve {endpoint}: {e}")))?
        .next()
        .ok_or_else(|| Status::network_error(format!("{endpoint} resolves to no address")))?;
    let local: std::net::SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let name = config
        .server_name
        .clone()
        .unwrap_or_else(|| endpoint.host.clone());
    let client::Connected {
        connection,
        recv,
        send,
        mut driver,
    } = client::connect(
        udp_socket(local, true)?,
        client_config(&tls, config.engine.read_timeout)?,
        remote,
        &name,
    )
    .await?;
    let handshake = stream_handshake(recv, send, Some(remote), Scheme::Quic, config);
    let mut dialed = crate::transport::beside(&mut driver, handshake).await?;
    dialed.transport = Some(Box::new(connection));
    dialed.driver = driver;
    Ok(dialed)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// What the kernel grants a socket that asks for `bytes` of receive buffer: up to its limit
    /// where it says what that is (Linux), and then reported doubled (its bookkeeping share).
    fn grantable_receive_buffer(bytes: usize) -> Option<usize> {
        let limit = std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok()?;
        Some(bytes.min(limit.trim().parse().ok()?) * 2)
    }

    #[test]
    fn an_endpoint_socket_gets_the_receive_buffer_the_kernel_allows_not_its_default() {
        let plain = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let plain = socket2::SockRef::from(&plain)
            .recv_buffer_size()
            .expect("size");
        for (addr, dual_stack) in [
            (SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false),
            (SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), true),
        ] {
            let ours = udp_socket(addr, dual_stack).expect("socket");
            assert_eq!(ours.local_addr().expect("bound").ip(), addr.ip());
            let ours = socket2::SockRef::from(&ours)
                .recv_buffer_size()
                .expect("size");
            match grantable_receive_buffer(UDP_BUFFER_BYTES) {
                Some(grantable) => assert!(
                    ours >= grantable.max(plain),
                    "{ours} bytes, the kernel allows {grantable} (a plain socket: {plain})"
                ),
                None => assert!(ours >= plain, "{ours} bytes, a plain socket {plain}"),
            }
        }
    }

    #[tokio::test]
    async fn a_receiver_acknowledges_every_few_packets_not_every_other() {
        let read_timeout = Duration::from_secs(60);
        let test_peer::Peer { server, client_tls } = test_peer::peer(read_timeout);
        let addr = server.local_addr().expect("address");
        let mut client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).expect("client");
        client.set_default_client_config(client_config(&client_tls, read_timeout).expect("config"));

        // Packets one at a time, one way: each chunk is written once the client has read the
        // one before (told over a channel in this process, not over QUIC), so each travels
        // alone, and the client sends nothing back but acknowledgements.
        const CHUNKS: u64 = 90;
        let (read_one, mut one_read) = tokio::sync::mpsc::unbounded_channel::<()>();
        let sending = tokio::spawn(async move {
            let (connection, mut send, _recv) = test_peer::accept(&server).await;
            for _ in 0..CHUNKS {
                send.write_all(&[7; 100]).await.expect("write");
                if one_read.recv().await.is_none() {
                    break;
                }
            }
            connection.closed().await;
        });
        let connection = client
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = connection.open_bi().await.expect("stream");
        // A stream is announced by its first bytes.
        send.write_all(b"go").await.expect("write");
        let before = connection.stats();
        for _ in 0..CHUNKS {
            let mut chunk = [0; 100];
            recv.read_exact(&mut chunk).await.expect("read");
            read_one.send(()).expect("the server writes on");
        }
        let after = connection.stats();
        connection.close(0u32.into(), b"");
        sending.await.expect("the server's side");

        let datagrams = after.udp_rx.datagrams - before.udp_rx.datagrams;
        let acks = after.frame_tx.acks - before.frame_tx.acks;
        assert!(
            datagrams >= CHUNKS,
            "{datagrams} datagrams for {CHUNKS} chunks"
        );
        // Asked for one every other packet, the client would send about `CHUNKS / 2`.
        assert!(
            acks * 3 < CHUNKS,
            "the client sent {acks} acknowledgements for {datagrams} datagrams"
        );
    }
}
