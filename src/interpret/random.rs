//! Counter-based random numbers: every element of a random op is a pure function of the op's
//! seed, the run key and the element's index, so any element can be computed alone, by any
//! thread, in f64 here or in f32 by the runtime, and a run can be repeated exactly.
//!
//! The run key selects one stream per run (a training loop passes the step number). It enters
//! through [`seed_for_run`], which leaves the seed unchanged for key 0: inference runs with key
//! 0 and draws the same numbers as before run keys existed.

use crate::tensor::Tensor;

/// The golden-ratio increment of SplitMix64.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The seed a random op uses in the run with `run_key`: `seed ^ mix(run_key)`, where `mix` is
/// SplitMix64's finalizer, a bijection with `mix(0) = 0`. Different keys give unrelated
/// streams (the finalizer spreads consecutive step numbers over all 64 bits), and key 0 is the
/// op's own seed.
pub fn seed_for_run(seed: u64, run_key: u64) -> u64 {
    seed ^ finalize(run_key)
}

/// SplitMix64's output function (Stafford's mix 13).
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64 random bits number `counter` of the stream `seed`: SplitMix64's output for the
/// state `seed + (counter + 1) * GOLDEN_GAMMA` (wrapping).
fn random_bits(seed: u64, counter: u64) -> u64 {
    finalize(seed.wrapping_add(counter.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// Element `index` of the standard normal noise with `seed`: the Box-Muller transform of two
/// uniforms `u1, u2` in `[0, 1)`, `sqrt(-2 ln(1 - u1)) * cos(2 pi u2)`, where uniform number `k`
/// is the top 53 bits of [`random_bits`] for counter `k`, with `k = 2 index` and `2 index + 1`.
/// (The seed is already [`seed_for_run`]'s.)
pub fn standard_normal(seed: u64, index: u64) -> f64 {
    let uniform =
        |counter: u64| (random_bits(seed, counter) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let (first, second) = (uniform(2 * index), uniform(2 * index + 1));
    (-2.0 * (1.0 - first).ln()).sqrt() * (std::f64::consts::TAU * second).cos()
}

/// Element `index` of the uniform noise in `[0, 1)` with `seed`: the top 24 bits of
/// [`random_bits`] for counter `index`, times `2^-24`. Twenty-four bits make every value exact
/// in f32 (PyTorch's float `rand` has the same resolution), so the runtime's f32 and this f64
/// agree bit for bit and a dropout mask `u >= p` is the same in both.
pub fn uniform(seed: u64, index: u64) -> f64 {
    (random_bits(seed, index) >> 40) as f64 * (1.0 / (1u64 << 24) as f64)
}

pub(super) fn random_normal(seed: u64, run_key: u64, shape: &[usize]) -> Tensor<f64> {
    let seed = seed_for_run(seed, run_key);
    fill(shape, |index| standard_normal(seed, index))
}

pub(super) fn random_uniform(seed: u64, run_key: u64, shape: &[usize]) -> Tensor<f64> {
    let seed = seed_for_run(seed, run_key);
    fill(shape, |index| uniform(seed, index))
}

fn fill(shape: &[usize], element: impl Fn(u64) -> f64) -> Tensor<f64> {
    let count: usize = shape.iter().product();
    Tensor {
        shape: shape.to_vec(),
        data: (0..count as u64).map(element).collect(),
    }
}
