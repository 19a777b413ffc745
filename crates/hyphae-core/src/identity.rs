//! Identities and peer IDs (libp2p/specs peer-ids/peer-ids.md).
//!
//! Key types: Ed25519, Secp256k1, ECDSA (P-256) and RSA. Keys travel as the `PublicKey`/`PrivateKey`
//! protobuf (`Type = 1`, `Data = 2`, deterministic encoding). A peer ID is the multihash of the encoded
//! public key: identity multihash when the encoding is at most 42 bytes, sha2-256 otherwise.

use crate::{pb, varint, DecodeError};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// spec(peer-ids): "...public keys which, when serialized, are 42 bytes or less MUST use the identity multihash"
const MAX_INLINE_KEY_LENGTH: usize = 42;
/// Largest encoded key we accept from a peer (an 8192-bit RSA key in PKIX DER is ~1.1 KB).
pub const MAX_KEY_ENCODED_LEN: usize = 2048;
/// go-libp2p's bounds on RSA key sizes; larger keys would let a peer make us do unbounded work.
pub const MIN_RSA_BITS: usize = 2048;
pub const MAX_RSA_BITS: usize = 8192;

const MH_IDENTITY: u64 = 0x00;
const MH_SHA2_256: u64 = 0x12;
const CID_LIBP2P_KEY: u64 = 0x72;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    Rsa = 0,
    Ed25519 = 1,
    Secp256k1 = 2,
    Ecdsa = 3,
}

impl KeyType {
    fn from_u64(v: u64) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => KeyType::Rsa,
            1 => KeyType::Ed25519,
            2 => KeyType::Secp256k1,
            3 => KeyType::Ecdsa,
            _ => return Err(DecodeError::Invalid("unknown key type")),
        })
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(KeyType::Ed25519),
            "secp256k1" => Ok(KeyType::Secp256k1),
            "ecdsa" => Ok(KeyType::Ecdsa),
            "rsa" => Ok(KeyType::Rsa),
            _ => Err(format!("unknown key type {s:?} (ed25519, secp256k1, ecdsa, rsa)")),
        }
    }
}

/// A verified public key.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    Secp256k1(k256::ecdsa::VerifyingKey),
    Ecdsa(p256::ecdsa::VerifyingKey),
    Rsa(Box<rsa::RsaPublicKey>),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?}, {})", self.key_type(), self.to_peer_id())
    }
}

impl PublicKey {
    pub fn key_type(&self) -> KeyType {
        match self {
            PublicKey::Ed25519(_) => KeyType::Ed25519,
            PublicKey::Secp256k1(_) => KeyType::Secp256k1,
            PublicKey::Ecdsa(_) => KeyType::Ecdsa,
            PublicKey::Rsa(_) => KeyType::Rsa,
        }
    }

    /// The key's `Data` field: raw 32 bytes (Ed25519), compressed SEC1 (secp256k1), PKIX DER (ECDSA, RSA).
    pub fn raw(&self) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey;
        match self {
            PublicKey::Ed25519(k) => k.to_bytes().to_vec(),
            PublicKey::Secp256k1(k) => k.to_encoded_point(true).as_bytes().to_vec(),
            PublicKey::Ecdsa(k) => k.to_public_key_der().map(|d| d.as_bytes().to_vec()).expect("invariant: p256 key encodes as PKIX"),
            PublicKey::Rsa(k) => k.to_public_key_der().map(|d| d.as_bytes().to_vec()).expect("invariant: rsa key encodes as PKIX"),
        }
    }

    /// The protobuf encoding (`PublicKey { Type, Data }`).
    pub fn encode_protobuf(&self) -> Vec<u8> {
        let raw = self.raw();
        let mut out = Vec::with_capacity(raw.len() + 8);
        pb::put_varint(&mut out, 1, self.key_type() as u64);
        pb::put_bytes(&mut out, 2, &raw);
        out
    }

    pub fn decode_protobuf(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() > MAX_KEY_ENCODED_LEN {
            return Err(DecodeError::TooLarge { len: buf.len(), limit: MAX_KEY_ENCODED_LEN });
        }
        let (ty, data) = decode_key_pb(buf)?;
        Self::from_raw(ty, data)
    }

    pub fn from_raw(ty: KeyType, data: &[u8]) -> Result<Self, DecodeError> {
        use p256::pkcs8::DecodePublicKey;
        Ok(match ty {
            KeyType::Ed25519 => {
                let b: [u8; 32] = data.try_into().map_err(|_| DecodeError::Invalid("ed25519 key length"))?;
                PublicKey::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&b).map_err(|_| DecodeError::Invalid("ed25519 key"))?)
            }
            KeyType::Secp256k1 => {
                PublicKey::Secp256k1(k256::ecdsa::VerifyingKey::from_sec1_bytes(data).map_err(|_| DecodeError::Invalid("secp256k1 key"))?)
            }
            KeyType::Ecdsa => {
                PublicKey::Ecdsa(p256::ecdsa::VerifyingKey::from_public_key_der(data).map_err(|_| DecodeError::Invalid("ecdsa key"))?)
            }
            KeyType::Rsa => {
                // By hand rather than `from_public_key_der`, which stops at 4096 bits: go-libp2p accepts
                // up to 8192. The size is checked on the modulus bytes, before any arithmetic.
                use rsa::pkcs8::der::Decode;
                use rsa::traits::PublicKeyParts;
                let bad = |_| DecodeError::Invalid("rsa key");
                let spki = rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(data).map_err(bad)?;
                if spki.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
                    return Err(DecodeError::Invalid("rsa key"));
                }
                let raw = spki.subject_public_key.as_bytes().ok_or(DecodeError::Invalid("rsa key"))?;
                let pk = rsa::pkcs1::RsaPublicKey::from_der(raw).map_err(bad)?;
                let n = pk.modulus.as_bytes();
                if n.len() > MAX_RSA_BITS.div_ceil(8) {
                    return Err(DecodeError::Invalid("rsa key size out of bounds"));
                }
                let (n, e) = (rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(pk.public_exponent.as_bytes()));
                let k = rsa::RsaPublicKey::new_with_max_size(n, e, MAX_RSA_BITS).map_err(|_| DecodeError::Invalid("rsa key"))?;
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&k.n().bits()) {
                    return Err(DecodeError::Invalid("rsa key size out of bounds"));
                }
                PublicKey::Rsa(Box::new(k))
            }
        })
    }

    /// Verifies `sig` over `msg` with the scheme libp2p uses for this key type. False on any error.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use k256::ecdsa::signature::Verifier;
        match self {
            PublicKey::Ed25519(k) => {
                let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else { return false };
                k.verify_strict(msg, &sig).is_ok()
            }
            PublicKey::Secp256k1(k) => {
                // go-libp2p: DER signature over sha256(msg); accept high-S as btcec does.
                let Ok(sig) = k256::ecdsa::Signature::from_der(sig) else { return false };
                let sig = sig.normalize_s().unwrap_or(sig);
                k.verify(msg, &sig).is_ok()
            }
            PublicKey::Ecdsa(k) => {
                let Ok(sig) = p256::ecdsa::Signature::from_der(sig) else { return false };
                k.verify(msg, &sig).is_ok()
            }
            PublicKey::Rsa(k) => {
                let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else { return false };
                rsa::pkcs1v15::VerifyingKey::<Sha256>::new((**k).clone()).verify(msg, &sig).is_ok()
            }
        }
    }

    pub fn to_peer_id(&self) -> PeerId {
        PeerId::from_public_key_protobuf(&self.encode_protobuf())
    }
}

fn decode_key_pb(buf: &[u8]) -> Result<(KeyType, &[u8]), DecodeError> {
    let mut ty = None;
    let mut data = None;
    for f in pb::Reader::new(buf) {
        match f? {
            (1, v) => ty = Some(KeyType::from_u64(v.varint()?)?),
            (2, v) => data = Some(v.bytes()?),
            _ => {}
        }
    }
    Ok((ty.ok_or(DecodeError::Invalid("key without type"))?, data.ok_or(DecodeError::Invalid("key without data"))?))
}

/// A private key (with its public half).
#[derive(Clone)]
pub enum Keypair {
    Ed25519(ed25519_dalek::SigningKey),
    Secp256k1(k256::ecdsa::SigningKey),
    Ecdsa(p256::ecdsa::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({:?}, {})", self.key_type(), self.public().to_peer_id())
    }
}

impl Keypair {
    /// Generates a key. RSA keys are 2048 bits.
    pub fn generate(ty: KeyType, rng: &mut impl CryptoRngCore) -> Keypair {
        match ty {
            KeyType::Ed25519 => Keypair::Ed25519(ed25519_dalek::SigningKey::generate(rng)),
            KeyType::Secp256k1 => Keypair::Secp256k1(k256::ecdsa::SigningKey::random(rng)),
            KeyType::Ecdsa => Keypair::Ecdsa(p256::ecdsa::SigningKey::random(rng)),
            KeyType::Rsa => Keypair::Rsa(Box::new(rsa::RsaPrivateKey::new(rng, 2048).expect("invariant: 2048-bit rsa keygen succeeds"))),
        }
    }

    pub fn generate_ed25519(rng: &mut impl CryptoRngCore) -> Keypair {
        Self::generate(KeyType::Ed25519, rng)
    }

    pub fn key_type(&self) -> KeyType {
        match self {
            Keypair::Ed25519(_) => KeyType::Ed25519,
            Keypair::Secp256k1(_) => KeyType::Secp256k1,
            Keypair::Ecdsa(_) => KeyType::Ecdsa,
            Keypair::Rsa(_) => KeyType::Rsa,
        }
    }

    pub fn public(&self) -> PublicKey {
        match self {
            Keypair::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            Keypair::Secp256k1(k) => PublicKey::Secp256k1(*k.verifying_key()),
            Keypair::Ecdsa(k) => PublicKey::Ecdsa(*k.verifying_key()),
            Keypair::Rsa(k) => PublicKey::Rsa(Box::new(k.to_public_key())),
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.public().to_peer_id()
    }

    /// Signs `msg` with the scheme libp2p uses for this key type.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        use k256::ecdsa::signature::{SignatureEncoding, Signer};
        match self {
            Keypair::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
            Keypair::Secp256k1(k) => {
                let s: k256::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
            Keypair::Ecdsa(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
            Keypair::Rsa(k) => rsa::pkcs1v15::SigningKey::<Sha256>::new((**k).clone()).sign(msg).to_vec(),
        }
    }

    /// The private key protobuf: Ed25519 seed||public (64 bytes), secp256k1 raw 32 bytes, ECDSA SEC1 DER,
    /// RSA PKCS#1 DER — as go-libp2p writes them.
    pub fn encode_protobuf(&self) -> Vec<u8> {
        let data: Vec<u8> = match self {
            Keypair::Ed25519(k) => {
                let mut v = k.to_bytes().to_vec();
                v.extend_from_slice(&k.verifying_key().to_bytes());
                v
            }
            Keypair::Secp256k1(k) => k.to_bytes().to_vec(),
            Keypair::Ecdsa(k) => {
                // SEC1 ECPrivateKey with the named-curve parameters, as Go's x509.MarshalECPrivateKey writes it.
                let mut v = vec![0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
                v.extend_from_slice(&k.to_bytes());
                v.extend_from_slice(&[
                    0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0xa1, 0x44, 0x03, 0x42, 0x00,
                ]);
                v.extend_from_slice(k.verifying_key().to_encoded_point(false).as_bytes());
                v
            }
            Keypair::Rsa(k) => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                k.to_pkcs1_der().expect("invariant: rsa key encodes as PKCS#1").as_bytes().to_vec()
            }
        };
        let mut out = Vec::with_capacity(data.len() + 8);
        pb::put_varint(&mut out, 1, self.key_type() as u64);
        pb::put_bytes(&mut out, 2, &data);
        out
    }

    pub fn decode_protobuf(buf: &[u8]) -> Result<Keypair, DecodeError> {
        if buf.len() > 8 * 1024 {
            return Err(DecodeError::TooLarge { len: buf.len(), limit: 8 * 1024 });
        }
        let (ty, data) = decode_key_pb(buf)?;
        Ok(match ty {
            KeyType::Ed25519 => {
                // 64 bytes seed||public; older encodings append the public key twice (96 bytes).
                if data.len() != 64 && data.len() != 96 && data.len() != 32 {
                    return Err(DecodeError::Invalid("ed25519 private key length"));
                }
                let seed: [u8; 32] = data[..32].try_into().map_err(|_| DecodeError::Invalid("ed25519 private key"))?;
                let k = ed25519_dalek::SigningKey::from_bytes(&seed);
                if data.len() >= 64 && k.verifying_key().to_bytes()[..] != data[32..64] {
                    return Err(DecodeError::Invalid("ed25519 private key does not match its public key"));
                }
                Keypair::Ed25519(k)
            }
            KeyType::Secp256k1 => {
                Keypair::Secp256k1(k256::ecdsa::SigningKey::from_slice(data).map_err(|_| DecodeError::Invalid("secp256k1 private key"))?)
            }
            KeyType::Ecdsa => {
                let sk = p256::SecretKey::from_sec1_der(data).map_err(|_| DecodeError::Invalid("ecdsa private key"))?;
                Keypair::Ecdsa(p256::ecdsa::SigningKey::from(sk))
            }
            KeyType::Rsa => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                use rsa::traits::PublicKeyParts;
                let k = rsa::RsaPrivateKey::from_pkcs1_der(data).map_err(|_| DecodeError::Invalid("rsa private key"))?;
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&k.n().bits()) {
                    return Err(DecodeError::Invalid("rsa key size out of bounds"));
                }
                Keypair::Rsa(Box::new(k))
            }
        })
    }
}

/// A peer ID: the multihash bytes of a public key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(Vec<u8>);

impl PeerId {
    pub fn from_public_key_protobuf(encoded: &[u8]) -> PeerId {
        let mut mh = Vec::with_capacity(36);
        if encoded.len() <= MAX_INLINE_KEY_LENGTH {
            varint::encode(MH_IDENTITY, &mut mh);
            varint::encode(encoded.len() as u64, &mut mh);
            mh.extend_from_slice(encoded);
        } else {
            varint::encode(MH_SHA2_256, &mut mh);
            mh.push(32);
            mh.extend_from_slice(&Sha256::digest(encoded));
        }
        PeerId(mh)
    }

    /// Validates multihash bytes: identity (holding a decodable key) or sha2-256.
    pub fn from_bytes(b: &[u8]) -> Result<PeerId, DecodeError> {
        let (code, n) = varint::decode_exact(b)?;
        let (len, m) = varint::decode_exact(&b[n..])?;
        let digest = &b[n + m..];
        if digest.len() as u64 != len {
            return Err(DecodeError::Invalid("multihash length mismatch"));
        }
        match code {
            MH_SHA2_256 if len == 32 => {}
            MH_IDENTITY if len as usize <= MAX_INLINE_KEY_LENGTH => {
                decode_key_pb(digest)?;
            }
            _ => return Err(DecodeError::Invalid("peer id is not an identity or sha2-256 multihash")),
        }
        Ok(PeerId(b.to_vec()))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The public key, when it is inlined (identity multihash).
    pub fn inline_public_key(&self) -> Option<PublicKey> {
        let (code, n) = varint::decode_exact(&self.0).ok()?;
        if code != MH_IDENTITY {
            return None;
        }
        let (_, m) = varint::decode_exact(&self.0[n..]).ok()?;
        PublicKey::decode_protobuf(&self.0[n + m..]).ok()
    }

    /// Whether `key` is the key this ID names.
    pub fn matches(&self, key: &PublicKey) -> bool {
        key.to_peer_id() == *self
    }

    pub fn to_base58(&self) -> String {
        bs58::encode(&self.0).into_string()
    }

    /// CIDv1 text form: multibase base32 of (0x01, libp2p-key, multihash).
    pub fn to_cid_string(&self) -> String {
        let mut b = vec![0x01];
        varint::encode(CID_LIBP2P_KEY, &mut b);
        b.extend_from_slice(&self.0);
        format!("b{}", data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase())
    }

    /// A random peer ID (for tests and the simulator): sha2-256 of random bytes.
    pub fn random(rng: &mut impl rand_core::RngCore) -> PeerId {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        let mut mh = vec![MH_SHA2_256 as u8, 32];
        mh.extend_from_slice(&b);
        PeerId(mh)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base58())
    }
}
impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.to_base58())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer id: {0}")]
pub struct ParsePeerIdError(pub String);

impl FromStr for PeerId {
    type Err = ParsePeerIdError;
    fn from_str(s: &str) -> Result<PeerId, ParsePeerIdError> {
        let err = |m: &str| ParsePeerIdError(format!("{s:?}: {m}"));
        if s.len() > 200 {
            return Err(err("too long"));
        }
        let bytes = if s.starts_with('1') || s.starts_with("Qm") {
            bs58::decode(s).into_vec().map_err(|_| err("bad base58"))?
        } else if let Some(b32) = s.strip_prefix('b') {
            let raw = data_encoding::BASE32_NOPAD.decode(b32.to_ascii_uppercase().as_bytes()).map_err(|_| err("bad base32"))?;
            let (ver, n) = varint::decode_exact(&raw).map_err(|_| err("bad cid"))?;
            let (codec, m) = varint::decode_exact(&raw[n..]).map_err(|_| err("bad cid"))?;
            if ver != 1 || codec != CID_LIBP2P_KEY {
                return Err(err("cid is not a v1 libp2p-key"));
            }
            raw[n + m..].to_vec()
        } else {
            return Err(err("unknown encoding"));
        };
        PeerId::from_bytes(&bytes).map_err(|e| err(&e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).unwrap()
    }

    // Test vectors: libp2p/specs peer-ids/peer-ids.md "Test vectors".
    const ED_PRIV: &str = "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e";
    const ED_PUB: &str = "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e";
    const K1_PRIV: &str = "0802122053DADF1D5A164D6B4ACDB15E24AA4C5B1D3461BDBD42ABEDB0A4404D56CED8FB";
    const K1_PUB: &str = "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99";
    const EC_PRIV: &str = "08031279307702010104203E5B1FE9712E6C314942A750BD67485DE3C1EFE85B1BFB520AE8F9AE3DFA4A4CA00A06082A8648CE3D030107A14403420004DE3D300FA36AE0E8F5D530899D83ABAB44ABF3161F162A4BC901D8E6ECDA020E8B6D5F8DA30525E71D6851510C098E5C47C646A597FB4DCEC034E9F77C409E62";
    const EC_PUB: &str = "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d530899d83abab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646a597fb4dcec034e9f77c409e62";

    #[test]
    fn spec_vectors_private_key_yields_public_key() {
        for (privk, pubk) in [(ED_PRIV, ED_PUB), (K1_PRIV, K1_PUB), (EC_PRIV, EC_PUB)] {
            let kp = Keypair::decode_protobuf(&hex(privk)).unwrap();
            assert_eq!(kp.public().encode_protobuf(), hex(pubk), "public key of {privk}");
            assert_eq!(PublicKey::decode_protobuf(&hex(pubk)).unwrap(), kp.public());
        }
    }

    #[test]
    fn spec_vectors_private_key_roundtrip() {
        for privk in [ED_PRIV, K1_PRIV, EC_PRIV] {
            let kp = Keypair::decode_protobuf(&hex(privk)).unwrap();
            assert_eq!(kp.encode_protobuf(), hex(privk));
        }
    }

    #[test]
    fn ed25519_peer_id_is_identity_multihash() {
        let kp = Keypair::decode_protobuf(&hex(ED_PRIV)).unwrap();
        let id = kp.peer_id();
        assert!(id.to_base58().starts_with("12D3KooW"));
        assert_eq!(id.inline_public_key(), Some(kp.public()));
        assert_eq!(id.to_base58().parse::<PeerId>().unwrap(), id);
        assert_eq!(id.to_cid_string().parse::<PeerId>().unwrap(), id);
        assert!(id.to_cid_string().starts_with("bafzaa"));
    }

    #[test]
    fn known_peer_id_texts_parse() {
        // go-libp2p docs examples (sha256 RSA id and an ed25519 id) and the CID form from the spec.
        let a: PeerId = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".parse().unwrap();
        let b: PeerId = "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_cid_string(), "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe");
    }

    #[test]
    fn sign_verify_every_key_type() {
        let mut rng = crate::rng::from_seed([7; 32]);
        for ty in [KeyType::Ed25519, KeyType::Secp256k1, KeyType::Ecdsa, KeyType::Rsa] {
            let kp = Keypair::generate(ty, &mut rng);
            let sig = kp.sign(b"hello");
            let pk = PublicKey::decode_protobuf(&kp.public().encode_protobuf()).unwrap();
            assert!(pk.verify(b"hello", &sig), "{ty:?}");
            assert!(!pk.verify(b"hellO", &sig), "{ty:?}");
            let back = Keypair::decode_protobuf(&kp.encode_protobuf()).unwrap();
            assert_eq!(back.public(), kp.public());
            assert_eq!(pk.to_peer_id().to_base58().parse::<PeerId>().unwrap(), kp.peer_id());
        }
    }

    #[test]
    fn garbage_keys_are_errors() {
        assert!(PublicKey::decode_protobuf(&[0x08, 0x09, 0x12, 0x00]).is_err());
        assert!(PublicKey::decode_protobuf(&[0x08, 0x01, 0x12, 0x05, 1, 2, 3, 4, 5]).is_err());
        assert!(PublicKey::decode_protobuf(&[0xff]).is_err());
        assert!("12D3KooWbad".parse::<PeerId>().is_err());
    }
}
