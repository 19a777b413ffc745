//! Multiaddr (multiformats/multiaddr): binary and text codecs.
//!
//! Binary: a sequence of (varint code, value) where the value is fixed-size or varint-length-prefixed.
//! Text: `/name/value/...`. Unknown protocol codes or names are a clear error, never a panic.

use crate::identity::PeerId;
use crate::{varint, DecodeError};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::fmt;
use std::str::FromStr;

/// Largest binary multiaddr we decode (identify caps each address; this bounds any single one).
pub const MAX_MULTIADDR_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Protocol {
    Ip4(Ipv4Addr),
    Ip6(Ipv6Addr),
    Ip6zone(String),
    Tcp(u16),
    Udp(u16),
    Dns(String),
    Dns4(String),
    Dns6(String),
    Dnsaddr(String),
    Sni(String),
    Unix(String),
    P2p(PeerId),
    P2pCircuit,
    Quic,
    QuicV1,
    WebTransport,
    Certhash(Vec<u8>),
    Ws,
    Wss,
    Tls,
    Noise,
    Http,
    WebRTCDirect,
    WebRTC,
    Onion3([u8; 35], u16),
    Memory(u64),
}

mod code {
    pub const IP4: u64 = 4;
    pub const TCP: u64 = 6;
    pub const IP6: u64 = 41;
    pub const IP6ZONE: u64 = 42;
    pub const DNS: u64 = 53;
    pub const DNS4: u64 = 54;
    pub const DNS6: u64 = 55;
    pub const DNSADDR: u64 = 56;
    pub const UDP: u64 = 273;
    pub const WEBRTC_DIRECT: u64 = 280;
    pub const WEBRTC: u64 = 281;
    pub const P2P_CIRCUIT: u64 = 290;
    pub const UNIX: u64 = 400;
    pub const P2P: u64 = 421;
    pub const ONION3: u64 = 445;
    pub const TLS: u64 = 448;
    pub const SNI: u64 = 449;
    pub const NOISE: u64 = 454;
    pub const QUIC: u64 = 460;
    pub const QUIC_V1: u64 = 461;
    pub const WEBTRANSPORT: u64 = 465;
    pub const CERTHASH: u64 = 466;
    pub const WS: u64 = 477;
    pub const WSS: u64 = 478;
    pub const HTTP: u64 = 480;
    pub const MEMORY: u64 = 777;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MultiaddrError {
    #[error("unknown protocol code {0}")]
    UnknownCode(u64),
    #[error("unknown protocol name {0:?}")]
    UnknownName(String),
    #[error("missing value for /{0}")]
    MissingValue(&'static str),
    #[error("invalid value {value:?} for /{proto}")]
    InvalidValue { proto: &'static str, value: String },
    #[error("multiaddr text must start with '/'")]
    NoLeadingSlash,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Protocol {
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Ip4(_) => "ip4",
            Protocol::Ip6(_) => "ip6",
            Protocol::Ip6zone(_) => "ip6zone",
            Protocol::Tcp(_) => "tcp",
            Protocol::Udp(_) => "udp",
            Protocol::Dns(_) => "dns",
            Protocol::Dns4(_) => "dns4",
            Protocol::Dns6(_) => "dns6",
            Protocol::Dnsaddr(_) => "dnsaddr",
            Protocol::Sni(_) => "sni",
            Protocol::Unix(_) => "unix",
            Protocol::P2p(_) => "p2p",
            Protocol::P2pCircuit => "p2p-circuit",
            Protocol::Quic => "quic",
            Protocol::QuicV1 => "quic-v1",
            Protocol::WebTransport => "webtransport",
            Protocol::Certhash(_) => "certhash",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
            Protocol::Tls => "tls",
            Protocol::Noise => "noise",
            Protocol::Http => "http",
            Protocol::WebRTCDirect => "webrtc-direct",
            Protocol::WebRTC => "webrtc",
            Protocol::Onion3(..) => "onion3",
            Protocol::Memory(_) => "memory",
        }
    }

    fn code(&self) -> u64 {
        match self {
            Protocol::Ip4(_) => code::IP4,
            Protocol::Ip6(_) => code::IP6,
            Protocol::Ip6zone(_) => code::IP6ZONE,
            Protocol::Tcp(_) => code::TCP,
            Protocol::Udp(_) => code::UDP,
            Protocol::Dns(_) => code::DNS,
            Protocol::Dns4(_) => code::DNS4,
            Protocol::Dns6(_) => code::DNS6,
            Protocol::Dnsaddr(_) => code::DNSADDR,
            Protocol::Sni(_) => code::SNI,
            Protocol::Unix(_) => code::UNIX,
            Protocol::P2p(_) => code::P2P,
            Protocol::P2pCircuit => code::P2P_CIRCUIT,
            Protocol::Quic => code::QUIC,
            Protocol::QuicV1 => code::QUIC_V1,
            Protocol::WebTransport => code::WEBTRANSPORT,
            Protocol::Certhash(_) => code::CERTHASH,
            Protocol::Ws => code::WS,
            Protocol::Wss => code::WSS,
            Protocol::Tls => code::TLS,
            Protocol::Noise => code::NOISE,
            Protocol::Http => code::HTTP,
            Protocol::WebRTCDirect => code::WEBRTC_DIRECT,
            Protocol::WebRTC => code::WEBRTC,
            Protocol::Onion3(..) => code::ONION3,
            Protocol::Memory(_) => code::MEMORY,
        }
    }

    fn write_bytes(&self, out: &mut Vec<u8>) {
        varint::encode(self.code(), out);
        match self {
            Protocol::Ip4(a) => out.extend_from_slice(&a.octets()),
            Protocol::Ip6(a) => out.extend_from_slice(&a.octets()),
            Protocol::Tcp(p) | Protocol::Udp(p) => out.extend_from_slice(&p.to_be_bytes()),
            Protocol::Ip6zone(s)
            | Protocol::Dns(s)
            | Protocol::Dns4(s)
            | Protocol::Dns6(s)
            | Protocol::Dnsaddr(s)
            | Protocol::Sni(s)
            | Protocol::Unix(s) => varint::encode_frame(s.as_bytes(), out),
            Protocol::P2p(id) => varint::encode_frame(id.as_bytes(), out),
            Protocol::Certhash(h) => varint::encode_frame(h, out),
            Protocol::Onion3(k, p) => {
                out.extend_from_slice(k);
                out.extend_from_slice(&p.to_be_bytes());
            }
            Protocol::Memory(v) => out.extend_from_slice(&v.to_be_bytes()),
            _ => {}
        }
    }

    /// Decodes one component from the front of `b`; returns it and the bytes consumed.
    fn from_bytes(b: &[u8]) -> Result<(Protocol, usize), MultiaddrError> {
        let (c, n) = varint::decode_exact(b)?;
        let rest = &b[n..];
        let fixed = |len: usize| -> Result<&[u8], MultiaddrError> { rest.get(..len).ok_or(MultiaddrError::Decode(DecodeError::Truncated)) };
        let var = || -> Result<(&[u8], usize), MultiaddrError> {
            let (r, used) = varint::decode_frame(rest, MAX_MULTIADDR_LEN)?.ok_or(DecodeError::Truncated)?;
            Ok((&rest[r], used))
        };
        let string = |proto: &'static str| -> Result<(String, usize), MultiaddrError> {
            let (v, used) = var()?;
            let s = std::str::from_utf8(v).map_err(|_| MultiaddrError::InvalidValue { proto, value: format!("{v:?}") })?;
            Ok((s.to_string(), used))
        };
        let (p, used) = match c {
            code::IP4 => {
                let o: [u8; 4] = fixed(4)?.try_into().map_err(|_| DecodeError::Truncated)?;
                (Protocol::Ip4(Ipv4Addr::from(o)), 4)
            }
            code::IP6 => {
                let o: [u8; 16] = fixed(16)?.try_into().map_err(|_| DecodeError::Truncated)?;
                (Protocol::Ip6(Ipv6Addr::from(o)), 16)
            }
            code::TCP | code::UDP => {
                let o: [u8; 2] = fixed(2)?.try_into().map_err(|_| DecodeError::Truncated)?;
                let port = u16::from_be_bytes(o);
                (if c == code::TCP { Protocol::Tcp(port) } else { Protocol::Udp(port) }, 2)
            }
            code::MEMORY => {
                let o: [u8; 8] = fixed(8)?.try_into().map_err(|_| DecodeError::Truncated)?;
                (Protocol::Memory(u64::from_be_bytes(o)), 8)
            }
            code::ONION3 => {
                let o = fixed(37)?;
                let mut k = [0u8; 35];
                k.copy_from_slice(&o[..35]);
                (Protocol::Onion3(k, u16::from_be_bytes([o[35], o[36]])), 37)
            }
            code::IP6ZONE => map_s(string("ip6zone")?, Protocol::Ip6zone),
            code::DNS => map_s(string("dns")?, Protocol::Dns),
            code::DNS4 => map_s(string("dns4")?, Protocol::Dns4),
            code::DNS6 => map_s(string("dns6")?, Protocol::Dns6),
            code::DNSADDR => map_s(string("dnsaddr")?, Protocol::Dnsaddr),
            code::SNI => map_s(string("sni")?, Protocol::Sni),
            code::UNIX => map_s(string("unix")?, Protocol::Unix),
            code::P2P => {
                let (v, used) = var()?;
                (Protocol::P2p(PeerId::from_bytes(v)?), used)
            }
            code::CERTHASH => {
                let (v, used) = var()?;
                (Protocol::Certhash(v.to_vec()), used)
            }
            code::P2P_CIRCUIT => (Protocol::P2pCircuit, 0),
            code::QUIC => (Protocol::Quic, 0),
            code::QUIC_V1 => (Protocol::QuicV1, 0),
            code::WEBTRANSPORT => (Protocol::WebTransport, 0),
            code::WS => (Protocol::Ws, 0),
            code::WSS => (Protocol::Wss, 0),
            code::TLS => (Protocol::Tls, 0),
            code::NOISE => (Protocol::Noise, 0),
            code::HTTP => (Protocol::Http, 0),
            code::WEBRTC_DIRECT => (Protocol::WebRTCDirect, 0),
            code::WEBRTC => (Protocol::WebRTC, 0),
            other => return Err(MultiaddrError::UnknownCode(other)),
        };
        Ok((p, n + used))
    }
}

fn map_s(v: (String, usize), f: impl FnOnce(String) -> Protocol) -> (Protocol, usize) {
    (f(v.0), v.1)
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.name())?;
        match self {
            Protocol::Ip4(a) => write!(f, "/{a}"),
            Protocol::Ip6(a) => write!(f, "/{a}"),
            Protocol::Tcp(p) | Protocol::Udp(p) => write!(f, "/{p}"),
            Protocol::Memory(p) => write!(f, "/{p}"),
            Protocol::Ip6zone(s) | Protocol::Dns(s) | Protocol::Dns4(s) | Protocol::Dns6(s) | Protocol::Dnsaddr(s) | Protocol::Sni(s) => {
                write!(f, "/{s}")
            }
            // go-multiaddr form: the path follows, with its own leading slash.
            Protocol::Unix(s) => {
                if s.starts_with('/') {
                    write!(f, "{s}")
                } else {
                    write!(f, "/{s}")
                }
            }
            Protocol::P2p(id) => write!(f, "/{id}"),
            Protocol::Certhash(h) => write!(f, "/u{}", data_encoding::BASE64URL_NOPAD.encode(h)),
            Protocol::Onion3(k, p) => write!(f, "/{}:{p}", data_encoding::BASE32_NOPAD.encode(k).to_ascii_lowercase()),
            _ => Ok(()),
        }
    }
}

/// A multiaddress: a sequence of protocol components.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Multiaddr(Vec<Protocol>);

impl Multiaddr {
    pub fn empty() -> Self {
        Multiaddr(Vec::new())
    }
    pub fn iter(&self) -> impl Iterator<Item = &Protocol> {
        self.0.iter()
    }
    pub fn protocols(&self) -> &[Protocol] {
        &self.0
    }
    pub fn push(&mut self, p: Protocol) {
        self.0.push(p)
    }
    pub fn with(mut self, p: Protocol) -> Self {
        self.0.push(p);
        self
    }
    pub fn pop(&mut self) -> Option<Protocol> {
        self.0.pop()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The trailing `/p2p/<id>`, if any.
    pub fn peer_id(&self) -> Option<PeerId> {
        match self.0.last() {
            Some(Protocol::P2p(id)) => Some(id.clone()),
            _ => None,
        }
    }

    /// Without a trailing `/p2p/<id>`.
    pub fn without_peer_id(&self) -> Multiaddr {
        let mut m = self.clone();
        if matches!(m.0.last(), Some(Protocol::P2p(_))) {
            m.0.pop();
        }
        m
    }

    /// With `/p2p/<id>` appended unless it already ends with one.
    pub fn with_peer_id(&self, id: &PeerId) -> Multiaddr {
        let mut m = self.without_peer_id();
        m.0.push(Protocol::P2p(id.clone()));
        m
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.0 {
            p.write_bytes(&mut out);
        }
        out
    }

    pub fn from_bytes(mut b: &[u8]) -> Result<Multiaddr, MultiaddrError> {
        if b.len() > MAX_MULTIADDR_LEN {
            return Err(DecodeError::TooLarge { len: b.len(), limit: MAX_MULTIADDR_LEN }.into());
        }
        let mut v = Vec::new();
        while !b.is_empty() {
            let (p, n) = Protocol::from_bytes(b)?;
            v.push(p);
            b = &b[n..];
        }
        Ok(Multiaddr(v))
    }

    /// The first IP address in the address (`/ip4` or `/ip6`), wherever it stands.
    pub fn ip(&self) -> Option<IpAddr> {
        self.0.iter().find_map(|p| match p {
            Protocol::Ip4(a) => Some(IpAddr::V4(*a)),
            Protocol::Ip6(a) => Some(IpAddr::V6(*a)),
            _ => None,
        })
    }

    /// The socket address of an `/ip4|ip6/../tcp|udp/..` prefix.
    pub fn socket_addr(&self) -> Option<(core::net::SocketAddr, bool /* tcp */)> {
        let ip: IpAddr = match self.0.first()? {
            Protocol::Ip4(a) => (*a).into(),
            Protocol::Ip6(a) => (*a).into(),
            _ => return None,
        };
        match self.0.get(1)? {
            Protocol::Tcp(p) => Some(((ip, *p).into(), true)),
            Protocol::Udp(p) => Some(((ip, *p).into(), false)),
            _ => None,
        }
    }

    /// `/ip4|ip6/<ip>/udp/<port>/quic-v1` for a socket address.
    /// `/ip4|ip6/<ip>/udp/<port>/quic-v1[/p2p/<id>]` → the socket address; anything else → `None`.
    pub fn quic_socket_addr(&self) -> Option<core::net::SocketAddr> {
        let a = self.without_peer_id();
        match a.protocols() {
            [_, Protocol::Udp(_), Protocol::QuicV1] => a.socket_addr().map(|(sa, _)| sa),
            _ => None,
        }
    }

    pub fn from_quic(sa: core::net::SocketAddr) -> Multiaddr {
        let mut m = Multiaddr::from_tcp(sa);
        m.0[1] = Protocol::Udp(sa.port());
        m.with(Protocol::QuicV1)
    }

    /// `/ip4|ip6/<ip>/tcp/<port>` for a socket address.
    pub fn from_tcp(sa: core::net::SocketAddr) -> Multiaddr {
        let ip = match sa.ip() {
            IpAddr::V4(a) => Protocol::Ip4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Protocol::Ip4(v4),
                None => Protocol::Ip6(a),
            },
        };
        Multiaddr(vec![ip, Protocol::Tcp(sa.port())])
    }
}

/// Not reachable from the internet: loopback, private (RFC 1918; fc00::/7), link-local (169.254/16;
/// fe80::/10) or unspecified. The DHT's diversity filter exempts such addresses; AutoNAT refuses to dial
/// them back.
pub fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            v6.is_loopback() || v6.is_unspecified() || (o[0] & 0xfe) == 0xfc || (o[0] == 0xfe && (o[1] & 0xc0) == 0x80)
        }
    }
}

impl From<Protocol> for Multiaddr {
    fn from(p: Protocol) -> Self {
        Multiaddr(vec![p])
    }
}

impl fmt::Display for Multiaddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn decode_multibase(s: &str) -> Option<Vec<u8>> {
    let (base, rest) = s.split_at(s.char_indices().nth(1)?.0);
    match base {
        "u" => data_encoding::BASE64URL_NOPAD.decode(rest.as_bytes()).ok(),
        "U" => data_encoding::BASE64URL.decode(rest.as_bytes()).ok(),
        "m" => data_encoding::BASE64_NOPAD.decode(rest.as_bytes()).ok(),
        "M" => data_encoding::BASE64.decode(rest.as_bytes()).ok(),
        "b" => data_encoding::BASE32_NOPAD.decode(rest.to_ascii_uppercase().as_bytes()).ok(),
        "B" => data_encoding::BASE32_NOPAD.decode(rest.as_bytes()).ok(),
        "f" | "F" => data_encoding::HEXLOWER_PERMISSIVE.decode(rest.as_bytes()).ok(),
        "z" => bs58::decode(rest).into_vec().ok(),
        _ => None,
    }
}

impl FromStr for Multiaddr {
    type Err = MultiaddrError;
    fn from_str(s: &str) -> Result<Multiaddr, MultiaddrError> {
        if s.len() > 4 * MAX_MULTIADDR_LEN {
            return Err(DecodeError::TooLarge { len: s.len(), limit: 4 * MAX_MULTIADDR_LEN }.into());
        }
        let s = s.trim_end_matches('/');
        if s.is_empty() {
            return Ok(Multiaddr::empty());
        }
        let Some(s) = s.strip_prefix('/') else { return Err(MultiaddrError::NoLeadingSlash) };
        let mut parts = s.split('/');
        let mut v = Vec::new();
        while let Some(name) = parts.next() {
            let mut val = |proto: &'static str| parts.next().filter(|x| !x.is_empty()).ok_or(MultiaddrError::MissingValue(proto));
            let bad = |proto: &'static str, value: &str| MultiaddrError::InvalidValue { proto, value: value.to_string() };
            let p = match name {
                "ip4" => {
                    let x = val("ip4")?;
                    Protocol::Ip4(x.parse().map_err(|_| bad("ip4", x))?)
                }
                "ip6" => {
                    let x = val("ip6")?;
                    Protocol::Ip6(x.parse().map_err(|_| bad("ip6", x))?)
                }
                "tcp" => {
                    let x = val("tcp")?;
                    Protocol::Tcp(x.parse().map_err(|_| bad("tcp", x))?)
                }
                "udp" => {
                    let x = val("udp")?;
                    Protocol::Udp(x.parse().map_err(|_| bad("udp", x))?)
                }
                "memory" => {
                    let x = val("memory")?;
                    Protocol::Memory(x.parse().map_err(|_| bad("memory", x))?)
                }
                "ip6zone" => Protocol::Ip6zone(val("ip6zone")?.to_string()),
                "dns" => Protocol::Dns(val("dns")?.to_string()),
                "dns4" => Protocol::Dns4(val("dns4")?.to_string()),
                "dns6" => Protocol::Dns6(val("dns6")?.to_string()),
                "dnsaddr" => Protocol::Dnsaddr(val("dnsaddr")?.to_string()),
                "sni" => Protocol::Sni(val("sni")?.to_string()),
                "unix" => {
                    // js-libp2p writes one url-encoded component (%2Ftmp%2Fx.sock); go takes the rest of the path.
                    let first = val("unix")?;
                    if first.contains('%') {
                        Protocol::Unix(percent_decode(first).ok_or_else(|| bad("unix", first))?)
                    } else {
                        let rest: Vec<&str> = std::iter::once(first).chain(parts.by_ref()).collect();
                        Protocol::Unix(format!("/{}", rest.join("/")))
                    }
                }
                "p2p" | "ipfs" => {
                    let x = val("p2p")?;
                    Protocol::P2p(x.parse().map_err(|_| bad("p2p", x))?)
                }
                "certhash" => {
                    let x = val("certhash")?;
                    Protocol::Certhash(decode_multibase(x).ok_or_else(|| bad("certhash", x))?)
                }
                "onion3" => {
                    let x = val("onion3")?;
                    let (host, port) = x.split_once(':').ok_or_else(|| bad("onion3", x))?;
                    let key = data_encoding::BASE32_NOPAD.decode(host.to_ascii_uppercase().as_bytes()).map_err(|_| bad("onion3", x))?;
                    let key: [u8; 35] = key.try_into().map_err(|_| bad("onion3", x))?;
                    let port: u16 = port.parse().map_err(|_| bad("onion3", x))?;
                    if port == 0 {
                        return Err(bad("onion3", x));
                    }
                    Protocol::Onion3(key, port)
                }
                "p2p-circuit" => Protocol::P2pCircuit,
                "quic" => Protocol::Quic,
                "quic-v1" => Protocol::QuicV1,
                "webtransport" => Protocol::WebTransport,
                "ws" => Protocol::Ws,
                "wss" => Protocol::Wss,
                "tls" => Protocol::Tls,
                "noise" => Protocol::Noise,
                "http" => Protocol::Http,
                "webrtc-direct" => Protocol::WebRTCDirect,
                "webrtc" => Protocol::WebRTC,
                other => return Err(MultiaddrError::UnknownName(other.to_string())),
            };
            v.push(p);
        }
        let m = Multiaddr(v);
        // The same bound as binary decoding, so every parsed address also decodes from its bytes.
        let len = m.to_bytes().len();
        if len > MAX_MULTIADDR_LEN {
            return Err(DecodeError::TooLarge { len, limit: MAX_MULTIADDR_LEN }.into());
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) {
        let m: Multiaddr = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(m.to_string(), s);
        assert_eq!(Multiaddr::from_bytes(&m.to_bytes()).unwrap(), m, "{s}");
    }

    #[test]
    fn text_binary_roundtrips() {
        for s in [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip6/::1/udp/4001/quic-v1",
            "/ip6/fe80::1/ip6zone/eth0/tcp/1",
            "/dns4/example.com/tcp/443/wss",
            "/dns6/example.com/tcp/443/tls/sni/example.com/ws",
            "/dns/example.com/tcp/1/noise",
            "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
            "/ip4/1.2.3.4/udp/1/quic-v1/webtransport/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g/p2p/12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf",
            "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf/p2p-circuit/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
            "/unix/tmp/p2pd.sock",
            "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234",
            "/ip4/127.0.0.1/udp/9/webrtc-direct",
            "/ip4/127.0.0.1/tcp/80/http",
            "/memory/1234",
        ] {
            rt(s);
        }
    }

    #[test]
    fn known_binary_encoding() {
        // /ip4/127.0.0.1/tcp/4001 = 04 7f000001 06 0fa1
        let m: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(m.to_bytes(), vec![0x04, 127, 0, 0, 1, 0x06, 0x0f, 0xa1]);
        let q: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        assert_eq!(q.to_bytes(), vec![0x04, 127, 0, 0, 1, 0x91, 0x02, 0, 1, 0xcd, 0x03]);
    }

    #[test]
    fn js_style_unix_path_parses() {
        let m: Multiaddr = "/unix/%2Ftmp%2Fd.sock".parse().unwrap();
        assert_eq!(m.protocols(), &[Protocol::Unix("/tmp/d.sock".into())]);
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!("/foo/1".parse::<Multiaddr>(), Err(MultiaddrError::UnknownName("foo".into())));
        assert!(matches!("/ip4/300.1.1.1".parse::<Multiaddr>(), Err(MultiaddrError::InvalidValue { .. })));
        assert_eq!("/tcp".parse::<Multiaddr>(), Err(MultiaddrError::MissingValue("tcp")));
        assert_eq!(Multiaddr::from_bytes(&[0xff, 0x7f]), Err(MultiaddrError::UnknownCode(0x3fff)));
        assert!(Multiaddr::from_bytes(&[0x04, 1, 2]).is_err());
        assert!(Multiaddr::from_bytes(&[0x35, 0xff, 0xff, 0x03]).is_err());
    }
}
