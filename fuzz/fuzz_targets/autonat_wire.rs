#![no_main]
//! AutoNAT v1 and v2 message decoders (generated protobuf code + validation): never panic; limits hold;
//! what decodes re-encodes and decodes to the same value. The first byte picks the decoder.
use hyphae_core::autonat::wire::{self, Limits, Msg};
use hyphae_core::autonat::wire_v2;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else { return };
    match pick % 4 {
        0 => {
            let l = Limits::default();
            if let Ok(Some((m, used))) = wire::decode(data, &l) {
                assert!(used <= data.len());
                if let Msg::Dial { addrs, .. } = &m {
                    assert!(addrs.len() <= l.max_addrs);
                }
                let mut b = Vec::new();
                wire::encode(&m, &mut b);
                assert_eq!(wire::decode(&b, &l).unwrap().unwrap().0, m);
            }
        }
        1 => {
            let l = wire_v2::Limits::default();
            if let Ok(Some((m, used))) = wire_v2::decode(data, &l) {
                assert!(used <= data.len() && used <= l.max_message_len + 10);
                match &m {
                    wire_v2::Msg::DialRequest { addrs, .. } => {
                        assert!(addrs.len() <= l.max_addrs);
                        // Re-encoding renumbers the addresses from 0: compare the addresses alone.
                        let mut b = Vec::new();
                        wire_v2::encode(&m, &mut b);
                        let again = wire_v2::decode(&b, &l).unwrap().unwrap().0;
                        let (wire_v2::Msg::DialRequest { addrs: a2, .. }, wire_v2::Msg::DialRequest { addrs: a1, .. }) = (&again, &m) else {
                            panic!("a request re-decodes as a request")
                        };
                        assert!(a1.iter().map(|x| &x.1).eq(a2.iter().map(|x| &x.1)));
                    }
                    wire_v2::Msg::DialDataResponse { len } => assert!(*len <= wire_v2::MAX_DATA_CHUNK),
                    _ => {
                        let mut b = Vec::new();
                        wire_v2::encode(&m, &mut b);
                        assert_eq!(wire_v2::decode(&b, &l).unwrap().unwrap().0, m);
                    }
                }
            }
        }
        2 => {
            if let Ok(Some((_, used))) = wire_v2::decode_dial_back(data) {
                assert!(used <= data.len());
            }
        }
        _ => {
            if let Ok(Some(used)) = wire_v2::decode_dial_back_response(data) {
                assert!(used <= data.len());
            }
        }
    }
});
