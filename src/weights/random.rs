//! Seeded random numbers for initialization, bit-identical on every machine.
//!
//! Why this construction:
//! - The bits come from ChaCha8 (`rand_chacha::ChaCha8Rng`). ChaCha is a specified stream cipher,
//!   so its output for a key, stream and position is fixed by the algorithm, not by the crate's
//!   version or the CPU (rand_chacha checks it against the reference test vectors). rand's own
//!   `StdRng` makes no such promise, and rand's distributions may change their algorithms between
//!   versions, so the bits-to-number conversions below are ours and fixed.
//! - The key is the seed (little-endian in the first 8 of 32 key bytes) and the ChaCha stream
//!   number is the FNV-1a hash of the tensor's state_dict name. A tensor's values therefore depend
//!   only on the seed and its own name and size: adding a layer to a spec does not reshuffle the
//!   initial values of every other layer, and tensors can be filled in any order.
//! - Uniform values use 53 random bits and one rounding; normal values use Box-Muller with the
//!   `libm` crate's `log`, `cos` and `sin`, a pure-Rust port of musl's, instead of the platform
//!   C library, whose transcendental functions may differ in the last bit between systems. Rust
//!   does not contract `a * b + c` into FMAs, so the remaining arithmetic is plain IEEE 754.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random source of one tensor.
pub(crate) struct TensorRng {
    chacha: ChaCha8Rng,
    /// Box-Muller makes normal values in pairs; the second waits here.
    spare_normal: Option<f64>,
}

impl TensorRng {
    pub(crate) fn new(seed: u64, tensor_name: &str) -> TensorRng {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let mut chacha = ChaCha8Rng::from_seed(key);
        chacha.set_stream(fnv1a_64(tensor_name.as_bytes()));
        TensorRng {
            chacha,
            spare_normal: None,
        }
    }

    /// A value of U(-bound, bound), rounded to f32 (so it may equal `±bound` after rounding).
    pub(crate) fn uniform(&mut self, bound: f64) -> f32 {
        // 2u - 1 is exact for u = k / 2^53, so the only rounding is the product's.
        ((2.0 * self.unit_interval() - 1.0) * bound) as f32
    }

    /// A value of N(0, std²), rounded to f32.
    pub(crate) fn normal(&mut self, std: f64) -> f32 {
        (self.standard_normal() * std) as f32
    }

    /// Box-Muller: for independent u1 in (0, 1] and u2 in [0, 1), `sqrt(-2 ln u1)` times
    /// `cos(2 pi u2)` and `sin(2 pi u2)` are two independent standard normal values.
    fn standard_normal(&mut self) -> f64 {
        if let Some(spare) = self.spare_normal.take() {
            return spare;
        }
        let u1 = 1.0 - self.unit_interval();
        let u2 = self.unit_interval();
        let radius = (-2.0 * libm::log(u1)).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some(radius * libm::sin(angle));
        radius * libm::cos(angle)
    }

    /// A multiple of 2^-53 in [0, 1), from the top 53 bits of the next 64-bit word.
    fn unit_interval(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.chacha.next_u64() >> 11) as f64 * SCALE
    }
}

/// 64-bit FNV-1a, a fixed and documented hash (std's `Hasher`s may change between releases).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn uniform_values_stay_within_the_bound_and_fill_it() {
        let mut rng = TensorRng::new(7, "fc.weight");
        let values: Vec<f32> = (0..100_000).map(|_| rng.uniform(0.5)).collect();
        let (min, max) = values.iter().fold((f32::MAX, f32::MIN), |(min, max), &v| {
            (min.min(v), max.max(v))
        });
        assert!(min >= -0.5 && max <= 0.5, "{min} {max}");
        assert!(min < -0.499 && max > 0.499, "{min} {max}");
    }

    #[test]
    fn streams_differ_by_name_and_seed() {
        let draw = |seed, name| -> Vec<f32> {
            let mut rng = TensorRng::new(seed, name);
            (0..8).map(|_| rng.uniform(1.0)).collect()
        };
        assert_eq!(draw(1, "a.weight"), draw(1, "a.weight"));
        assert_ne!(draw(1, "a.weight"), draw(1, "b.weight"));
        assert_ne!(draw(1, "a.weight"), draw(2, "a.weight"));
    }
}
