//! TLS 1.3 security for TCP (`/tls/1.0.0`, libp2p/specs tls/tls.md) on rustls.
//!
//! Each node makes a self-signed certificate for a fresh ECDSA P-256 key; the certificate carries the
//! libp2p Public Key Extension (OID 1.3.6.1.4.1.53594.1.1): the host key and its signature over
//! `libp2p-tls-handshake:` + the certificate's SubjectPublicKeyInfo. Both sides authenticate (the server
//! requires a client certificate). ALPN offers the muxers and `libp2p`: a muxer chosen by ALPN skips the
//! multistream round trip (connections/inlined-muxer-negotiation.md).
//!
//! Certificates are built and parsed by the small DER codec below (the only certificates we accept are
//! libp2p's: one self-signed certificate, ECDSA P-256/SHA-256 or Ed25519), so webpki is not involved.
//! Time comes in from the caller (`unix_time`), never from the system clock. Randomness inside rustls
//! (handshake nonces, X25519 key shares) comes from the machine's seeded RNG through our crypto provider
//! ([`RngScope`]), and certificate-key signatures are deterministic (RFC 6979), so a TLS or QUIC
//! handshake replays byte for byte from a seed, as Noise does.

use crate::identity::{Keypair, PeerId, PublicKey};
use crate::stream::Role;
use rand_core::CryptoRngCore;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{BufRead, Write};
use std::sync::Arc;

pub const PROTOCOL_ID: &str = "/tls/1.0.0";
const SIGNED_KEY_PREFIX: &[u8] = b"libp2p-tls-handshake:";
/// 1.3.6.1.4.1.53594.1.1
const OID_LIBP2P_EXT: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xa2, 0x5a, 0x01, 0x01];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_EC_PUBKEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_SERIAL_NUMBER: &[u8] = &[0x55, 0x04, 0x05];
/// Largest certificate we parse.
pub const MAX_CERT_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("tls: bad certificate: {0}")]
    Certificate(&'static str),
    #[error("tls: {0}")]
    Rustls(String),
    #[error("tls: remote is {actual}, expected {expected}")]
    PeerIdMismatch { expected: PeerId, actual: PeerId },
}

// ---------- a minimal DER codec ----------

mod der {
    pub const SEQ: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const INT: u8 = 0x02;
    pub const BIT: u8 = 0x03;
    pub const OCTET: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const BOOL: u8 = 0x01;
    pub const PRINTABLE: u8 = 0x13;
    pub const UTC: u8 = 0x17;
    pub const GENERALIZED: u8 = 0x18;

    /// One TLV: (tag, value, whole TLV, rest).
    pub type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    /// Reads one TLV.
    pub fn read(b: &[u8]) -> Option<Tlv<'_>> {
        let tag = *b.first()?;
        let l0 = *b.get(1)?;
        let (len, hdr) = if l0 < 0x80 {
            (l0 as usize, 2)
        } else {
            let n = (l0 & 0x7f) as usize;
            if n == 0 || n > 3 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len)?;
        if b.len() < end {
            return None;
        }
        Some((tag, &b[hdr..end], &b[..end], &b[end..]))
    }

    pub fn expect(b: &[u8], want: u8) -> Option<(&[u8], &[u8], &[u8])> {
        let (t, v, all, rest) = read(b)?;
        (t == want).then_some((v, all, rest))
    }

    pub fn tlv(tag: u8, v: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = v.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend_from_slice(&[0x81, n as u8]);
        } else if n < 0x10000 {
            out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
        } else {
            out.extend_from_slice(&[0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(v);
        out
    }

    pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(SEQ, &parts.concat())
    }

    /// Days since 1970-01-01 for a civil date (Howard Hinnant's algorithm).
    pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146097 + doe - 719468
    }

    pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719468;
        let era = if z >= 0 { z } else { z - 146096 } / 146097;
        let doe = z - era * 146097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    /// UTCTime or GeneralizedTime (`...Z`) to unix seconds.
    pub fn time(tag: u8, v: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(v).ok()?;
        let s = s.strip_suffix('Z')?;
        let (year, rest) = match tag {
            UTC => {
                let yy: i64 = s.get(..2)?.parse().ok()?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
            }
            GENERALIZED => (s.get(..4)?.parse().ok()?, s.get(4..)?),
            _ => return None,
        };
        if rest.len() != 10 || !rest.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let n = |i: usize| -> i64 { rest[i..i + 2].parse().unwrap_or(0) };
        let (mo, d, h, mi, se) = (n(0), n(2), n(4), n(6), n(8));
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        Some(days_from_civil(year, mo, d) * 86400 + h * 3600 + mi * 60 + se)
    }

    pub fn generalized_time(unix: i64) -> Vec<u8> {
        let (y, m, d) = civil_from_days(unix.div_euclid(86400));
        let s = unix.rem_euclid(86400);
        tlv(GENERALIZED, format!("{y:04}{m:02}{d:02}{:02}{:02}{:02}Z", s / 3600, s / 60 % 60, s % 60).as_bytes())
    }
}

/// What a valid libp2p certificate proves.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub peer_id: PeerId,
    pub public_key: PublicKey,
}

enum CertKey {
    /// The uncompressed SEC1 point (what ring verifies against).
    P256(Vec<u8>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

fn cert_key(spki: &[u8]) -> Result<CertKey, TlsError> {
    let bad = TlsError::Certificate("unsupported certificate key (ECDSA P-256 or Ed25519)");
    let (v, _, _) = der::expect(spki, der::SEQ).ok_or(bad.clone())?;
    let (alg, _, rest) = der::expect(v, der::SEQ).ok_or(bad.clone())?;
    let (bits, _, _) = der::expect(rest, der::BIT).ok_or(bad.clone())?;
    let (oid, _, params) = der::expect(alg, der::OID).ok_or(bad.clone())?;
    let key = bits.get(1..).ok_or(bad.clone())?;
    if oid == OID_EC_PUBKEY {
        let (curve, _, _) = der::expect(params, der::OID).ok_or(bad.clone())?;
        if curve != OID_P256 {
            return Err(bad);
        }
        let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(key).map_err(|_| bad)?;
        return Ok(CertKey::P256(k.to_encoded_point(false).as_bytes().to_vec()));
    }
    if oid == OID_ED25519 {
        let k: [u8; 32] = key.try_into().map_err(|_| bad.clone())?;
        return ed25519_dalek::VerifyingKey::from_bytes(&k).map(CertKey::Ed25519).map_err(|_| bad);
    }
    Err(bad)
}

fn verify_with(key: &CertKey, sig_alg_oid: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match key {
        // ring: several times faster than the pure-Rust p256 verifier; two of these per handshake.
        CertKey::P256(k) if sig_alg_oid == OID_ECDSA_SHA256 => {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, k).verify(msg, sig).is_ok()
        }
        CertKey::Ed25519(k) if sig_alg_oid == OID_ED25519 => {
            ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| k.verify_strict(msg, &s).is_ok())
        }
        _ => false,
    }
}

/// Parses and verifies a libp2p certificate at wall-clock time `now_unix` (seconds).
pub fn verify_certificate(cert: &[u8], now_unix: i64) -> Result<PeerCertificate, TlsError> {
    let (pc, not_before, not_after) = parse_certificate(cert)?;
    // spec(tls): "abort the connection attempt if (a) the presented certificate is not yet valid, OR (b) if it is expired"
    if now_unix < not_before {
        return Err(TlsError::Certificate("not yet valid"));
    }
    if now_unix > not_after {
        return Err(TlsError::Certificate("expired"));
    }
    Ok(pc)
}

/// Everything but the validity period: structure, self-signature, the libp2p extension and its signature.
/// Returns the result with (not before, not after).
fn parse_certificate(cert: &[u8]) -> Result<(PeerCertificate, i64, i64), TlsError> {
    let p = parse_fields(cert)?;
    let bad = |m: &'static str| TlsError::Certificate(m);
    let key = cert_key(p.spki)?;
    // spec(tls): "abort ... if the certificate's self-signature is not valid"
    if !verify_with(&key, p.sig_oid, p.tbs, p.sig) {
        return Err(bad("self-signature does not verify"));
    }
    let (public_key, host_sig) = signed_key(&p)?;
    let mut msg = SIGNED_KEY_PREFIX.to_vec();
    msg.extend_from_slice(p.spki);
    if !public_key.verify(&msg, host_sig) {
        return Err(bad("host key signature does not verify"));
    }
    Ok((PeerCertificate { peer_id: public_key.to_peer_id(), public_key }, p.not_before, p.not_after))
}

/// The host key a certificate names, without checking signatures: only for a certificate that
/// `verify_certificate` accepted already (in the handshake).
fn certificate_identity(cert: &[u8]) -> Result<PeerCertificate, TlsError> {
    let p = parse_fields(cert)?;
    let (public_key, _) = signed_key(&p)?;
    Ok(PeerCertificate { peer_id: public_key.to_peer_id(), public_key })
}

fn signed_key<'a>(p: &Fields<'a>) -> Result<(PublicKey, &'a [u8]), TlsError> {
    let bad = |m: &'static str| TlsError::Certificate(m);
    let ext = p.ext.ok_or(bad("no libp2p public key extension"))?;
    let (sk, _, _) = der::expect(ext, der::SEQ).ok_or(bad("SignedKey"))?;
    let (pk, _, sr) = der::expect(sk, der::OCTET).ok_or(bad("SignedKey public key"))?;
    let (host_sig, _, _) = der::expect(sr, der::OCTET).ok_or(bad("SignedKey signature"))?;
    let public_key = PublicKey::decode_protobuf(pk).map_err(|_| bad("host public key"))?;
    Ok((public_key, host_sig))
}

/// The fields of a certificate that matter here, located by a structural parse (no cryptography).
struct Fields<'a> {
    tbs: &'a [u8],
    sig_oid: &'a [u8],
    sig: &'a [u8],
    spki: &'a [u8],
    not_before: i64,
    not_after: i64,
    ext: Option<&'a [u8]>,
}

fn parse_fields(cert: &[u8]) -> Result<Fields<'_>, TlsError> {
    let bad = |m: &'static str| TlsError::Certificate(m);
    if cert.len() > MAX_CERT_LEN {
        return Err(bad("too large"));
    }
    let (c, _, trailing) = der::expect(cert, der::SEQ).ok_or(bad("not a DER sequence"))?;
    if !trailing.is_empty() {
        return Err(bad("trailing data"));
    }
    let (tbs, tbs_all, rest) = der::expect(c, der::SEQ).ok_or(bad("no tbsCertificate"))?;
    let (sig_alg, _, rest) = der::expect(rest, der::SEQ).ok_or(bad("no signature algorithm"))?;
    let (sig_bits, _, _) = der::expect(rest, der::BIT).ok_or(bad("no signature"))?;
    let (sig_oid, _, _) = der::expect(sig_alg, der::OID).ok_or(bad("signature algorithm"))?;
    let sig = sig_bits.get(1..).ok_or(bad("signature"))?;

    let mut t = tbs;
    if t.first() == Some(&0xa0) {
        let (_, _, _, r) = der::read(t).ok_or(bad("version"))?;
        t = r;
    }
    let (_, _, r) = der::expect(t, der::INT).ok_or(bad("serial"))?;
    let (_, _, r) = der::expect(r, der::SEQ).ok_or(bad("tbs signature algorithm"))?;
    let (_, _, r) = der::expect(r, der::SEQ).ok_or(bad("issuer"))?;
    let (validity, _, r) = der::expect(r, der::SEQ).ok_or(bad("validity"))?;
    let (_, _, r) = der::expect(r, der::SEQ).ok_or(bad("subject"))?;
    let (_, spki, mut r) = der::expect(r, der::SEQ).ok_or(bad("subject public key info"))?;
    let (t1, v1, _, vr) = der::read(validity).ok_or(bad("not before"))?;
    let (t2, v2, _, _) = der::read(vr).ok_or(bad("not after"))?;
    let not_before = der::time(t1, v1).ok_or(bad("not before"))?;
    let not_after = der::time(t2, v2).ok_or(bad("not after"))?;
    let mut ext_value = None;
    while !r.is_empty() {
        let (tag, v, _, rest) = der::read(r).ok_or(bad("trailing tbs fields"))?;
        r = rest;
        match tag {
            0x81 | 0x82 | 0xa1 | 0xa2 => return Err(bad("unique identifiers are not allowed")),
            0xa3 => {
                let (mut exts, _, _) = der::expect(v, der::SEQ).ok_or(bad("extensions"))?;
                while !exts.is_empty() {
                    let (e, _, rest) = der::expect(exts, der::SEQ).ok_or(bad("extension"))?;
                    exts = rest;
                    let (oid, _, mut er) = der::expect(e, der::OID).ok_or(bad("extension oid"))?;
                    let mut critical = false;
                    if er.first() == Some(&der::BOOL) {
                        let (b, _, rr) = der::expect(er, der::BOOL).ok_or(bad("critical flag"))?;
                        critical = b.first().is_some_and(|x| *x != 0);
                        er = rr;
                    }
                    let (val, _, _) = der::expect(er, der::OCTET).ok_or(bad("extension value"))?;
                    if oid == OID_LIBP2P_EXT {
                        if ext_value.is_some() {
                            return Err(bad("duplicate libp2p extension"));
                        }
                        ext_value = Some(val);
                    } else if critical {
                        // spec(tls): "abort ... if the certificate contains critical extensions that the endpoint does not understand"
                        return Err(bad("unknown critical extension"));
                    }
                }
            }
            _ => return Err(bad("unexpected tbs field")),
        }
    }
    Ok(Fields { tbs: tbs_all, sig_oid, sig, spki, not_before, not_after, ext: ext_value })
}

/// A certificate and its private key (PKCS#8 DER).
#[derive(Clone)]
pub struct Certificate {
    /// The P-256 certificate, the one every libp2p implementation can verify.
    pub cert_der: Vec<u8>,
    /// The certificate with its key loaded as a signer, shared by every connection's rustls config (loading a
    /// P-256 key derives its public key: too slow to repeat per handshake).
    certified: Arc<rustls::sign::CertifiedKey>,
    /// The same identity on an Ed25519 certificate key, presented to peers that offer Ed25519 signatures
    /// (hyphae, go, rust): its CertificateVerify signature costs ~1/7 of a P-256 one with the deterministic
    /// signer (RFC 6979, pure Rust) that replayable handshakes need.
    ed25519: Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tls::Certificate(..)")
    }
}

/// Picks the certificate for a handshake from the signature schemes the peer offers: Ed25519 when it
/// offers it (the libp2p TLS spec lets each side choose any key the peer can verify), else P-256.
#[derive(Debug)]
struct Resolver {
    p256: Arc<rustls::sign::CertifiedKey>,
    ed25519: Arc<rustls::sign::CertifiedKey>,
}

impl Resolver {
    fn pick(&self, offered: &[SignatureScheme]) -> Arc<rustls::sign::CertifiedKey> {
        if offered.contains(&SignatureScheme::ED25519) {
            self.ed25519.clone()
        } else {
            self.p256.clone()
        }
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.pick(hello.signature_schemes()))
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _root_hints: &[&[u8]], offered: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.pick(offered))
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl Certificate {
    /// Our certificates and signers as rustls resolves them, client and server side.
    fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver { p256: self.certified.clone(), ed25519: self.ed25519.clone() })
    }

    /// Self-signed libp2p certificates for `identity` (a P-256 and an Ed25519 one), valid from an hour
    /// before `now_unix` for 100 years (as go-libp2p makes them).
    pub fn generate(identity: &Keypair, now_unix: i64, rng: &mut impl CryptoRngCore) -> Certificate {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::random(rng);
        let spki = sk.verifying_key().to_public_key_der().expect("invariant: p256 key encodes as SPKI").as_bytes().to_vec();
        let cert_der = Self::self_signed(identity, now_unix, rng, OID_ECDSA_SHA256, &spki, |tbs| {
            use p256::ecdsa::signature::Signer;
            let sig: p256::ecdsa::Signature = sk.sign(tbs);
            sig.to_der().as_bytes().to_vec()
        });
        let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![CertificateDer::from(cert_der.clone())], Arc::new(P256Key(sk))));
        let ek = ed25519_dalek::SigningKey::generate(rng);
        let mut bits = vec![0u8];
        bits.extend_from_slice(ek.verifying_key().as_bytes());
        let ed_spki = der::seq(&[&der::seq(&[&der::tlv(der::OID, OID_ED25519)]), &der::tlv(der::BIT, &bits)]);
        let ed_der = Self::self_signed(identity, now_unix, rng, OID_ED25519, &ed_spki, |tbs| {
            use ed25519_dalek::Signer;
            ek.sign(tbs).to_bytes().to_vec()
        });
        let ed25519 = Arc::new(rustls::sign::CertifiedKey::new(vec![CertificateDer::from(ed_der)], Arc::new(Ed25519Key(ek))));
        Certificate { cert_der, certified, ed25519 }
    }

    /// A certificate for the key `spki`, carrying `identity`'s libp2p extension, self-signed with `sign`
    /// under the algorithm `sig_oid`.
    fn self_signed(
        identity: &Keypair,
        now_unix: i64,
        rng: &mut impl CryptoRngCore,
        sig_oid: &[u8],
        spki: &[u8],
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Vec<u8> {
        let mut msg = SIGNED_KEY_PREFIX.to_vec();
        msg.extend_from_slice(spki);
        let signed_key =
            der::seq(&[&der::tlv(der::OCTET, &identity.public().encode_protobuf()), &der::tlv(der::OCTET, &identity.sign(&msg))]);
        let ext = der::seq(&[&der::tlv(der::OID, OID_LIBP2P_EXT), &der::tlv(der::OCTET, &signed_key)]);
        let mut serial = [0u8; 8];
        rng.fill_bytes(&mut serial);
        // A positive INTEGER in its minimal DER form: a first byte of 0x00 followed by one below 0x80 is
        // not minimal, and Go's x509 parser refuses the certificate (TLS alert bad_certificate). That was
        // the interop matrix's flake: 1 certificate in 256.
        serial[0] = (serial[0] & 0x3f) | 0x40;
        // RFC 5758 and RFC 8410: neither ECDSA with SHA-256 nor Ed25519 has algorithm parameters.
        let sig_alg = der::seq(&[&der::tlv(der::OID, sig_oid)]);
        let name = der::seq(&[&der::tlv(der::SET, &der::seq(&[&der::tlv(der::OID, OID_SERIAL_NUMBER), &der::tlv(der::PRINTABLE, b"1")]))]);
        let validity = der::seq(&[&der::generalized_time(now_unix - 3600), &der::generalized_time(now_unix + 100 * 365 * 86400)]);
        let tbs = der::seq(&[
            &der::tlv(0xa0, &der::tlv(der::INT, &[2])),
            &der::tlv(der::INT, &serial),
            &sig_alg,
            &name,
            &validity,
            &name,
            spki,
            &der::tlv(0xa3, &der::seq(&[&ext])),
        ]);
        let mut bits = vec![0u8];
        bits.extend_from_slice(&sign(&tbs));
        der::seq(&[&tbs, &sig_alg, &der::tlv(der::BIT, &bits)])
    }

    /// The Ed25519 certificate (for tests).
    #[cfg(test)]
    fn ed25519_der(&self) -> Vec<u8> {
        self.ed25519.cert[0].to_vec()
    }
}

// ---------- rustls adapter ----------

#[derive(Debug)]
struct FixedTime(i64);
impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(self.0.max(0) as u64)))
    }
}

/// Verifies libp2p certificates for rustls, both directions.
#[derive(Debug)]
struct Verifier;

fn schemes() -> Vec<SignatureScheme> {
    vec![SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ED25519]
}

fn check_chain(end: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> Result<(), rustls::Error> {
    // spec(tls): "Endpoints MUST abort the connection attempt if more than one certificate is received"
    if !intermediates.is_empty() {
        return Err(rustls::Error::General("more than one certificate".into()));
    }
    verify_certificate(end, now.as_secs() as i64).map(|_| ()).map_err(|e| rustls::Error::General(e.to_string()))
}

fn check_tls13_sig(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let bad = || rustls::Error::General("tls 1.3 handshake signature does not verify".into());
    // check_chain verified the certificate already; here only its key matters.
    let fields = parse_fields(cert).map_err(|_| bad())?;
    let key = cert_key(fields.spki).map_err(|_| bad())?;
    let ok = match dss.scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => verify_with(&key, OID_ECDSA_SHA256, message, dss.signature()),
        SignatureScheme::ED25519 => verify_with(&key, OID_ED25519, message, dss.signature()),
        _ => false,
    };
    if ok {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    } else {
        Err(bad())
    }
}

/// The signature checks rustls asks of both verifier traits, written once.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("tls 1.2 is not allowed".into()))
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            check_tls13_sig(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            schemes()
        }
    };
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        check_chain(end, inter, now).map(|()| rustls::client::danger::ServerCertVerified::assertion())
    }
    signature_checks!();
}

impl rustls::server::danger::ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        check_chain(end, inter, now).map(|()| rustls::server::danger::ClientCertVerified::assertion())
    }
    signature_checks!();
    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

// ---- Seeded randomness for rustls ----
//
// rustls takes its RNG and key-exchange groups as `&'static` trait objects, so a per-machine RNG cannot be
// handed in directly. Instead the machine lends its RNG to this thread for the duration of each call into
// rustls (`RngScope`); the provider draws from it. Outside a scope (never the case in our machines, but
// cheap insurance) it falls back to ring's system RNG.

thread_local! {
    static LENT_RNG: std::cell::RefCell<Option<Box<crate::rng::Rng>>> = const { std::cell::RefCell::new(None) };
}

/// Lends a machine's RNG to rustls while the machine calls into it. `enter` moves the RNG in, `exit` moves
/// it back; nested scopes of the same machine (its RNG already lent) are no-ops. The RNG is boxed so that
/// lending moves a pointer: a QUIC endpoint lends it on every packet it handles, and moving the 320-byte
/// ChaCha state in and out was 2% of a QUIC receiver's CPU (BENCHMARKS.md, the long path).
pub(crate) struct RngScope {
    active: bool,
    prev: Option<Box<crate::rng::Rng>>,
}

impl RngScope {
    pub(crate) fn enter(rng: &mut Option<Box<crate::rng::Rng>>) -> RngScope {
        match rng.take() {
            Some(r) => RngScope { active: true, prev: LENT_RNG.with(|c| c.replace(Some(r))) },
            None => RngScope { active: false, prev: None },
        }
    }

    pub(crate) fn exit(mut self, rng: &mut Option<Box<crate::rng::Rng>>) {
        if self.active {
            self.active = false;
            *rng = LENT_RNG.with(|c| c.replace(self.prev.take()));
        }
    }
}

impl Drop for RngScope {
    fn drop(&mut self) {
        // Only on an unwinding path: never leave this machine's RNG for another one on this thread.
        if self.active {
            LENT_RNG.with(|c| c.replace(self.prev.take()));
        }
    }
}

fn fill_random(buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
    use rand_core::RngCore;
    let lent = LENT_RNG.with(|c| match c.borrow_mut().as_mut() {
        Some(r) => {
            r.fill_bytes(buf);
            true
        }
        None => false,
    });
    if lent {
        Ok(())
    } else {
        rustls::crypto::ring::default_provider().secure_random.fill(buf)
    }
}

#[derive(Debug)]
struct LentRandom;

impl rustls::crypto::SecureRandom for LentRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        fill_random(buf)
    }
}

/// X25519 with the secret drawn from the lent RNG (ring's own X25519 always uses the system RNG).
#[derive(Debug)]
struct X25519;

impl rustls::crypto::SupportedKxGroup for X25519 {
    fn start(&self) -> Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        let mut sk = [0u8; 32];
        fill_random(&mut sk).map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let pk = curve25519_dalek::MontgomeryPoint::mul_base_clamped(sk).to_bytes();
        Ok(Box::new(X25519Share { sk, pk }))
    }
    fn name(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::X25519
    }
}

struct X25519Share {
    sk: [u8; 32],
    pk: [u8; 32],
}

impl rustls::crypto::ActiveKeyExchange for X25519Share {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<rustls::crypto::SharedSecret, rustls::Error> {
        let bad = || rustls::Error::from(rustls::PeerMisbehaved::InvalidKeyShare);
        let p: [u8; 32] = peer_pub_key.try_into().map_err(|_| bad())?;
        let shared = curve25519_dalek::MontgomeryPoint(p).mul_clamped(self.sk).to_bytes();
        // RFC 7748 §6.1: an all-zero result means a low-order point; refuse it.
        if shared == [0u8; 32] {
            return Err(bad());
        }
        Ok(rustls::crypto::SharedSecret::from(&shared[..]))
    }
    fn pub_key(&self) -> &[u8] {
        &self.pk
    }
    fn group(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::X25519
    }
}

/// Our certificate key as a deterministic (RFC 6979) rustls signer.
#[derive(Debug, Clone)]
struct P256Key(p256::ecdsa::SigningKey);

impl rustls::sign::SigningKey for P256Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered.contains(&SignatureScheme::ECDSA_NISTP256_SHA256).then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

impl rustls::sign::Signer for P256Key {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = self.0.sign(message);
        Ok(sig.to_der().as_bytes().to_vec())
    }
    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// Our Ed25519 certificate key as a rustls signer (Ed25519 signatures are deterministic).
struct Ed25519Key(ed25519_dalek::SigningKey);

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ed25519Key(..)")
    }
}

impl rustls::sign::SigningKey for Ed25519Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered.contains(&SignatureScheme::ED25519).then(|| Box::new(Ed25519Signer(self.0.clone())) as Box<dyn rustls::sign::Signer>)
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ED25519
    }
}

struct Ed25519Signer(ed25519_dalek::SigningKey);

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ed25519Signer(..)")
    }
}

impl rustls::sign::Signer for Ed25519Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        use ed25519_dalek::Signer;
        Ok(self.0.sign(message).to_bytes().to_vec())
    }
    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// ring's ciphers and verifiers with our RNG and X25519 (our signer comes with the certificate). Built once.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let mut p = rustls::crypto::ring::default_provider();
        p.secure_random = &LentRandom;
        p.kx_groups = vec![&X25519];
        Arc::new(p)
    })
    .clone()
}

fn rustls_err(e: rustls::Error) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// A rustls client config for libp2p: TLS 1.3 only, our certificate, the libp2p verifier, no SNI.
/// Shared by TLS over TCP and QUIC.
pub fn client_config(cert: &Certificate, alpn: Vec<Vec<u8>>, now_unix: i64) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_details(provider, Arc::new(FixedTime(now_unix)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier))
        .with_client_cert_resolver(cert.resolver());
    cfg.alpn_protocols = alpn;
    // spec(tls): "clients ... MUST NOT send any value in the Server Name Indication"
    cfg.enable_sni = false;
    // Every libp2p server has the same placeholder name, so a cached session would be offered to other
    // peers; and a resumed session skips the certificate that names the peer. go-libp2p disables tickets too.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// A rustls server config for libp2p: TLS 1.3 only, client certificates required and verified.
pub fn server_config(cert: &Certificate, alpn: Vec<Vec<u8>>, now_unix: i64) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let mut cfg = rustls::ServerConfig::builder_with_details(provider, Arc::new(FixedTime(now_unix)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_client_cert_verifier(Arc::new(Verifier))
        .with_cert_resolver(cert.resolver());
    cfg.alpn_protocols = alpn;
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// The peer a verified certificate names (the handshake's verifier accepted it already).
pub fn peer_of_verified(cert: &[u8]) -> Result<PeerCertificate, TlsError> {
    certificate_identity(cert)
}

/// One TLS session: the handshake, then the record layer.
pub struct Session {
    conn: rustls::Connection,
    expected: Option<PeerId>,
    /// Lent to rustls during each call (see [`RngScope`]).
    rng: Option<Box<crate::rng::Rng>>,
}

/// What the handshake established.
#[derive(Debug, Clone)]
pub struct Remote {
    pub peer_id: PeerId,
    pub public_key: PublicKey,
    /// The muxer selected by ALPN, if one of ours was.
    pub muxer: Option<String>,
}

impl Session {
    pub fn new(
        cert: &Certificate,
        role: Role,
        expected: Option<PeerId>,
        muxers: &[String],
        now_unix: i64,
        seed: [u8; 32],
    ) -> Result<Session, TlsError> {
        let mut alpn: Vec<Vec<u8>> = muxers.iter().map(|m| m.as_bytes().to_vec()).collect();
        // spec(tls): ""libp2p" is used as the application protocol for ALPN"
        alpn.push(b"libp2p".to_vec());
        let mut rng = Some(Box::new(crate::rng::from_seed(seed)));
        let scope = RngScope::enter(&mut rng);
        let conn: Result<rustls::Connection, TlsError> = if role.is_dialer() {
            client_config(cert, alpn, now_unix).and_then(|cfg| {
                let name = ServerName::try_from("libp2p.invalid").expect("invariant: valid dns name");
                rustls::ClientConnection::new(Arc::new(cfg), name).map(Into::into).map_err(rustls_err)
            })
        } else {
            server_config(cert, alpn, now_unix)
                .and_then(|cfg| rustls::ServerConnection::new(Arc::new(cfg)).map(Into::into).map_err(rustls_err))
        };
        scope.exit(&mut rng);
        Ok(Session { conn: conn?, expected, rng })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Consumes TLS records from the front of `buf`; appends decrypted application data to `plain`.
    pub fn handle_input(&mut self, buf: &mut Vec<u8>, plain: &mut Vec<u8>) -> Result<(), TlsError> {
        let (consumed, r) = self.handle_input_from(buf, plain);
        buf.drain(..consumed);
        r
    }

    /// Like [`Session::handle_input`], from a slice: returns the bytes taken (rustls keeps a partial
    /// record itself, so on success that is all of `input`) and the outcome.
    pub fn handle_input_from(&mut self, input: &[u8], plain: &mut Vec<u8>) -> (usize, Result<(), TlsError>) {
        let scope = RngScope::enter(&mut self.rng);
        let r = self.read_records(input, plain);
        scope.exit(&mut self.rng);
        r
    }

    fn read_records(&mut self, buf: &[u8], plain: &mut Vec<u8>) -> (usize, Result<(), TlsError>) {
        let mut consumed = 0;
        let r = loop {
            if consumed == buf.len() {
                break Ok(());
            }
            let mut rd = &buf[consumed..];
            let before = rd.len();
            match self.conn.read_tls(&mut rd) {
                Ok(0) => break Ok(()),
                Ok(_) => consumed += before - rd.len(),
                Err(e) => break Err(TlsError::Rustls(e.to_string())),
            }
            if let Err(e) = self.conn.process_new_packets() {
                break Err(rustls_err(e));
            }
            // Each decrypted record is borrowed from rustls and appended once (no zeroed staging buffer).
            let mut reader = self.conn.reader();
            while let Ok(chunk) = reader.fill_buf() {
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len();
                plain.extend_from_slice(chunk);
                reader.consume(n);
            }
        };
        (consumed, r)
    }

    /// Encrypts application data into TLS records appended to `out`. rustls buffers a bounded amount of
    /// plaintext, so this alternates writing and draining records until all of `data` is taken.
    pub fn encrypt(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            match self.conn.writer().write(data) {
                Ok(n) if n > 0 => data = &data[n..],
                _ => {
                    if !self.conn.wants_write() {
                        // Cannot happen after the handshake; never loop forever on a stuck session.
                        tracing::warn!(left = data.len(), "tls session refused plaintext");
                        return;
                    }
                }
            }
            self.poll_transmit(out);
        }
    }

    /// TLS records to send.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// After the handshake: who the remote is (checked against the expected peer) and the ALPN muxer.
    pub fn remote(&self) -> Result<Remote, TlsError> {
        let certs = self.conn.peer_certificates().ok_or(TlsError::Certificate("no peer certificate"))?;
        let c = certs.first().ok_or(TlsError::Certificate("no peer certificate"))?;
        // The handshake's verifier accepted this certificate; read who it names.
        let pc = certificate_identity(c)?;
        if let Some(exp) = &self.expected {
            if *exp != pc.peer_id {
                return Err(TlsError::PeerIdMismatch { expected: exp.clone(), actual: pc.peer_id });
            }
        }
        let muxer = self.conn.alpn_protocol().and_then(|p| std::str::from_utf8(p).ok()).filter(|p| *p != "libp2p").map(str::to_string);
        Ok(Remote { peer_id: pc.peer_id, public_key: pc.public_key, muxer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_time_roundtrip() {
        for t in [0i64, 951782400, 1_700_000_000, 4_102_444_800] {
            let enc = der::generalized_time(t);
            let (tag, v, _, _) = der::read(&enc).unwrap();
            assert_eq!(der::time(tag, v), Some(t));
        }
        assert_eq!(der::time(der::UTC, b"750101130000Z"), Some(157813200));
    }

    #[test]
    fn generated_certificate_verifies_and_names_the_host() {
        let mut rng = crate::rng::from_seed([4; 32]);
        for ty in [crate::KeyType::Ed25519, crate::KeyType::Secp256k1, crate::KeyType::Ecdsa] {
            let id = Keypair::generate(ty, &mut rng);
            let c = Certificate::generate(&id, 1_800_000_000, &mut rng);
            let pc = verify_certificate(&c.cert_der, 1_800_000_000).unwrap();
            assert_eq!(pc.peer_id, id.peer_id());
            assert_eq!(verify_certificate(&c.cert_der, 1_700_000_000).unwrap_err(), TlsError::Certificate("not yet valid"));
            let mut bad = c.cert_der.clone();
            let n = bad.len();
            bad[n - 5] ^= 1;
            assert!(verify_certificate(&bad, 1_800_000_000).is_err());
            // The Ed25519 certificate names the same host; a flipped bit in its signature is caught too.
            let ed = c.ed25519_der();
            assert_eq!(verify_certificate(&ed, 1_800_000_000).unwrap().peer_id, id.peer_id());
            let mut bad = ed.clone();
            let n = bad.len();
            bad[n - 5] ^= 1;
            assert_eq!(verify_certificate(&bad, 1_800_000_000).unwrap_err(), TlsError::Certificate("self-signature does not verify"));
        }
    }

    /// Ed25519 goes to a peer that offers it, P-256 to one that does not.
    #[test]
    fn the_certificate_follows_the_peers_signature_schemes() {
        let mut rng = crate::rng::from_seed([6; 32]);
        let id = Keypair::generate_ed25519(&mut rng);
        let c = Certificate::generate(&id, 1_800_000_000, &mut rng);
        let r = c.resolver();
        let both = [SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ED25519];
        assert_eq!(r.pick(&both).cert[0].as_ref(), c.ed25519_der().as_slice());
        assert_eq!(r.pick(&both[..1]).cert[0].as_ref(), c.cert_der.as_slice());
    }

    /// Every generated serial number is a minimal positive DER INTEGER (Go rejects the others).
    #[test]
    fn generated_serial_numbers_are_minimal_positive_integers() {
        let mut rng = crate::rng::from_seed([6; 32]);
        let id = Keypair::generate_ed25519(&mut rng);
        for _ in 0..2000 {
            let c = Certificate::generate(&id, 1_800_000_000, &mut rng);
            let (cert, _, _) = der::expect(&c.cert_der, der::SEQ).unwrap();
            let (tbs, _, _) = der::expect(cert, der::SEQ).unwrap();
            let (_, _, _, rest) = der::read(tbs).unwrap();
            let (serial, _, _) = der::expect(rest, der::INT).unwrap();
            assert!(serial[0] < 0x80, "positive");
            assert!(!(serial[0] == 0 && serial.get(1).is_some_and(|b| *b < 0x80)), "minimal: {serial:02x?}");
        }
    }

    #[test]
    fn tls_session_pair_authenticates_and_selects_muxer_by_alpn() {
        let mut rng = crate::rng::from_seed([5; 32]);
        let a = Keypair::generate_ed25519(&mut rng);
        let b = Keypair::generate_ed25519(&mut rng);
        let now = 1_800_000_000;
        let ca = Certificate::generate(&a, now, &mut rng);
        let cb = Certificate::generate(&b, now, &mut rng);
        let m = vec!["/yamux/1.0.0".to_string()];
        let mut c = Session::new(&ca, Role::Dialer, Some(b.peer_id()), &m, now, [1; 32]).unwrap();
        let mut s = Session::new(&cb, Role::Listener, None, &m, now, [2; 32]).unwrap();
        let (mut to_s, mut to_c, mut pc, mut ps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..6 {
            c.poll_transmit(&mut to_s);
            s.handle_input(&mut to_s, &mut ps).unwrap();
            s.poll_transmit(&mut to_c);
            c.handle_input(&mut to_c, &mut pc).unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let rc = c.remote().unwrap();
        assert_eq!(rc.peer_id, b.peer_id());
        assert_eq!(rc.muxer.as_deref(), Some("/yamux/1.0.0"));
        assert_eq!(s.remote().unwrap().peer_id, a.peer_id());
        // Two hyphae nodes offer each other Ed25519, so both present their Ed25519 certificates.
        assert_eq!(c.conn.peer_certificates().unwrap()[0].as_ref(), cb.ed25519_der().as_slice());
        assert_eq!(s.conn.peer_certificates().unwrap()[0].as_ref(), ca.ed25519_der().as_slice());
        c.encrypt(b"hello over tls", &mut to_s);
        s.handle_input(&mut to_s, &mut ps).unwrap();
        assert_eq!(ps, b"hello over tls");
        // More than rustls buffers at once: nothing may be dropped.
        let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        s.encrypt(&big, &mut to_c);
        c.handle_input(&mut to_c, &mut pc).unwrap();
        assert_eq!(pc, big);
    }
}
