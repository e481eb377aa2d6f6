//! `RandomUniform` in f32, vectorized: the same counter-based numbers as the interpreter's
//! [`crate::interpret::uniform`] (SplitMix64's output for the counter, its top 24 bits times
//! 2^-24), bit for bit, but eight 64-bit lanes at a time. A training step of the transformer
//! layer draws four dropout masks (half a million numbers at batch 8); one element at a time
//! through the interpreter's f64 function they took a tenth of the step.
//!
//! A 24-bit integer times 2^-24 is exact in f32 and in f64, so computing it in f32 directly
//! gives the interpreter's value rounded to f32, which is the value itself.

use crate::interpret::{seed_for_run, uniform};

/// SplitMix64's increment; must equal the interpreter's (a test compares every element).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const LANES: usize = 8;

/// Fills `output` with element `index` of the uniform stream of `seed` in the run `run_key`.
pub(super) fn fill_uniform(seed: u64, run_key: u64, output: &mut [f32]) {
    let seed = seed_for_run(seed, run_key);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512dq") {
        // SAFETY: the CPU has AVX-512F and DQ (64-bit lane multiplies).
        unsafe { fill_avx512(seed, output) };
        return;
    }
    fill_lanes(seed, output);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn fill_avx512(seed: u64, output: &mut [f32]) {
    fill_lanes(seed, output);
}

/// Eight counters per step, written as lanes so that the compiler vectorizes the multiplies;
/// the tail goes through the interpreter's own function.
#[inline(always)]
fn fill_lanes(seed: u64, output: &mut [f32]) {
    let chunks = output.chunks_exact_mut(LANES);
    let tail_start = chunks.len() * LANES;
    for (chunk_index, chunk) in chunks.enumerate() {
        let first = (chunk_index * LANES) as u64;
        let mut bits = [0u64; LANES];
        for (lane, bits) in bits.iter_mut().enumerate() {
            let counter = first + lane as u64;
            *bits = finalize(seed.wrapping_add(counter.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)));
        }
        for (value, bits) in chunk.iter_mut().zip(bits) {
            *value = (bits >> 40) as f32 * (1.0 / (1u32 << 24) as f32);
        }
    }
    for (index, value) in output.iter_mut().enumerate().skip(tail_start) {
        *value = uniform(seed, index as u64) as f32;
    }
}

/// SplitMix64's output function (Stafford's mix 13), as in the interpreter.
#[inline(always)]
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::fill_uniform;
    use crate::interpret::{seed_for_run, uniform};

    #[test]
    fn every_element_is_the_interpreters() {
        for (seed, run_key, length) in [(7, 0, 1003), (0xDEAD_BEEF, 12, 64), (1, u64::MAX, 5)] {
            let mut output = vec![0.0f32; length];
            fill_uniform(seed, run_key, &mut output);
            let stream = seed_for_run(seed, run_key);
            for (index, value) in output.iter().enumerate() {
                let expected = uniform(stream, index as u64);
                assert_eq!(
                    f64::from(*value),
                    expected,
                    "element {index} of seed {seed}"
                );
            }
        }
    }
}
