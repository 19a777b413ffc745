//! Noise security (libp2p/specs noise/README.md): `Noise_XX_25519_ChaChaPoly_SHA256`.
//!
//! Every handshake message and transport message is framed with a 2-byte big-endian length. The second
//! and third handshake messages carry the libp2p payload: the identity key, its signature over
//! `noise-libp2p-static-key:` + the Noise static key, and extensions (the stream muxers for early muxer
//! negotiation, libp2p/specs connections/inlined-muxer-negotiation.md).
//!
//! `snow` runs the handshake; randomness comes from a seeded RNG passed in (no ambient RNG). The
//! transport phase seals and opens frames in place with ring ([`Transport`]).

use crate::identity::{Keypair, PeerId, PublicKey};
use crate::stream::Role;
use crate::{pb, DecodeError};
use rand_core::{CryptoRng, RngCore, SeedableRng};
use std::cell::Cell;

pub const PROTOCOL_ID: &str = "/noise";
const PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
/// spec(noise): "the maximum size of a Noise message is 65535 bytes"
pub const MAX_FRAME_LEN: usize = 65535;
const TAG_LEN: usize = 16;
pub const MAX_PLAINTEXT_LEN: usize = MAX_FRAME_LEN - TAG_LEN;
const STATIC_KEY_DOMAIN: &[u8] = b"noise-libp2p-static-key:";
/// Caps on the handshake payload's extension list (a peer could otherwise send thousands of names).
const MAX_MUXERS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    #[error("noise: {0}")]
    Snow(String),
    #[error("noise: bad handshake payload: {0}")]
    Payload(#[from] DecodeError),
    #[error("noise: identity signature over the static key is invalid")]
    BadSignature,
    #[error("noise: remote is {actual}, expected {expected}")]
    PeerIdMismatch { expected: PeerId, actual: PeerId },
    #[error("noise: decryption failed")]
    Decrypt,
}

fn snow_err(e: snow::Error) -> NoiseError {
    NoiseError::Snow(e.to_string())
}

/// The libp2p handshake payload (`NoiseHandshakePayload`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    pub identity_key: Vec<u8>,
    pub identity_sig: Vec<u8>,
    pub muxers: Vec<String>,
}

impl Payload {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        pb::put_bytes(&mut out, 1, &self.identity_key);
        pb::put_bytes(&mut out, 2, &self.identity_sig);
        if !self.muxers.is_empty() {
            let mut ext = Vec::new();
            for m in &self.muxers {
                pb::put_bytes(&mut ext, 2, m.as_bytes());
            }
            pb::put_bytes(&mut out, 4, &ext);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Payload, DecodeError> {
        let mut p = Payload::default();
        for f in pb::Reader::new(buf) {
            match f? {
                (1, v) => p.identity_key = v.bytes()?.to_vec(),
                (2, v) => p.identity_sig = v.bytes()?.to_vec(),
                (4, v) => {
                    for e in pb::Reader::new(v.bytes()?) {
                        if let (2, m) = e? {
                            if p.muxers.len() >= MAX_MUXERS {
                                return Err(DecodeError::Invalid("too many stream muxers in noise extensions"));
                            }
                            p.muxers.push(m.string()?.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

/// snow needs a `Random`; ours is a ChaCha20 stream derived from a seed the caller passes in.
struct SeededRandom(rand_chacha::ChaCha20Rng);
impl RngCore for SeededRandom {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        self.0.fill_bytes(d)
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(d)
    }
}
impl CryptoRng for SeededRandom {}
impl snow::types::Random for SeededRandom {}

struct Resolver {
    seed: [u8; 32],
    stream: Cell<u64>,
}
impl snow::resolvers::CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        let mut r = rand_chacha::ChaCha20Rng::from_seed(self.seed);
        r.set_stream(self.stream.get());
        self.stream.set(self.stream.get() + 1);
        Some(Box::new(SeededRandom(r)))
    }
    fn resolve_dh(&self, c: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        match c {
            snow::params::DHChoice::Curve25519 => Some(Box::new(X25519 { sk: [0; 32], pk: [0; 32] })),
            _ => snow::resolvers::DefaultResolver.resolve_dh(c),
        }
    }
    fn resolve_hash(&self, c: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        snow::resolvers::DefaultResolver.resolve_hash(c)
    }
    fn resolve_cipher(&self, c: &snow::params::CipherChoice) -> Option<Box<dyn snow::types::Cipher>> {
        match c {
            snow::params::CipherChoice::ChaChaPoly => Some(Box::new(ChaChaPoly(None))),
            _ => snow::resolvers::DefaultResolver.resolve_cipher(c),
        }
    }
}

/// X25519 whose public key comes from the Edwards basepoint table (about 3× faster than snow's default,
/// which runs the Montgomery ladder for key generation too). Every connection generates an ephemeral key.
struct X25519 {
    sk: [u8; 32],
    pk: [u8; 32],
}

impl snow::types::Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        self.sk.copy_from_slice(&privkey[..32]);
        self.pk = curve25519_dalek::MontgomeryPoint::mul_base_clamped(self.sk).to_bytes();
    }
    fn generate(&mut self, rng: &mut dyn snow::types::Random) {
        let mut sk = [0u8; 32];
        rng.fill_bytes(&mut sk);
        self.set(&sk);
    }
    fn pubkey(&self) -> &[u8] {
        &self.pk
    }
    fn privkey(&self) -> &[u8] {
        &self.sk
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let p: [u8; 32] = pubkey.get(..32).and_then(|p| p.try_into().ok()).ok_or(snow::Error::Dh)?;
        out[..32].copy_from_slice(&curve25519_dalek::MontgomeryPoint(p).mul_clamped(self.sk).to_bytes());
        Ok(())
    }
}

/// ChaCha20-Poly1305 on ring for snow's handshake messages (assembly; several times faster than the
/// RustCrypto crates). The transport phase uses ring directly ([`Transport`]).
struct ChaChaPoly(Option<ring::aead::LessSafeKey>);

impl ChaChaPoly {
    fn key(&self) -> &ring::aead::LessSafeKey {
        self.0.as_ref().expect("invariant: snow sets the key before use")
    }
}

/// A ChaCha20-Poly1305 key, for the handshake's cipher and the transport's.
fn chacha_key(key: &[u8]) -> ring::aead::LessSafeKey {
    let k = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key).expect("invariant: 32-byte key");
    ring::aead::LessSafeKey::new(k)
}

fn nonce(n: u64) -> ring::aead::Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    ring::aead::Nonce::assume_unique_for_key(b)
}

impl snow::types::Cipher for ChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }
    fn set(&mut self, key: &[u8]) {
        self.0 = Some(chacha_key(&key[..32]));
    }
    fn encrypt(&self, nonce_n: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let n = plaintext.len();
        out[..n].copy_from_slice(plaintext);
        let tag = self
            .key()
            .seal_in_place_separate_tag(nonce(nonce_n), ring::aead::Aad::from(authtext), &mut out[..n])
            .expect("invariant: a noise message is far below chacha20's length limit");
        out[n..n + TAG_LEN].copy_from_slice(tag.as_ref());
        n + TAG_LEN
    }
    fn decrypt(&self, nonce_n: u64, authtext: &[u8], ciphertext: &[u8], out: &mut [u8]) -> Result<usize, snow::Error> {
        let n = ciphertext.len().checked_sub(TAG_LEN).ok_or(snow::Error::Decrypt)?;
        let tag: [u8; TAG_LEN] = ciphertext[n..].try_into().map_err(|_| snow::Error::Decrypt)?;
        out[..n].copy_from_slice(&ciphertext[..n]);
        self.key()
            .open_in_place_separate_tag(nonce(nonce_n), ring::aead::Aad::from(authtext), tag.into(), &mut out[..n], 0..)
            .map_err(|_| snow::Error::Decrypt)?;
        Ok(n)
    }
}

/// What the handshake learned about the remote.
#[derive(Debug, Clone)]
pub struct Remote {
    pub peer_id: PeerId,
    pub public_key: PublicKey,
    /// The muxer agreed through the payload extensions, if both sides offered some in common.
    pub muxer: Option<String>,
}

/// A node's Noise static key with the identity signature over it. Made once per node and shared by its
/// connections, as rust-libp2p's `noise::Config` does: it saves a key generation and a signature per
/// connection (forward secrecy comes from the ephemeral keys).
#[derive(Clone)]
pub struct StaticKey {
    private: Vec<u8>,
    payload_identity: Vec<u8>,
    payload_sig: Vec<u8>,
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("noise::StaticKey(..)")
    }
}

impl StaticKey {
    pub fn generate(identity: &Keypair, seed: [u8; 32]) -> Result<StaticKey, NoiseError> {
        let params: snow::params::NoiseParams = PARAMS.parse().expect("invariant: noise params string is valid");
        let kp =
            snow::Builder::with_resolver(params, Box::new(Resolver { seed, stream: Cell::new(0) })).generate_keypair().map_err(snow_err)?;
        let mut signed = STATIC_KEY_DOMAIN.to_vec();
        signed.extend_from_slice(&kp.public);
        Ok(StaticKey { private: kp.private, payload_identity: identity.public().encode_protobuf(), payload_sig: identity.sign(&signed) })
    }
}

pub struct Handshake {
    state: snow::HandshakeState,
    role: Role,
    /// Number of handshake messages read or written so far (0..=3).
    step: u8,
    local_payload: Vec<u8>,
    local_muxers: Vec<String>,
    expected: Option<PeerId>,
    remote: Option<Remote>,
    out: Vec<u8>,
}

impl Handshake {
    /// Starts a handshake. `muxers`: our stream muxers in order of preference (empty: no early negotiation).
    pub fn new(identity: &Keypair, role: Role, expected: Option<PeerId>, muxers: Vec<String>, seed: [u8; 32]) -> Result<Self, NoiseError> {
        let key = StaticKey::generate(identity, seed)?;
        Self::with_static_key(&key, role, expected, muxers, seed)
    }

    /// Starts a handshake with a node-wide static key (see [`StaticKey`]).
    pub fn with_static_key(
        key: &StaticKey,
        role: Role,
        expected: Option<PeerId>,
        muxers: Vec<String>,
        seed: [u8; 32],
    ) -> Result<Self, NoiseError> {
        let params: snow::params::NoiseParams = PARAMS.parse().expect("invariant: noise params string is valid");
        let builder =
            snow::Builder::with_resolver(params, Box::new(Resolver { seed, stream: Cell::new(1) })).local_private_key(&key.private);
        let state = if role.is_dialer() { builder.build_initiator() } else { builder.build_responder() }.map_err(snow_err)?;
        let payload = Payload { identity_key: key.payload_identity.clone(), identity_sig: key.payload_sig.clone(), muxers: muxers.clone() };
        let mut hs = Handshake {
            state,
            role,
            step: 0,
            local_payload: payload.encode(),
            local_muxers: muxers,
            expected,
            remote: None,
            out: Vec::new(),
        };
        if role.is_dialer() {
            hs.write_message(&[])?; // -> e
        }
        Ok(hs)
    }

    fn write_message(&mut self, payload: &[u8]) -> Result<(), NoiseError> {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let n = self.state.write_message(payload, &mut buf).map_err(snow_err)?;
        self.out.extend_from_slice(&(n as u16).to_be_bytes());
        self.out.extend_from_slice(&buf[..n]);
        self.step += 1;
        Ok(())
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        crate::take_output(&mut self.out)
    }

    pub fn is_done(&self) -> bool {
        self.step >= 3
    }

    fn verify_payload(&mut self, payload: &[u8]) -> Result<(), NoiseError> {
        let p = Payload::decode(payload)?;
        let key = PublicKey::decode_protobuf(&p.identity_key)?;
        let remote_static = self.state.get_remote_static().ok_or(NoiseError::Snow("no remote static key".into()))?;
        let mut signed = STATIC_KEY_DOMAIN.to_vec();
        signed.extend_from_slice(remote_static);
        if !key.verify(&signed, &p.identity_sig) {
            return Err(NoiseError::BadSignature);
        }
        let peer_id = key.to_peer_id();
        if let Some(exp) = &self.expected {
            if *exp != peer_id {
                return Err(NoiseError::PeerIdMismatch { expected: exp.clone(), actual: peer_id });
            }
        }
        // spec(inlined-muxer-negotiation): "picking the first item from the initiator's list that both parties support"
        let (ini, resp) = if self.role.is_dialer() { (&self.local_muxers, &p.muxers) } else { (&p.muxers, &self.local_muxers) };
        let muxer = ini.iter().find(|m| resp.contains(m)).cloned();
        self.remote = Some(Remote { peer_id, public_key: key, muxer });
        Ok(())
    }

    /// Consumes handshake frames from the front of `buf`. Returns true once the handshake is complete;
    /// bytes after the last handshake frame stay in `buf` (they are transport frames).
    pub fn handle_input(&mut self, buf: &mut Vec<u8>) -> Result<bool, NoiseError> {
        let mut consumed = 0;
        let r = loop {
            if self.is_done() {
                break Ok(true);
            }
            let rest = &buf[consumed..];
            if rest.len() < 2 {
                break Ok(false);
            }
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            if rest.len() < 2 + len {
                break Ok(false);
            }
            let msg = rest[2..2 + len].to_vec();
            consumed += 2 + len;
            let mut payload = vec![0u8; MAX_FRAME_LEN];
            let n = match self.state.read_message(&msg, &mut payload) {
                Ok(n) => n,
                Err(e) => break Err(snow_err(e)),
            };
            self.step += 1;
            let res = match (self.role.is_dialer(), self.step) {
                // responder got `-> e`: answer `<- e, ee, s, es` + payload
                (false, 1) => {
                    let p = self.local_payload.clone();
                    self.write_message(&p)
                }
                // initiator got `<- e, ee, s, es` + payload: verify, then `-> s, se` + payload
                (true, 2) => self.verify_payload(&payload[..n]).and_then(|()| {
                    let p = self.local_payload.clone();
                    self.write_message(&p)
                }),
                // responder got `-> s, se` + payload
                (false, 3) => self.verify_payload(&payload[..n]),
                _ => Err(NoiseError::Snow("unexpected handshake message".into())),
            };
            if let Err(e) = res {
                break Err(e);
            }
        };
        buf.drain(..consumed);
        r
    }

    /// After `is_done()`: the transport state and what we learned about the remote.
    pub fn into_transport(self) -> Result<(Transport, Remote), NoiseError> {
        let remote = self.remote.ok_or(NoiseError::Snow("handshake incomplete".into()))?;
        let mut state = self.state;
        if !state.is_handshake_finished() {
            return Err(NoiseError::Snow("handshake incomplete".into()));
        }
        Ok((Transport::from_split(&mut state), remote))
    }
}

/// An established Noise session: frames plaintext, unframes ciphertext.
///
/// The transport phase runs on ring directly, with the two keys of the handshake's split (snow's
/// `risky-raw-split`): each frame is sealed and opened in place. snow's `TransportState` wants a
/// separate, initialized output buffer, which cost a zero fill and a second copy of every byte each
/// way: 16-18% of a TCP+Noise sender's and receiver's CPU on the 60 ms path (BENCHMARKS.md). The
/// cipher, nonces and framing are the spec's: ChaChaPoly with a 64-bit little-endian counter after
/// four zero bytes, empty associated data, nonce 2^64-1 reserved.
pub struct Transport {
    send: CipherState,
    recv: CipherState,
}

/// One direction's key and its next nonce.
struct CipherState {
    key: ring::aead::LessSafeKey,
    n: u64,
}

impl CipherState {
    fn new(key: &[u8; 32]) -> Self {
        CipherState { key: chacha_key(key), n: 0 }
    }

    /// The next nonce; `None` once the counter reached the reserved 2^64-1 (spec: the session must end).
    fn next(&mut self) -> Option<ring::aead::Nonce> {
        (self.n < u64::MAX).then(|| {
            self.n += 1;
            nonce(self.n - 1)
        })
    }
}

impl Transport {
    /// The transport keys of a finished handshake: the initiator sends with the split's first key.
    fn from_split(state: &mut snow::HandshakeState) -> Self {
        let (k1, k2) = state.dangerously_get_raw_split();
        let (send, recv) = if state.is_initiator() { (k1, k2) } else { (k2, k1) };
        Transport { send: CipherState::new(&send), recv: CipherState::new(&recv) }
    }

    /// Encrypts `plain` into frames appended to `out`.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        self.encrypt_pieces(std::iter::once(plain), plain.len(), out);
    }

    /// Encrypts the concatenation of `pieces` (`len` bytes in all) into frames appended to `out`: each
    /// byte is copied once, into its frame, and sealed there. A muxer's headers and the payloads it
    /// kept a view of (`Yamux::take_pieces`) go out without being gathered first.
    pub fn encrypt_pieces<'a>(&mut self, pieces: impl Iterator<Item = &'a [u8]>, len: usize, out: &mut Vec<u8>) {
        out.reserve(len + len.div_ceil(MAX_PLAINTEXT_LEN) * (2 + TAG_LEN));
        // Bytes in the frame being filled; its header sits at `start`.
        let (mut open, mut start) = (0, out.len());
        for mut piece in pieces {
            while !piece.is_empty() {
                if open == 0 {
                    start = out.len();
                    out.extend_from_slice(&[0; 2]);
                }
                let k = piece.len().min(MAX_PLAINTEXT_LEN - open);
                out.extend_from_slice(&piece[..k]);
                open += k;
                piece = &piece[k..];
                if open == MAX_PLAINTEXT_LEN {
                    self.seal_frame(out, start);
                    open = 0;
                }
            }
        }
        if open > 0 {
            self.seal_frame(out, start);
        }
    }

    /// Seals the frame whose header is at `start` and whose plaintext runs to the end of `out`: writes
    /// its length, encrypts in place, appends the tag.
    fn seal_frame(&mut self, out: &mut Vec<u8>, start: usize) {
        let n = out.len() - start - 2;
        out[start..start + 2].copy_from_slice(&((n + TAG_LEN) as u16).to_be_bytes());
        // 2^64-1 frames is beyond any connection's life (584,000 years at a million frames a second).
        let nonce = self.send.next().expect("invariant: the send nonce is not exhausted");
        let tag = self
            .send
            .key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), &mut out[start + 2..])
            .expect("invariant: a noise frame is far below chacha20's length limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// Decrypts complete frames from the front of `buf`, appending plaintext to `out`; the frames taken
    /// leave `buf`. A frame that does not authenticate is an error; the frames before it are delivered.
    pub fn decrypt(&mut self, buf: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), NoiseError> {
        let (consumed, r) = self.decrypt_from(buf, out);
        buf.drain(..consumed);
        r
    }

    /// Decrypts the complete frames at the front of `input`, appending plaintext to `out`: each frame's
    /// ciphertext is copied once, into `out`, and opened there in place (so a driver's read buffer is
    /// decrypted without staging it first). Returns the bytes taken (whole frames only) and, when a frame
    /// does not authenticate, the error; the frames before it are delivered.
    pub fn decrypt_from(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Result<(), NoiseError>) {
        let mut consumed = 0;
        let r = loop {
            let rest = &input[consumed..];
            let Some(need) = Self::frame_len(rest) else { break Ok(()) };
            if rest.len() < need {
                break Ok(());
            }
            let Some(nonce) = self.recv.next() else { break Err(NoiseError::Decrypt) };
            let start = out.len();
            out.extend_from_slice(&rest[2..need]);
            match self.recv.key.open_in_place(nonce, ring::aead::Aad::empty(), &mut out[start..]) {
                Ok(plain) => {
                    let n = plain.len();
                    out.truncate(start + n);
                }
                Err(_) => {
                    out.truncate(start);
                    break Err(NoiseError::Decrypt);
                }
            }
            consumed += need;
        };
        (consumed, r)
    }

    /// The whole length (length prefix included) of the frame at the front of `buf`, once its prefix is
    /// there.
    pub fn frame_len(buf: &[u8]) -> Option<usize> {
        (buf.len() >= 2).then(|| 2 + u16::from_be_bytes([buf[0], buf[1]]) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a finished handshake.
    type Ends = ((Transport, Remote), (Transport, Remote));

    fn pair(ik: &Keypair, rk: &Keypair, expect: Option<PeerId>, im: &[&str], rm: &[&str]) -> Result<Ends, NoiseError> {
        let (i, r) = handshakes(ik, rk, expect, im, rm)?;
        Ok((i.into_transport()?, r.into_transport()?))
    }

    /// Both ends of a handshake run to its end (the same keys and seeds give the same session).
    fn handshakes(
        ik: &Keypair,
        rk: &Keypair,
        expect: Option<PeerId>,
        im: &[&str],
        rm: &[&str],
    ) -> Result<(Handshake, Handshake), NoiseError> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut i = Handshake::new(ik, Role::Dialer, expect, s(im), [1; 32])?;
        let mut r = Handshake::new(rk, Role::Listener, None, s(rm), [2; 32])?;
        let (mut to_r, mut to_i) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            if let Some(b) = i.poll_transmit() {
                to_r.extend(b);
            }
            r.handle_input(&mut to_r)?;
            if let Some(b) = r.poll_transmit() {
                to_i.extend(b);
            }
            i.handle_input(&mut to_i)?;
        }
        assert!(i.is_done() && r.is_done());
        Ok((i, r))
    }

    /// Frames `plain` the reference way: snow's own transport state, one message per chunk.
    fn snow_frames(t: &mut snow::TransportState, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in plain.chunks(MAX_PLAINTEXT_LEN) {
            let mut msg = vec![0u8; chunk.len() + TAG_LEN];
            let n = t.write_message(chunk, &mut msg).unwrap();
            out.extend_from_slice(&(n as u16).to_be_bytes());
            out.extend_from_slice(&msg[..n]);
        }
        out
    }

    /// Pieces of any sizes (a muxer's headers between payloads) make the same frames as their
    /// concatenation: full frames until the last, the same nonces, so the peer reads them back.
    #[test]
    fn noise_pieces_encrypt_like_their_concatenation() {
        let mut rng = crate::rng::from_seed([9; 32]);
        let a = Keypair::generate_ed25519(&mut rng);
        let b = Keypair::generate_ed25519(&mut rng);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 + i / 7) as u8).collect();
        for cuts in [vec![], vec![1], vec![12, 65_531, 65_532, 200_000], vec![MAX_PLAINTEXT_LEN, 2 * MAX_PLAINTEXT_LEN]] {
            // Two sessions with the same keys (the handshakes are seeded alike): one encrypts whole, the
            // other in pieces.
            let ((mut whole, _), _) = pair(&a, &b, None, &[], &[]).unwrap();
            let ((mut parts, _), (mut reader, _)) = pair(&a, &b, None, &[], &[]).unwrap();
            let mut bounds = vec![0];
            bounds.extend(&cuts);
            bounds.push(data.len());
            let pieces = bounds.windows(2).map(|w| &data[w[0]..w[1]]);
            let (mut w1, mut w2) = (Vec::new(), vec![9]);
            whole.encrypt(&data, &mut w1);
            parts.encrypt_pieces(pieces, data.len(), &mut w2);
            assert_eq!(w2[0], 9, "appends to what `out` held");
            w2.remove(0);
            let mut plain = Vec::new();
            reader.decrypt(&mut w2.clone(), &mut plain).unwrap();
            assert_eq!(plain, data, "cuts {cuts:?}");
            let frames = data.len().div_ceil(MAX_PLAINTEXT_LEN);
            assert_eq!(w2.len(), data.len() + frames * (2 + TAG_LEN), "cuts {cuts:?}");
            assert_eq!(w1, w2, "cuts {cuts:?}");
        }
    }

    #[test]
    fn noise_transport_on_ring_matches_snow_byte_for_byte_both_ways() {
        let mut rng = crate::rng::from_seed([8; 32]);
        let a = Keypair::generate_ed25519(&mut rng);
        let b = Keypair::generate_ed25519(&mut rng);
        let ((mut ti, _), (mut tr, _)) = pair(&a, &b, None, &[], &[]).unwrap();
        let (hi, hr) = handshakes(&a, &b, None, &[], &[]).unwrap();
        let (mut si, mut sr) = (hi.state.into_transport_mode().unwrap(), hr.state.into_transport_mode().unwrap());
        let msgs: Vec<Vec<u8>> = [1, MAX_PLAINTEXT_LEN, MAX_PLAINTEXT_LEN + 1, 200_000, 12]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
            .collect();
        for m in &msgs {
            // Initiator to responder, then back: the same wire bytes as snow's (keys, nonces, framing).
            let mut wire = Vec::new();
            ti.encrypt(m, &mut wire);
            assert_eq!(wire, snow_frames(&mut si, m), "initiator, {} bytes", m.len());
            let mut plain = Vec::new();
            tr.decrypt(&mut wire, &mut plain).unwrap();
            assert_eq!((&plain, wire.len()), (m, 0));
            let mut back = snow_frames(&mut sr, m);
            let mut wire = Vec::new();
            tr.encrypt(m, &mut wire);
            assert_eq!(wire, back, "responder, {} bytes", m.len());
            // Delivered a byte at a time, frames open only when whole.
            let mut plain = Vec::new();
            let mut buf = Vec::new();
            for x in back.drain(..) {
                buf.push(x);
                ti.decrypt(&mut buf, &mut plain).unwrap();
            }
            assert_eq!((&plain, buf.len()), (m, 0));
        }
        // A frame too short for its tag does not authenticate.
        assert_eq!(tr.decrypt(&mut vec![0, 3, 1, 2, 3], &mut Vec::new()), Err(NoiseError::Decrypt));
    }

    #[test]
    fn noise_handshake_authenticates_both_sides_and_negotiates_muxer() {
        let mut rng = crate::rng::from_seed([3; 32]);
        let a = Keypair::generate_ed25519(&mut rng);
        let b = Keypair::generate(crate::KeyType::Secp256k1, &mut rng);
        let ((mut ta, ra), (mut tb, rb)) =
            pair(&a, &b, Some(b.peer_id()), &["/yamux/1.0.0", "/mplex/6.7.0"], &["/mplex/6.7.0", "/yamux/1.0.0"]).unwrap();
        assert_eq!(ra.peer_id, b.peer_id());
        assert_eq!(rb.peer_id, a.peer_id());
        assert_eq!(ra.muxer.as_deref(), Some("/yamux/1.0.0"));
        assert_eq!(rb.muxer.as_deref(), Some("/yamux/1.0.0"));
        let big = vec![7u8; 200_000];
        let mut wire = Vec::new();
        ta.encrypt(&big, &mut wire);
        let mut plain = Vec::new();
        tb.decrypt(&mut wire, &mut plain).unwrap();
        assert_eq!(plain, big);
        assert!(wire.is_empty());
    }

    #[test]
    fn noise_wrong_expected_peer_fails() {
        let mut rng = crate::rng::from_seed([4; 32]);
        let a = Keypair::generate_ed25519(&mut rng);
        let b = Keypair::generate_ed25519(&mut rng);
        let c = Keypair::generate_ed25519(&mut rng);
        assert!(matches!(pair(&a, &b, Some(c.peer_id()), &[], &[]), Err(NoiseError::PeerIdMismatch { .. })));
    }

    #[test]
    fn noise_no_common_muxer_means_none() {
        let mut rng = crate::rng::from_seed([5; 32]);
        let a = Keypair::generate_ed25519(&mut rng);
        let b = Keypair::generate_ed25519(&mut rng);
        let ((_, ra), _) = pair(&a, &b, None, &["/yamux/1.0.0"], &[]).unwrap();
        assert_eq!(ra.muxer, None);
    }

    #[test]
    fn noise_tampered_frame_is_an_error() {
        let mut rng = crate::rng::from_seed([6; 32]);
        let a = Keypair::generate_ed25519(&mut rng);
        let b = Keypair::generate_ed25519(&mut rng);
        let ((mut ta, _), (mut tb, _)) = pair(&a, &b, None, &[], &[]).unwrap();
        let mut wire = Vec::new();
        ta.encrypt(b"hello", &mut wire);
        wire[3] ^= 1;
        assert_eq!(tb.decrypt(&mut wire, &mut Vec::new()), Err(NoiseError::Decrypt));
    }

    #[test]
    fn payload_roundtrip() {
        let p = Payload { identity_key: vec![1, 2], identity_sig: vec![3], muxers: vec!["/yamux/1.0.0".into()] };
        assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
    }
}
