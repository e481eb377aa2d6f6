//! The single-core floating-point peak of this CPU, measured: independent chains of fused
//! multiply-adds on registers only (no memory traffic), 512-bit and 256-bit, timed over many
//! iterations. It bounds what any f32 kernel can reach on one core, so a workload's MACs
//! divided by it is the least time that workload can take here (`BENCHMARKS.md` uses it to
//! say which ratio targets this machine can meet at all).
//!
//! `cargo run --release --example fma_peak`

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Independent accumulator chains: more than FMA latency (4 cycles) times FMA ports (2), so
/// the ports, not the dependency chains, set the pace.
const CHAINS: usize = 16;
const ITERATIONS: usize = 20_000_000;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains_512(iterations: usize) -> f32 {
    let mut accumulators = [_mm512_set1_ps(0.0); CHAINS];
    let multiplier = _mm512_set1_ps(0.999_999);
    let addend = _mm512_set1_ps(1e-7);
    for _ in 0..iterations {
        for accumulator in accumulators.iter_mut() {
            *accumulator = _mm512_fmadd_ps(*accumulator, multiplier, addend);
        }
    }
    let mut total = _mm512_set1_ps(0.0);
    for accumulator in accumulators {
        total = _mm512_add_ps(total, accumulator);
    }
    _mm512_reduce_add_ps(total)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_256(iterations: usize) -> f32 {
    let mut accumulators = [_mm256_set1_ps(0.0); CHAINS];
    let multiplier = _mm256_set1_ps(0.999_999);
    let addend = _mm256_set1_ps(1e-7);
    for _ in 0..iterations {
        for accumulator in accumulators.iter_mut() {
            *accumulator = _mm256_fmadd_ps(*accumulator, multiplier, addend);
        }
    }
    let mut lanes = [0.0f32; 8];
    let mut total = _mm256_set1_ps(0.0);
    for accumulator in accumulators {
        total = _mm256_add_ps(total, accumulator);
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), total);
    lanes.iter().sum()
}

/// The best of five timed runs, in GFLOP/s (two FLOPs per lane per multiply-add).
fn best_gflops(lanes: usize, run: impl Fn(usize) -> f32) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..5 {
        let started = Instant::now();
        let checksum = run(ITERATIONS);
        let seconds = started.elapsed().as_secs_f64();
        std::hint::black_box(checksum);
        let flops = (ITERATIONS * CHAINS * lanes * 2) as f64;
        best = best.max(flops / seconds / 1e9);
    }
    best
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            let peak = best_gflops(16, |iterations| unsafe { chains_512(iterations) });
            println!("512-bit FMA peak, one core: {peak:.1} GFLOP/s");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            let peak = best_gflops(8, |iterations| unsafe { chains_256(iterations) });
            println!("256-bit FMA peak, one core: {peak:.1} GFLOP/s");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("this example measures x86-64 FMA units only");
}
