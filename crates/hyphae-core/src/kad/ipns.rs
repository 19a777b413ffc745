//! IPNS records (ipfs/specs `src/ipns/ipns-record.md`): created, validated and compared here, stored and
//! found by the DHT under `/ipns/<peer id multihash>`.
//!
//! A record is an `IpnsEntry` protobuf (`ipns.proto`) whose `data` holds its fields in DAG-CBOR (`Value`,
//! `Validity`, `ValidityType`, `Sequence`, `TTL`) and whose `signatureV2` signs `"ipns-signature:"`
//! followed by those bytes. Validation follows the spec's "Record Verification" in its order and
//! fails on the first error; the only validity type is EOL, an RFC 3339 time that must lie after `now`
//! (wall-clock nanoseconds the caller passes in: this module reads no clock). Records we create also
//! carry the legacy V1 fields and signature, so consumers that predate V2 can read them.
//!
//! The CBOR reader and writer here are small on purpose: IPNS needs a map of text keys to unsigned
//! integers and byte strings, signatures are checked over the received bytes (never re-encoded), and
//! every other CBOR item is skipped with a depth and length bound. A general CBOR crate (serde-based)
//! would add a dependency tree for these hundred-odd lines, and fuzzing covers them as they are.

use crate::identity::{Keypair, PeerId, PublicKey};
use std::cmp::Ordering;

#[allow(clippy::all, clippy::pedantic, non_snake_case, non_upper_case_globals, non_camel_case_types, unused_imports, unknown_lints, dead_code)]
#[rustfmt::skip]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/ipns.rs"));
}

/// The spec's size limit for a serialized record ("MUST support ... less than or equal to 10 KiB").
pub const MAX_RECORD_LEN: usize = 10 << 10;
/// The spec's suggested TTL: 5 minutes.
pub const DEFAULT_TTL_NANOS: u64 = 300_000_000_000;
const SIG_V2_PREFIX: &[u8] = b"ipns-signature:";
/// CBOR nesting we skip through in unknown fields.
const MAX_DEPTH: usize = 16;

/// A validated record's fields (from its signed CBOR `data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpnsRecord {
    /// The content path it names, e.g. `/ipfs/bafy…`.
    pub value: Vec<u8>,
    pub sequence: u64,
    pub ttl_nanos: u64,
    /// The RFC 3339 expiry as written, and as unix nanoseconds.
    pub validity: String,
    pub eol_unix_nanos: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpnsError {
    #[error("record larger than {MAX_RECORD_LEN} bytes")]
    TooLarge,
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("no signatureV2 or data (V1-only records are not valid)")]
    NotV2,
    #[error("no public key: the name does not inline one and the record carries none")]
    NoKey,
    #[error("the public key is not the name's")]
    WrongKey,
    #[error("signatureV2 does not verify")]
    BadSignature,
    #[error("the V1 field {0} differs from the signed data")]
    Mismatch(&'static str),
    #[error("unsupported validity type {0}")]
    ValidityType(u64),
    #[error("expired at {0}")]
    Expired(String),
}

/// The DHT key of `name`'s records: `/ipns/` and the peer id's multihash bytes.
pub fn key(name: &PeerId) -> Vec<u8> {
    let mut k = b"/ipns/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// A record signed by `keypair` (its peer id is the name) pointing at `value`, valid until
/// `eol_unix_nanos`: the V2 form with the legacy V1 copies and signature, and the public key inside
/// when the peer id does not inline it (RSA).
pub fn create(keypair: &Keypair, value: &[u8], sequence: u64, eol_unix_nanos: i128, ttl_nanos: u64) -> Vec<u8> {
    let validity = format_rfc3339(eol_unix_nanos);
    let data = cbor_data(value, validity.as_bytes(), sequence, ttl_nanos);
    let mut v2 = SIG_V2_PREFIX.to_vec();
    v2.extend_from_slice(&data);
    let mut v1 = value.to_vec();
    v1.extend_from_slice(validity.as_bytes());
    v1.extend_from_slice(b"EOL");
    let pubkey = keypair.peer_id().inline_public_key().is_none().then(|| keypair.public().encode_protobuf());
    let e = pb::IpnsEntry {
        value: Some(value.to_vec()),
        signatureV1: Some(keypair.sign(&v1)),
        validityType: Some(pb::mod_IpnsEntry::ValidityType::EOL),
        validity: Some(validity.into_bytes()),
        sequence: Some(sequence),
        ttl: Some(ttl_nanos),
        pubKey: pubkey,
        signatureV2: Some(keypair.sign(&v2)),
        data: Some(data),
    };
    crate::pb::write_message(&e)
}

/// Validates `bytes` as a record of `name` at wall-clock time `now_unix_nanos` (the spec's "Record
/// Verification", step by step).
pub fn validate(name: &PeerId, bytes: &[u8], now_unix_nanos: i128) -> Result<IpnsRecord, IpnsError> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(IpnsError::TooLarge);
    }
    let e: pb::IpnsEntry = crate::pb::read_message(bytes, &[], "malformed IPNS entry").map_err(|_| IpnsError::Malformed("protobuf"))?;
    let (Some(sig), Some(data)) = (e.signatureV2.as_deref().filter(|s| !s.is_empty()), e.data.as_deref().filter(|d| !d.is_empty())) else {
        return Err(IpnsError::NotV2);
    };
    let key = match e.pubKey.as_deref() {
        Some(k) => {
            let k = PublicKey::decode_protobuf(k).map_err(|_| IpnsError::Malformed("pubKey"))?;
            if !name.matches(&k) {
                return Err(IpnsError::WrongKey);
            }
            k
        }
        None => name.inline_public_key().ok_or(IpnsError::NoKey)?,
    };
    let f = read_cbor_data(data)?;
    let mut signed = SIG_V2_PREFIX.to_vec();
    signed.extend_from_slice(data);
    if !key.verify(&signed, sig) {
        return Err(IpnsError::BadSignature);
    }
    if e.signatureV1.is_some() || e.value.is_some() {
        if e.value.as_deref() != Some(&f.value[..]) {
            return Err(IpnsError::Mismatch("value"));
        }
        if e.validity.as_deref() != Some(&f.validity[..]) {
            return Err(IpnsError::Mismatch("validity"));
        }
        if e.validityType.map(|t| t as u64) != Some(f.validity_type) {
            return Err(IpnsError::Mismatch("validityType"));
        }
        if e.sequence != Some(f.sequence) {
            return Err(IpnsError::Mismatch("sequence"));
        }
        if e.ttl != Some(f.ttl) {
            return Err(IpnsError::Mismatch("ttl"));
        }
    }
    let (validity, eol) = expiry(f.validity_type, f.validity)?;
    if eol <= now_unix_nanos {
        return Err(IpnsError::Expired(validity));
    }
    Ok(IpnsRecord { value: f.value, sequence: f.sequence, ttl_nanos: f.ttl, validity, eol_unix_nanos: eol })
}

/// An EOL validity as text and as unix nanoseconds (the only validity type there is).
fn expiry(validity_type: u64, validity: Vec<u8>) -> Result<(String, i128), IpnsError> {
    if validity_type != 0 {
        return Err(IpnsError::ValidityType(validity_type));
    }
    let validity = String::from_utf8(validity).map_err(|_| IpnsError::Malformed("validity is not text"))?;
    let eol = parse_rfc3339(&validity).ok_or(IpnsError::Malformed("validity is not an RFC 3339 time"))?;
    Ok((validity, eol))
}

/// Which of two valid records of one name is better: the higher sequence, then the later expiry
/// (go's and js's selector).
pub fn compare(a: &IpnsRecord, b: &IpnsRecord) -> Ordering {
    rank_of(a).cmp(&rank_of(b))
}

fn rank_of(r: &IpnsRecord) -> (u64, i128) {
    (r.sequence, r.eol_unix_nanos)
}

/// The (sequence, expiry) a record [`compare`]s by, read without checking its signature: for ranking
/// records already validated (a store's kept record against a new one it just validated).
pub fn rank(bytes: &[u8]) -> Option<(u64, i128)> {
    let e: pb::IpnsEntry = crate::pb::read_message(bytes, &[], "malformed IPNS entry").ok()?;
    let f = read_cbor_data(e.data.as_deref()?).ok()?;
    expiry(f.validity_type, f.validity).ok().map(|(_, eol)| (f.sequence, eol))
}

// ---------- DAG-CBOR, the part IPNS uses ----------

struct Fields {
    value: Vec<u8>,
    validity: Vec<u8>,
    validity_type: u64,
    sequence: u64,
    ttl: u64,
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// The five fields as a DAG-CBOR map: keys sorted by length, then bytewise (TTL, Value, Sequence,
/// Validity, ValidityType), integers and lengths in their shortest form.
fn cbor_data(value: &[u8], validity: &[u8], sequence: u64, ttl: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + value.len() + validity.len());
    head(&mut out, 5, 5);
    let text = |out: &mut Vec<u8>, s: &str| {
        head(out, 3, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    };
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        head(out, 2, b.len() as u64);
        out.extend_from_slice(b);
    };
    text(&mut out, "TTL");
    head(&mut out, 0, ttl);
    text(&mut out, "Value");
    bytes(&mut out, value);
    text(&mut out, "Sequence");
    head(&mut out, 0, sequence);
    text(&mut out, "Validity");
    bytes(&mut out, validity);
    text(&mut out, "ValidityType");
    head(&mut out, 0, 0);
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], IpnsError> {
        let n = usize::try_from(n).map_err(|_| IpnsError::Malformed("CBOR length"))?;
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(IpnsError::Malformed("CBOR truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    /// A head: its major type and argument (indefinite lengths are not DAG-CBOR: refused).
    fn head(&mut self) -> Result<(u8, u64), IpnsError> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let n = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes"))),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().expect("four bytes"))),
            27 => u64::from_be_bytes(self.take(8)?.try_into().expect("eight bytes")),
            _ => return Err(IpnsError::Malformed("CBOR indefinite length or reserved")),
        };
        Ok((major, n))
    }
    fn uint(&mut self) -> Result<u64, IpnsError> {
        match self.head()? {
            (0, n) => Ok(n),
            _ => Err(IpnsError::Malformed("CBOR: expected an unsigned integer")),
        }
    }
    fn bytes(&mut self) -> Result<&'a [u8], IpnsError> {
        match self.head()? {
            (2, n) => self.take(n),
            _ => Err(IpnsError::Malformed("CBOR: expected a byte string")),
        }
    }
    /// Skips one item of any type (an extension field's value).
    fn skip(&mut self, depth: usize) -> Result<(), IpnsError> {
        if depth > MAX_DEPTH {
            return Err(IpnsError::Malformed("CBOR nested too deep"));
        }
        let (major, n) = self.head()?;
        match major {
            0 | 1 | 7 => Ok(()),
            2 | 3 => self.take(n).map(|_| ()),
            4 | 5 => {
                let items = if major == 5 { n.checked_mul(2).ok_or(IpnsError::Malformed("CBOR map size"))? } else { n };
                // Each item takes at least a byte: a count beyond what is left is a lie.
                if items > (self.b.len() - self.at) as u64 {
                    return Err(IpnsError::Malformed("CBOR truncated"));
                }
                (0..items).try_for_each(|_| self.skip(depth + 1))
            }
            _ => self.skip(depth + 1), // a tag, then its item
        }
    }
}

fn read_cbor_data(b: &[u8]) -> Result<Fields, IpnsError> {
    let mut r = Reader { b, at: 0 };
    let (major, n) = r.head()?;
    if major != 5 {
        return Err(IpnsError::Malformed("data is not a CBOR map"));
    }
    let (mut value, mut validity, mut validity_type, mut sequence, mut ttl) = (None, None, None, None, None);
    for _ in 0..n {
        let k = match r.head()? {
            (3, len) => r.take(len)?,
            _ => return Err(IpnsError::Malformed("CBOR map key is not text")),
        };
        match k {
            b"Value" => value = Some(r.bytes()?.to_vec()),
            b"Validity" => validity = Some(r.bytes()?.to_vec()),
            b"ValidityType" => validity_type = Some(r.uint()?),
            b"Sequence" => sequence = Some(r.uint()?),
            b"TTL" => ttl = Some(r.uint()?),
            _ => r.skip(0)?,
        }
    }
    if r.at != b.len() {
        return Err(IpnsError::Malformed("bytes after the CBOR map"));
    }
    let need = |what: &'static str| IpnsError::Malformed(what);
    Ok(Fields {
        value: value.ok_or(need("data lacks Value"))?,
        validity: validity.ok_or(need("data lacks Validity"))?,
        validity_type: validity_type.ok_or(need("data lacks ValidityType"))?,
        sequence: sequence.ok_or(need("data lacks Sequence"))?,
        ttl: ttl.ok_or(need("data lacks TTL"))?,
    })
}

// ---------- RFC 3339 ----------

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = b.get(r)?;
        t.iter().all(u8::is_ascii_digit).then(|| t.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = &b[start..i];
        if digits.is_empty() {
            return None;
        }
        for (k, dgt) in digits.iter().take(9).enumerate() {
            nanos += i128::from(dgt - b'0') * 10i128.pow(8 - k as u32);
        }
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        s @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let v = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *s == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Unix nanoseconds as RFC 3339 in UTC with nanoseconds, trailing zeros trimmed (go's RFC3339Nano).
pub fn format_rfc3339(unix_nanos: i128) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000) as i64;
    let nanos = unix_nanos.rem_euclid(1_000_000_000) as u32;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos > 0 {
        let f = format!("{nanos:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KeyType;

    const NOW: i128 = 1_800_000_000 * 1_000_000_000;

    #[test]
    fn rfc3339_round_trips_and_reads_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.000000001Z"), Some(1));
        assert_eq!(parse_rfc3339("2026-11-30T05:00:00Z"), Some(1_796_014_800 * 1_000_000_000));
        assert_eq!(parse_rfc3339("2026-11-30T06:00:00+01:00"), parse_rfc3339("2026-11-30T05:00:00Z"));
        assert_eq!(parse_rfc3339("2000-02-29T12:34:56.5Z"), Some(951_827_696_500_000_000));
        for bad in ["2026-13-01T00:00:00Z", "2026-11-30 05:00:00Z", "2026-11-30T05:00:00", "2026-11-30T05:00:00.Z", "x"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        for t in [0, 1, NOW, NOW + 123_456_789, 253_402_300_799_999_999_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "{}", format_rfc3339(t));
        }
        assert_eq!(format_rfc3339(NOW + 500_000_000), "2027-01-15T08:00:00.5Z");
    }

    #[test]
    fn a_created_record_validates_and_tampering_is_caught() {
        let mut rng = crate::rng::from_seed([7; 32]);
        for ty in [KeyType::Ed25519, KeyType::Secp256k1, KeyType::Ecdsa, KeyType::Rsa] {
            let k = Keypair::generate(ty, &mut rng);
            let name = k.peer_id();
            let rec = create(&k, b"/ipfs/bafkqaddwgevxmmraojswg33smq", 3, NOW + 3_600_000_000_000, DEFAULT_TTL_NANOS);
            let r = validate(&name, &rec, NOW).unwrap_or_else(|e| panic!("{ty:?}: {e}"));
            assert_eq!((r.value.as_slice(), r.sequence, r.ttl_nanos), (&b"/ipfs/bafkqaddwgevxmmraojswg33smq"[..], 3, DEFAULT_TTL_NANOS));
            assert_eq!(validate(&name, &rec, NOW + 3_600_000_000_000), Err(IpnsError::Expired(r.validity.clone())));
            let other = Keypair::generate_ed25519(&mut rng).peer_id();
            assert!(validate(&other, &rec, NOW).is_err(), "{ty:?}: another name");
            // A flipped byte anywhere fails (or still decodes into a record that fails its checks).
            for i in 0..rec.len() {
                let mut bad = rec.clone();
                bad[i] ^= 0x01;
                if let Ok(r2) = validate(&name, &bad, NOW) {
                    // Only the unsigned legacy signatureV1 may change without failing.
                    assert_eq!(r2, r, "{ty:?}: byte {i}");
                }
            }
        }
    }

    #[test]
    fn v1_copies_must_match_the_signed_data_and_v2_is_required() {
        let k = Keypair::generate_ed25519(&mut crate::rng::from_seed([8; 32]));
        let name = k.peer_id();
        let rec = create(&k, b"/ipfs/a", 1, NOW + 1_000_000_000_000, DEFAULT_TTL_NANOS);
        let mut e: pb::IpnsEntry = crate::pb::read_message(&rec, &[], "x").unwrap();
        e.value = Some(b"/ipfs/b".to_vec());
        assert_eq!(validate(&name, &crate::pb::write_message(&e), NOW), Err(IpnsError::Mismatch("value")));
        e.value = None;
        e.signatureV1 = None;
        e.sequence = Some(99);
        // Without V1 value or signature the V1 copies are not compared (the spec's step 7).
        assert!(validate(&name, &crate::pb::write_message(&e), NOW).is_ok());
        e.signatureV2 = None;
        assert_eq!(validate(&name, &crate::pb::write_message(&e), NOW), Err(IpnsError::NotV2));
        assert_eq!(validate(&name, &vec![0; MAX_RECORD_LEN + 1], NOW), Err(IpnsError::TooLarge));
    }

    #[test]
    fn cbor_is_dag_cbor_ordered_and_unknown_fields_are_skipped() {
        let d = cbor_data(b"/ipfs/x", b"2030-01-01T00:00:00Z", 300, DEFAULT_TTL_NANOS);
        // map(5), "TTL" first (shortest key), then "Value", "Sequence", "Validity", "ValidityType".
        assert_eq!(&d[..5], &[0xa5, 0x63, b'T', b'T', b'L']);
        let order: Vec<usize> = ["Value", "Sequence", "Validity", "ValidityType"]
            .iter()
            .map(|k| d.windows(k.len() + 1).position(|w| w[0] == 0x60 + k.len() as u8 && &w[1..] == k.as_bytes()).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        // An extension field of any shape is skipped.
        let mut ext = vec![0xa6];
        ext.extend_from_slice(&d[1..]);
        ext.extend_from_slice(&[0x64, b'_', b'e', b'x', b't', 0x82, 0xa1, 0x61, b'a', 0xf5, 0xc1, 0x1a, 0, 0, 0, 1]);
        let f = read_cbor_data(&ext).unwrap();
        assert_eq!((f.sequence, f.value.as_slice()), (300, &b"/ipfs/x"[..]));
        // Lies about lengths and nesting are refused, not followed.
        assert!(read_cbor_data(&[0xa1, 0x61, b'x', 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut deep = vec![0xa1, 0x61, b'x'];
        deep.extend(std::iter::repeat_n(0x81, 100));
        deep.push(0x00);
        assert!(read_cbor_data(&deep).is_err());
        assert!(read_cbor_data(&[0xbf]).is_err(), "indefinite map");
    }

    #[test]
    fn the_better_record_has_the_higher_sequence_then_the_later_expiry() {
        let r = |sequence, eol| IpnsRecord { value: vec![], sequence, ttl_nanos: 0, validity: String::new(), eol_unix_nanos: eol };
        assert_eq!(compare(&r(2, 1), &r(1, 9)), Ordering::Greater);
        assert_eq!(compare(&r(2, 1), &r(2, 9)), Ordering::Less);
    }
}
