//! Regression tests, one per bug class of other libp2p stacks' security advisories: each feeds the
//! attack's input to the hyphae machine that would have to absorb it and asserts the bound holds.
//! (Streams never negotiated, rust-libp2p CVE-2022-23486, are in `conn`'s unit tests, which can reach
//! the raw muxer under the encryption; connection floods, the rcmgr issue's own, in
//! `hyphae-cli/tests/flood_netns.rs`.)

use hyphae_core::identify::{self, wire, Info};
use hyphae_core::identity::{PublicKey, MAX_RSA_BITS};
use hyphae_core::stream::Role;
use hyphae_core::yamux::{self, Yamux};
use hyphae_core::{varint, DecodeError};

/// A yamux frame header: version 0, type, flags, stream id, length (all big-endian).
fn frame(out: &mut Vec<u8>, ty: u8, flags: u16, id: u32, len: u32) {
    out.push(0);
    out.push(ty);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}
const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const SYN: u16 = 1;

/// go-libp2p CVE-2022-23492: a peer opened streams without limit until the node ran out of memory.
/// 10,000 stream opens: at most 160 live (the first windows' memory cap), the rest refused with RST,
/// our output bounded.
#[test]
fn go_cve_2022_23492_unlimited_streams_are_refused_beyond_the_limit() {
    let limits = yamux::Limits::default();
    let mut y = Yamux::new(Role::Listener, limits.clone());
    let mut flood = Vec::new();
    for i in 0..10_000u32 {
        frame(&mut flood, WINDOW_UPDATE, SYN, 2 * i + 1, 0);
    }
    y.handle_input(&mut flood).unwrap();
    // Bounded twice: by the stream count and by the first windows' memory (32 streams at 1 MiB, then
    // 256 KiB each, within 64 MiB per connection), whichever comes first.
    let cap = limits.max_stream_memory;
    let big = (cap / 2) / u64::from(limits.stream_window);
    let live = (big + (cap - big * u64::from(limits.stream_window)) / (256 * 1024)).min(limits.max_streams as u64);
    assert_eq!(y.num_streams() as u64, live);
    assert_eq!(live, 160);
    assert_eq!(y.stats().streams_refused, 10_000 - live);
    let mut out = 0;
    while let Some(b) = y.poll_transmit() {
        out += b.len();
    }
    assert!(out <= limits.max_out_buffer + 12 * limits.max_streams, "output {out} bytes");
}

/// rust-yamux CVE-2026-31814: window updates that overflow the send window. Two maximal updates on
/// one stream: no overflow, no panic; the stream keeps working.
#[test]
fn rust_yamux_cve_2026_31814_window_update_overflow_saturates() {
    let mut y = Yamux::new(Role::Listener, yamux::Limits::default());
    let mut f = Vec::new();
    frame(&mut f, WINDOW_UPDATE, SYN, 1, 0);
    frame(&mut f, WINDOW_UPDATE, 0, 1, u32::MAX);
    frame(&mut f, WINDOW_UPDATE, 0, 1, u32::MAX);
    y.handle_input(&mut f).unwrap();
    let id = match y.poll_event() {
        Some(yamux::Event::InboundStream(id)) => id,
        e => panic!("{e:?}"),
    };
    assert_eq!(y.write(id, b"still fine").unwrap(), 10);
}

/// rust-yamux CVE-2026-32314: an opening (SYN) data frame larger than the window a new stream has:
/// a protocol error before any of it is buffered, not a 16 MiB allocation.
#[test]
fn rust_yamux_cve_2026_32314_oversized_opening_frame_is_a_protocol_error() {
    let mut y = Yamux::new(Role::Listener, yamux::Limits::default());
    let mut f = Vec::new();
    frame(&mut f, DATA, SYN, 1, 16 << 20);
    f.extend(std::iter::repeat_n(0u8, 64 * 1024));
    assert!(y.handle_input(&mut f).is_err());
    assert!(y.is_go_away() || y.has_pending_output());
}

/// go-libp2p CVE-2023-39533: huge RSA keys made signature checks take unbounded CPU. A 12,288-bit key
/// (small enough to pass the encoded-size cap) is refused when decoded, before any signature check.
#[test]
fn go_cve_2023_39533_oversized_rsa_keys_are_refused() {
    let e = PublicKey::decode_protobuf(&rsa_key_pb(MAX_RSA_BITS + 4096)).unwrap_err();
    assert_eq!(e, DecodeError::Invalid("rsa key size out of bounds"));
    let e = PublicKey::decode_protobuf(&rsa_key_pb(1024)).unwrap_err();
    assert_eq!(e, DecodeError::Invalid("rsa key size out of bounds"));
    // go accepts up to 8192 bits, and so do we (the rsa crate alone stops at 4096).
    PublicKey::decode_protobuf(&rsa_key_pb(MAX_RSA_BITS)).unwrap();
}

/// libp2p's PublicKey protobuf (Type = RSA, Data = PKIX DER) of a `bits`-bit modulus (not a real key:
/// decoding never factors it).
fn rsa_key_pb(bits: usize) -> Vec<u8> {
    use rsa::pkcs8::EncodePublicKey;
    let n = (rsa::BigUint::from(1u8) << (bits - 1)) + rsa::BigUint::from(1u8);
    let k = rsa::RsaPublicKey::new_with_max_size(n, rsa::BigUint::from(65_537u32), 16_384).unwrap();
    let der = k.to_public_key_der().unwrap();
    let mut pb = vec![0x08, 0x00, 0x12];
    varint::encode(der.as_bytes().len() as u64, &mut pb);
    pb.extend_from_slice(der.as_bytes());
    pb
}

fn identify_frame(info: &Info) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(info, &mut out);
    out
}

/// go-libp2p CVE-2023-40583: signed peer records were kept without bound. A 100 KiB record does not
/// get past identify's message limit (8 KiB).
#[test]
fn go_cve_2023_40583_signed_peer_record_flood_is_refused() {
    let info = Info { signed_peer_record: Some(vec![7; 100 * 1024]), ..Info::default() };
    let buf = identify_frame(&info);
    let e = wire::decode(&buf, &wire::Limits::default()).unwrap_err();
    assert!(matches!(e, DecodeError::TooLarge { limit, .. } if limit == identify::MAX_MESSAGE_LEN), "{e:?}");
}

/// go-libp2p v0.49 capped the protocols identify accepts: 10,000 short protocol ids in one message
/// (under the byte limit when tightly packed) are refused at the protocol cap.
#[test]
fn identify_protocol_list_flood_is_capped() {
    let info = Info { protocols: (0..10_000).map(|i| format!("/{}", i % 10)).collect(), ..Info::default() };
    let buf = identify_frame(&info);
    let limits = wire::Limits { max_message_len: 1 << 20, ..wire::Limits::default() };
    let e = wire::decode(&buf, &limits).unwrap_err();
    assert!(matches!(e, DecodeError::TooLarge { len: 10_000, limit } if limit == identify::MAX_PROTOCOLS), "{e:?}");
}
