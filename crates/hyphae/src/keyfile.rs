//! Identity key files: the libp2p private-key protobuf, as go-libp2p (`p2pd -id`) writes them.

use hyphae_core::{KeyType, Keypair};
use std::path::{Path, PathBuf};

/// `$XDG_DATA_HOME/hyphae/identity.key`, else `~/.local/share/hyphae/identity.key`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hyphae").join("identity.key")
}

pub fn load(path: &Path) -> Result<Keypair, String> {
    let b = std::fs::read(path).map_err(|e| format!("reading key {}: {e}", path.display()))?;
    Keypair::decode_protobuf(&b).map_err(|e| format!("key file {}: {e}", path.display()))
}

pub fn save(path: &Path, k: &Keypair) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, k.encode_protobuf()).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Loads the key at `path`, generating and saving one of `ty` if there is none.
pub fn load_or_generate(path: &Path, ty: KeyType) -> Result<Keypair, String> {
    if path.exists() {
        return load(path);
    }
    let k = Keypair::generate(ty, &mut rand_core::OsRng);
    save(path, &k)?;
    Ok(k)
}
