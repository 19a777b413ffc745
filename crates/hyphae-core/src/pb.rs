//! A minimal protobuf (proto2/proto3 wire format) reader and writer. libp2p's messages here are small
//! and few (keys, noise payload, identify); a hand-written codec keeps protoc out of the build and lets
//! every decoder validate into our own types.

use crate::{varint, DecodeError};

pub fn put_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    varint::encode(u64::from(field) << 3, out);
    varint::encode(v, out);
}

pub fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint::encode((u64::from(field) << 3) | 2, out);
    varint::encode(b.len() as u64, out);
    out.extend_from_slice(b);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed64(u64),
    Fixed32(u32),
}

/// Iterates the fields of a message. Unknown fields are returned too (callers skip them).
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(u32, Value<'a>), DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let r = (|| {
            let (key, n) = varint::decode_exact(self.buf)?;
            self.buf = &self.buf[n..];
            let field = u32::try_from(key >> 3).map_err(|_| DecodeError::Invalid("field number"))?;
            if field == 0 {
                return Err(DecodeError::Invalid("field number 0"));
            }
            let v = match key & 7 {
                0 => {
                    let (v, n) = varint::decode_exact(self.buf)?;
                    self.buf = &self.buf[n..];
                    Value::Varint(v)
                }
                1 => {
                    let b: [u8; 8] = self.buf.get(..8).ok_or(DecodeError::Truncated)?.try_into().map_err(|_| DecodeError::Truncated)?;
                    self.buf = &self.buf[8..];
                    Value::Fixed64(u64::from_le_bytes(b))
                }
                2 => {
                    let (len, n) = varint::decode_exact(self.buf)?;
                    let rest = &self.buf[n..];
                    let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
                    if rest.len() < len {
                        return Err(DecodeError::Truncated);
                    }
                    self.buf = &rest[len..];
                    Value::Bytes(&rest[..len])
                }
                5 => {
                    let b: [u8; 4] = self.buf.get(..4).ok_or(DecodeError::Truncated)?.try_into().map_err(|_| DecodeError::Truncated)?;
                    self.buf = &self.buf[4..];
                    Value::Fixed32(u32::from_le_bytes(b))
                }
                _ => return Err(DecodeError::Invalid("wire type")),
            };
            Ok((field, v))
        })();
        if r.is_err() {
            self.buf = &[];
        }
        Some(r)
    }
}

/// Where a message embeds messages: a field number and that message's own embedded fields.
pub struct Nest(pub u32, pub &'static [Nest]);

/// Checks that `buf` is a complete sequence of well-formed fields, and so is the content of every
/// length-delimited field `nested` names, recursively (the embedded messages of the caller's schema).
///
/// Run before quick-protobuf's generated readers on any message with embedded messages: quick-protobuf
/// 0.8.1 bounds an embedded message by its declared length but lets a field inside it run past that
/// bound, after which it computes `end - start` with `start > end` (an overflow: a panic in debug builds,
/// found by fuzzing the kad decoder). Fields that stay inside their message keep its reader in bounds.
pub fn check_nested(buf: &[u8], nested: &[Nest]) -> Result<(), DecodeError> {
    for f in Reader::new(buf) {
        let (n, v) = f?;
        if let (Some(Nest(_, inner)), Value::Bytes(b)) = (nested.iter().find(|Nest(m, _)| *m == n), v) {
            check_nested(b, inner)?;
        }
    }
    Ok(())
}

/// Reads one varint-length-prefixed message of generated code (pb-rs) from the front of `buf`: the
/// length checked against `max_len` before anything else, embedded messages bounded (`nested`, see
/// [`check_nested`]), then the generated reader. `Ok(None)`: more bytes needed. `what` names the
/// message in the error.
pub fn read_frame<'a, M: quick_protobuf::MessageRead<'a>>(
    buf: &'a [u8],
    max_len: usize,
    nested: &[Nest],
    what: &'static str,
) -> Result<Option<(M, usize)>, DecodeError> {
    let Some((r, used)) = varint::decode_frame(buf, max_len)? else { return Ok(None) };
    let body = &buf[r];
    if !nested.is_empty() {
        check_nested(body, nested).map_err(|_| DecodeError::Invalid(what))?;
    }
    let m = M::from_reader(&mut quick_protobuf::BytesReader::from_bytes(body), body).map_err(|_| DecodeError::Invalid(what))?;
    Ok(Some((m, used)))
}

/// Reads one whole message of generated code (pb-rs), unframed (the caller bounded `buf`), its embedded
/// messages (`nested`) checked first as in [`read_frame`].
pub fn read_message<'a, M: quick_protobuf::MessageRead<'a>>(buf: &'a [u8], nested: &[Nest], what: &'static str) -> Result<M, DecodeError> {
    check_nested(buf, nested).map_err(|_| DecodeError::Invalid(what))?;
    M::from_reader(&mut quick_protobuf::BytesReader::from_bytes(buf), buf).map_err(|_| DecodeError::Invalid(what))
}

/// Writes a message of generated code (pb-rs), unframed.
pub fn write_message<M: quick_protobuf::MessageWrite>(m: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.get_size());
    m.write_message(&mut quick_protobuf::Writer::new(&mut out)).expect("invariant: writing to a Vec cannot fail");
    out
}

/// Writes a message of generated code (pb-rs) with its varint length prefix.
pub fn write_frame<M: quick_protobuf::MessageWrite>(m: &M, out: &mut Vec<u8>) {
    varint::encode(m.get_size() as u64, out);
    m.write_message(&mut quick_protobuf::Writer::new(&mut *out)).expect("invariant: writing to a Vec cannot fail");
}

impl<'a> Value<'a> {
    pub fn bytes(self) -> Result<&'a [u8], DecodeError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(DecodeError::Invalid("expected length-delimited field")),
        }
    }
    pub fn string(self) -> Result<&'a str, DecodeError> {
        core::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::Invalid("string is not utf-8"))
    }
    pub fn varint(self) -> Result<u64, DecodeError> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => Err(DecodeError::Invalid("expected varint field")),
        }
    }
}
