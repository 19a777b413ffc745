//! The TLS session under each QUIC connection, holding rustls only while the handshake runs.
//!
//! quinn's own rustls session keeps the whole `rustls` connection for the connection's life: its state
//! machine, the handshake deframing buffer, the record-layer keys (unused by QUIC) and the peer's
//! certificate chain, several KiB per connection end that nothing reads once the handshake is over. A
//! node holding thousands of mostly idle connections (a DHT server, the simulator's 10k-node runs) pays
//! that on every one. This session drives rustls exactly as quinn's does (same calls, same keys) and,
//! once the handshake is complete and nothing is left to write, keeps only what QUIC still asks a TLS
//! session for: the secrets that derive the next 1-RTT keys (key updates), the peer's certificates, the
//! negotiated ALPN and the peer's transport parameters. Measured in `BENCHMARKS.md` ("TLS state after the
//! handshake").
//!
//! After the handshake QUIC allows the peer one kind of TLS message, NewSessionTicket (RFC 9001 §4.1.3;
//! KeyUpdate is forbidden, §6): hyphae never resumes sessions (`tls::client_config`), so tickets are
//! skipped by their length, and any other message type closes the connection with TLS's
//! unexpected_message alert, as rustls would.

use quinn_proto::crypto::{self, ExportKeyingMaterialError, KeyPair, Keys, UnsupportedVersion};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectError, ConnectionId, Side, TransportError, TransportErrorCode};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::quic::{Connection, KeyChange, Secrets, Suite, Version};
use std::any::Any;
use std::sync::Arc;

/// The only QUIC version hyphae speaks (go-libp2p, rust-libp2p and js-libp2p use v1 only since draft-29
/// was retired); the endpoint is configured to offer and accept just this one.
pub(crate) const QUIC_V1: u32 = 1;

fn version(v: u32) -> Result<Version, UnsupportedVersion> {
    if v == QUIC_V1 {
        Ok(Version::V1)
    } else {
        Err(UnsupportedVersion)
    }
}

/// TLS 1.3's AES-128-GCM-SHA256 suite, which RFC 9001 fixes for Initial packets.
fn initial_suite(provider: &rustls::crypto::CryptoProvider) -> Option<Suite> {
    provider.cipher_suites.iter().find_map(|cs| match (cs.suite(), cs.tls13()) {
        (rustls::CipherSuite::TLS13_AES_128_GCM_SHA256, Some(s)) => s.quic_suite(),
        _ => None,
    })
}

fn encode(params: &TransportParameters) -> Vec<u8> {
    let mut v = Vec::new();
    params.write(&mut v);
    v
}

/// Client side: starts a [`Session`] per outbound connection.
pub(crate) struct ClientCrypto {
    tls: Arc<rustls::ClientConfig>,
    suite: Suite,
}

impl ClientCrypto {
    pub(crate) fn new(tls: Arc<rustls::ClientConfig>) -> Option<ClientCrypto> {
        let suite = initial_suite(tls.crypto_provider())?;
        Some(ClientCrypto { tls, suite })
    }
}

impl crypto::ClientConfig for ClientCrypto {
    fn start_session(
        self: Arc<Self>,
        v: u32,
        server_name: &str,
        params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, ConnectError> {
        let v = version(v)?;
        let name = ServerName::try_from(server_name).map_err(|_| ConnectError::InvalidServerName(server_name.into()))?.to_owned();
        let conn = rustls::quic::ClientConnection::new(self.tls.clone(), v, name, encode(params))
            .map_err(|e| ConnectError::InvalidServerName(format!("{server_name}: {e}")))?;
        Ok(Box::new(Session::new(Side::Client, self.suite, Connection::Client(conn))))
    }
}

/// Server side: Initial keys and Retry tags are quinn's (stateless, no per-connection state); sessions are
/// ours.
pub(crate) struct ServerCrypto {
    tls: Arc<rustls::ServerConfig>,
    suite: Suite,
    stateless: quinn_proto::crypto::rustls::QuicServerConfig,
}

impl ServerCrypto {
    pub(crate) fn new(tls: Arc<rustls::ServerConfig>) -> Option<ServerCrypto> {
        let suite = initial_suite(tls.crypto_provider())?;
        let stateless = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls.clone()).ok()?;
        // rustls refuses a QUIC server config without TLS 1.3 or with a wrong early-data limit: find out now,
        // so that `start_session` (which cannot fail) never meets it.
        rustls::quic::ServerConnection::new(tls.clone(), Version::V1, Vec::new()).ok()?;
        Some(ServerCrypto { tls, suite, stateless })
    }
}

impl crypto::ServerConfig for ServerCrypto {
    fn initial_keys(&self, v: u32, dst_cid: &ConnectionId) -> Result<Keys, UnsupportedVersion> {
        version(v)?;
        self.stateless.initial_keys(v, dst_cid)
    }

    fn retry_tag(&self, v: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.stateless.retry_tag(v, orig_dst_cid, packet)
    }

    fn start_session(self: Arc<Self>, v: u32, params: &TransportParameters) -> Box<dyn crypto::Session> {
        // quinn asks `initial_keys` first and refuses the connection when it fails, so `v` is supported here.
        let v = version(v).unwrap_or(Version::V1);
        let conn = rustls::quic::ServerConnection::new(self.tls.clone(), v, encode(params))
            .expect("invariant: ServerCrypto::new tried this config");
        Box::new(Session::new(Side::Server, self.suite, Connection::Server(conn)))
    }
}

/// What the session keeps once the handshake is over.
struct Done {
    alpn: Option<Vec<u8>>,
    server_name: Option<String>,
    certs: Option<Vec<CertificateDer<'static>>>,
    params: Option<Vec<u8>>,
    early_data_accepted: Option<bool>,
    post: PostHandshake,
}

enum State {
    Handshaking(Box<Connection>),
    Done(Box<Done>),
}

pub(crate) struct Session {
    side: Side,
    suite: Suite,
    got_handshake_data: bool,
    next_secrets: Option<Secrets>,
    state: State,
}

impl Session {
    fn new(side: Side, suite: Suite, conn: Connection) -> Session {
        Session { side, suite, got_handshake_data: false, next_secrets: None, state: State::Handshaking(Box::new(conn)) }
    }

    fn finish(&mut self) {
        let State::Handshaking(conn) = &self.state else { return };
        let (server_name, early_data_accepted) = match &**conn {
            Connection::Client(c) => (None, Some(c.is_early_data_accepted())),
            Connection::Server(s) => (s.server_name().map(String::from), None),
        };
        let done = Done {
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name,
            certs: conn.peer_certificates().map(|v| v.iter().map(|c| c.clone().into_owned()).collect()),
            params: conn.quic_transport_parameters().map(<[u8]>::to_vec),
            early_data_accepted,
            post: PostHandshake::default(),
        };
        self.state = State::Done(Box::new(done));
    }
}

fn keys_of(keys: rustls::quic::Keys) -> Keys {
    Keys {
        header: KeyPair { local: Box::new(keys.local.header), remote: Box::new(keys.remote.header) },
        packet: KeyPair { local: Box::new(keys.local.packet), remote: Box::new(keys.remote.packet) },
    }
}

impl crypto::Session for Session {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        let side = match side {
            Side::Client => rustls::Side::Client,
            Side::Server => rustls::Side::Server,
        };
        keys_of(rustls::quic::Keys::initial(Version::V1, self.suite.suite, self.suite.quic, dst_cid, side))
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        if !self.got_handshake_data {
            return None;
        }
        let (protocol, server_name) = match &self.state {
            State::Handshaking(c) => (
                c.alpn_protocol().map(<[u8]>::to_vec),
                match &**c {
                    Connection::Server(s) => s.server_name().map(String::from),
                    Connection::Client(_) => None,
                },
            ),
            State::Done(d) => (d.alpn.clone(), d.server_name.clone()),
        };
        Some(Box::new(quinn_proto::crypto::rustls::HandshakeData { protocol, server_name }))
    }

    /// As quinn's: a `Vec<CertificateDer<'static>>`.
    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        let certs: Vec<CertificateDer<'static>> = match &self.state {
            State::Handshaking(c) => c.peer_certificates()?.iter().map(|c| c.clone().into_owned()).collect(),
            State::Done(d) => d.certs.clone()?,
        };
        Some(Box::new(certs))
    }

    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn crypto::PacketKey>)> {
        let State::Handshaking(c) = &self.state else { return None };
        let keys = c.zero_rtt_keys()?;
        Some((Box::new(keys.header), Box::new(keys.packet)))
    }

    fn early_data_accepted(&self) -> Option<bool> {
        match &self.state {
            State::Handshaking(c) => match &**c {
                Connection::Client(c) => Some(c.is_early_data_accepted()),
                Connection::Server(_) => None,
            },
            State::Done(d) => d.early_data_accepted,
        }
    }

    fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Handshaking(c) => c.is_handshaking(),
            State::Done(_) => false,
        }
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let conn = match &mut self.state {
            State::Handshaking(c) => c,
            State::Done(d) => return d.post.read(buf).map(|()| false),
        };
        conn.read_hs(buf).map_err(|e| match conn.alert() {
            Some(alert) => TransportError { code: TransportErrorCode::crypto(alert.into()), frame: None, reason: e.to_string() },
            None => TransportError { code: TransportErrorCode::PROTOCOL_VIOLATION, frame: None, reason: format!("TLS error: {e}") },
        })?;
        if !self.got_handshake_data {
            // rustls has no signal for "ClientHello read" (server) or "ALPN negotiated" (client): quinn's
            // own session uses the same test.
            let server_name = matches!(&**conn, Connection::Server(s) if s.server_name().is_some());
            if conn.alpn_protocol().is_some() || server_name || !conn.is_handshaking() {
                self.got_handshake_data = true;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        let raw = match &self.state {
            State::Handshaking(c) => c.quic_transport_parameters(),
            State::Done(d) => d.params.as_deref(),
        };
        match raw {
            None => Ok(None),
            Some(mut b) => TransportParameters::read(self.side, &mut b).map(Some).map_err(Into::into),
        }
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let State::Handshaking(conn) = &mut self.state else { return None };
        let before = buf.len();
        let keys = match conn.write_hs(buf) {
            Some(KeyChange::Handshake { keys }) => keys,
            Some(KeyChange::OneRtt { keys, next }) => {
                self.next_secrets = Some(next);
                keys
            }
            None => {
                // quinn calls until nothing comes: the handshake is over when rustls has neither keys nor
                // bytes left and is no longer handshaking.
                if buf.len() == before && !conn.is_handshaking() {
                    self.finish();
                }
                return None;
            }
        };
        Some(keys_of(keys))
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn crypto::PacketKey>>> {
        let keys = self.next_secrets.as_mut()?.next_packet_keys();
        Some(KeyPair { local: Box::new(keys.local), remote: Box::new(keys.remote) })
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        let Some(tag_start) = payload.len().checked_sub(16) else { return false };
        // RFC 9001 §5.8: the Retry integrity tag is AES-128-GCM over the pseudo-packet with a fixed key.
        const KEY: [u8; 16] = [0xbe, 0x0c, 0x69, 0x0b, 0x9f, 0x66, 0x57, 0x5a, 0x1d, 0x76, 0x6b, 0x54, 0xe3, 0x68, 0xc8, 0x4e];
        const NONCE: [u8; 12] = [0x46, 0x15, 0x99, 0xd3, 0x5d, 0x63, 0x2b, 0xf2, 0x23, 0x98, 0x25, 0xbb];
        let mut pseudo = Vec::with_capacity(1 + orig_dst_cid.len() + header.len() + payload.len());
        pseudo.push(orig_dst_cid.len() as u8);
        pseudo.extend_from_slice(orig_dst_cid);
        pseudo.extend_from_slice(header);
        let tag_start = tag_start + pseudo.len();
        pseudo.extend_from_slice(payload);
        let Ok(unbound) = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &KEY) else { return false };
        let key = ring::aead::LessSafeKey::new(unbound);
        let (aad, tag) = pseudo.split_at_mut(tag_start);
        key.open_in_place(ring::aead::Nonce::assume_unique_for_key(NONCE), ring::aead::Aad::from(aad), tag).is_ok()
    }

    fn export_keying_material(&self, output: &mut [u8], label: &[u8], context: &[u8]) -> Result<(), ExportKeyingMaterialError> {
        match &self.state {
            State::Handshaking(c) => {
                c.export_keying_material(output, label, Some(context)).map(|_| ()).map_err(|_| ExportKeyingMaterialError)
            }
            // The exporter secret went with rustls; nothing in libp2p's QUIC exports keys.
            State::Done(_) => Err(ExportKeyingMaterialError),
        }
    }
}

/// Skips post-handshake TLS messages (4-byte header: type, 24-bit length), allowing NewSessionTicket only.
/// Public for the fuzz target only (`quic_post_handshake`).
#[doc(hidden)]
#[derive(Default, Debug, PartialEq, Eq)]
pub struct PostHandshake {
    header: [u8; 4],
    have: usize,
    skip: usize,
}

/// TLS handshake message type NewSessionTicket (RFC 8446 §4).
const NEW_SESSION_TICKET: u8 = 4;
/// TLS alert unexpected_message, sent as QUIC crypto error 0x100 + 10 (RFC 9001 §4.8).
const UNEXPECTED_MESSAGE: u8 = 10;

impl PostHandshake {
    /// Takes the next CRYPTO bytes at the 1-RTT level; an error names the refused message.
    pub fn read(&mut self, mut buf: &[u8]) -> Result<(), TransportError> {
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                self.skip -= n;
                buf = &buf[n..];
                continue;
            }
            self.header[self.have] = buf[0];
            self.have += 1;
            buf = &buf[1..];
            if self.have == 4 {
                self.have = 0;
                if self.header[0] != NEW_SESSION_TICKET {
                    return Err(TransportError {
                        code: TransportErrorCode::crypto(UNEXPECTED_MESSAGE),
                        frame: None,
                        reason: format!("TLS message type {} after the handshake", self.header[0]),
                    });
                }
                self.skip = u32::from_be_bytes([0, self.header[1], self.header[2], self.header[3]]) as usize;
            }
        }
        Ok(())
    }

    /// Header bytes held and message bytes still to skip: what it keeps between reads (at most 3 and
    /// 2^24 - 1).
    pub fn pending(&self) -> (usize, usize) {
        (self.have, self.skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_handshake_tickets_are_skipped_in_any_split_and_other_messages_refused() {
        let mut msg = vec![NEW_SESSION_TICKET, 0, 0, 5, 1, 2, 3, 4, 5];
        msg.extend_from_slice(&[NEW_SESSION_TICKET, 0, 0, 0]);
        for cut in 0..msg.len() {
            let mut p = PostHandshake::default();
            p.read(&msg[..cut]).unwrap();
            p.read(&msg[cut..]).unwrap();
            assert_eq!((p.have, p.skip), (0, 0));
        }
        // KeyUpdate (24) is forbidden in QUIC.
        let mut p = PostHandshake::default();
        let e = p.read(&[24, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(e.code, TransportErrorCode::crypto(UNEXPECTED_MESSAGE));
    }
}
