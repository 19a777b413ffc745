//! Unsigned LEB128 varints (multiformats unsigned-varint: at most 9 bytes, minimal encoding) and
//! varint-length-prefixed framing.

use crate::DecodeError;

/// Appends `v` as an unsigned varint.
pub fn encode(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn encoded_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Decodes a varint from the front of `buf`: `Ok(None)` if more bytes are needed, else the value and the
/// number of bytes it took. Rejects non-minimal encodings and values above 2^63 (multiformats spec: 9 bytes).
pub fn decode(buf: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate() {
        if i >= 9 {
            return Err(DecodeError::Invalid("varint longer than 9 bytes"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(DecodeError::Invalid("non-minimal varint"));
            }
            return Ok(Some((v, i + 1)));
        }
    }
    Ok(None)
}

/// Decodes a complete varint (for buffers that must hold it all).
pub fn decode_exact(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    decode(buf)?.ok_or(DecodeError::Truncated)
}

/// Decodes one varint-length-prefixed frame from the front of `buf`: `Ok(None)` = need more bytes,
/// else (payload range, total consumed). The length is checked against `limit` before anything else.
pub fn decode_frame(buf: &[u8], limit: usize) -> Result<Option<(core::ops::Range<usize>, usize)>, DecodeError> {
    let Some((len, n)) = decode(buf)? else { return Ok(None) };
    if len > limit as u64 {
        return Err(DecodeError::TooLarge { len: usize::try_from(len).unwrap_or(usize::MAX), limit });
    }
    let len = len as usize;
    if buf.len() - n < len {
        return Ok(None);
    }
    Ok(Some((n..n + len, n + len)))
}

/// Appends `payload` with a varint length prefix.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    encode(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrip_boundaries() {
        for v in [0u64, 1, 127, 128, 300, 16383, 16384, u32::MAX as u64, (1 << 63) - 1] {
            let mut b = Vec::new();
            encode(v, &mut b);
            assert_eq!(b.len(), encoded_len(v));
            assert_eq!(decode(&b).unwrap(), Some((v, b.len())));
            assert_eq!(decode(&b[..b.len() - 1]).unwrap(), None);
        }
    }

    #[test]
    fn varint_nonminimal_rejected() {
        assert!(decode(&[0x80, 0x00]).is_err());
        assert!(decode(&[0xff; 10]).is_err());
    }

    #[test]
    fn frame_over_limit_rejected_before_body() {
        let mut b = Vec::new();
        encode(1 << 30, &mut b);
        assert_eq!(decode_frame(&b, 1024), Err(DecodeError::TooLarge { len: 1 << 30, limit: 1024 }));
    }
}
