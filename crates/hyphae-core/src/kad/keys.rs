//! DHT keys as users write them: CIDs (provider keys are the CID's multihash, as go-libp2p-kad-dht
//! builds them) and record keys (`/pk/<peer id>`, `/ipns/<peer id>`: the namespace plus the peer id's
//! multihash bytes; other namespaces as UTF-8 text).

use crate::identity::PeerId;
use crate::varint;

/// Checks that `b` is exactly one multihash (code, length, digest).
fn multihash(b: &[u8]) -> Result<(), String> {
    let (_code, n) = varint::decode(b).map_err(|e| e.to_string())?.ok_or("truncated multihash")?;
    let (len, m) = varint::decode(&b[n..]).map_err(|e| e.to_string())?.ok_or("truncated multihash")?;
    if b.len() != n + m + len as usize {
        return Err(format!("multihash digest is {} bytes, its header says {len}", b.len() - n - m));
    }
    Ok(())
}

/// The provider key of a CID in text: CIDv0 (`Qm…`, base58btc) or CIDv1 in base32 (`b…`).
pub fn provider_key(cid: &str) -> Result<Vec<u8>, String> {
    let mh = if cid.starts_with("Qm") && cid.len() == 46 {
        bs58::decode(cid).into_vec().map_err(|e| format!("CIDv0 {cid}: {e}"))?
    } else if let Some(b32) = cid.strip_prefix('b') {
        let raw = data_encoding::BASE32_NOPAD.decode(b32.to_ascii_uppercase().as_bytes()).map_err(|e| format!("CID {cid}: {e}"))?;
        let (version, n) = varint::decode(&raw).map_err(|e| e.to_string())?.ok_or("truncated CID")?;
        if version != 1 {
            return Err(format!("CID {cid}: version {version}, expected 1"));
        }
        let (_codec, m) = varint::decode(&raw[n..]).map_err(|e| e.to_string())?.ok_or("truncated CID")?;
        raw[n + m..].to_vec()
    } else {
        return Err(format!("{cid}: not a CID (CIDv0 Qm… or CIDv1 base32 b…)"));
    };
    multihash(&mh).map_err(|e| format!("CID {cid}: {e}"))?;
    Ok(mh)
}

/// The provider key (the multihash) of a CID in its binary form: CIDv0 is the multihash itself, CIDv1
/// is `version ‖ codec ‖ multihash`.
pub fn provider_key_from_bytes(cid: &[u8]) -> Result<Vec<u8>, String> {
    if cid.len() == 34 && cid[..2] == [0x12, 0x20] {
        return Ok(cid.to_vec());
    }
    let (version, n) = varint::decode(cid).map_err(|e| e.to_string())?.ok_or("truncated CID")?;
    if version != 1 {
        return Err(format!("CID version {version}, expected 0 or 1"));
    }
    let (_codec, m) = varint::decode(&cid[n..]).map_err(|e| e.to_string())?.ok_or("truncated CID")?;
    let mh = cid[n + m..].to_vec();
    multihash(&mh).map_err(|e| format!("CID: {e}"))?;
    Ok(mh)
}

/// The CIDv1 (raw codec, base32) text of a multihash, for printing provider keys.
pub fn cid_v1_raw(multihash: &[u8]) -> String {
    let mut b = vec![1, 0x55];
    b.extend_from_slice(multihash);
    format!("b{}", data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase())
}

/// A record key in text: `/pk/<peer id>` and `/ipns/<peer id>` become the namespace plus the peer id's
/// bytes; anything else is taken as UTF-8 bytes.
pub fn record_key(text: &str) -> Result<Vec<u8>, String> {
    for ns in ["/pk/", "/ipns/"] {
        if let Some(id) = text.strip_prefix(ns) {
            let peer: PeerId = id.parse().map_err(|e| format!("{text}: {e}"))?;
            let mut k = ns.as_bytes().to_vec();
            k.extend_from_slice(peer.as_bytes());
            return Ok(k);
        }
    }
    Ok(text.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_cid_v0_and_v1_to_the_same_multihash() {
        // The CIDv0 and CIDv1 (dag-pb) forms of one hash, as `ipfs cid format -v 1 -b base32` prints them.
        let v0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n";
        let v1 = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        let a = provider_key(v0).unwrap();
        let b = provider_key(v1).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..2], &[0x12, 0x20]);
        assert!(provider_key("hello").is_err());
        assert!(provider_key("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1").is_err());
        assert_eq!(provider_key(&cid_v1_raw(&a)).unwrap(), a);
    }

    #[test]
    fn keys_record_keys_use_the_peer_id_bytes() {
        let id = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        let k = record_key(&format!("/pk/{id}")).unwrap();
        assert_eq!(&k[..4], b"/pk/");
        assert_eq!(k[4..].to_vec(), id.parse::<PeerId>().unwrap().to_bytes());
        assert_eq!(record_key("/app/x").unwrap(), b"/app/x");
        assert!(record_key("/ipns/notapeer").is_err());
    }
}
