//! Deterministic randomness. Every node owns one seeded ChaCha20 RNG; machines get child RNGs derived
//! from it, so a simulation replays from one seed. The driver picks the root seed (from the OS in
//! production, from `HYPHAE_SEED` in the simulator).

use rand_chacha::ChaCha20Rng;
pub use rand_core::{CryptoRng, RngCore, SeedableRng};

pub type Rng = ChaCha20Rng;

/// A root RNG from a 32-byte seed.
pub fn from_seed(seed: [u8; 32]) -> Rng {
    ChaCha20Rng::from_seed(seed)
}

/// A child RNG derived from `parent` (draws 32 bytes of it).
pub fn child(parent: &mut Rng) -> Rng {
    let mut seed = [0u8; 32];
    parent.fill_bytes(&mut seed);
    ChaCha20Rng::from_seed(seed)
}
