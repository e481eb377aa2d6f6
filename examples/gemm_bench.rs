//! SGEMM throughput of `nnc::kernels::gemm` at square sizes, 1 and 2 threads, then ResNet-18
//! convolutions (im2col + GEMM) next to the bare GEMM of the same sizes.
//!
//! Run with `cargo run --release --example gemm_bench`. Each figure is the best of several
//! rounds (the machine is shared and noisy), rounds alternating between configurations. GFLOP/s
//! are compared with two single-core peaks: the 90 GFLOP/s that ../shared/design.md measured on
//! an AMD EPYC Zen 3, and the 256-bit FMA peak this program measures on the machine it runs on
//! (machines differ: a session's machine was an Intel Xeon with a 126 GFLOP/s AVX2 peak).
//! Optional arguments: sizes, e.g. `cargo run --release --example gemm_bench -- 512 1024`
//! (the convolutions run only without arguments).

use std::time::{Duration, Instant};

use nnc::kernels::conv::{conv2d_with_scratch, Conv2dGeometry};
use nnc::kernels::gemm::{sgemm_threaded, MatrixMut, MatrixRef};

/// The single-core FP32 peak with 256-bit FMAs that design.md measured on Zen 3, GFLOP/s.
const MEASURED_PEAK_GFLOPS: f64 = 90.0;
const ROUNDS: usize = 9;
/// Each round repeats the GEMM for at least this long, so timer resolution does not matter.
const ROUND_TIME: Duration = Duration::from_millis(40);
const THREAD_COUNTS: [usize; 2] = [1, 2];

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|argument| argument.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![64, 256, 512, 1024]
    } else {
        sizes
    };
    let machine_peak = measure_fma_peak_gflops();
    println!("nnc sgemm, C = A x B, square n x n x n, best of {ROUNDS} rounds");
    match machine_peak {
        Some(peak) => {
            println!("this machine's 256-bit FMA peak, measured now on one core: {peak:.1} GFLOP/s")
        }
        None => println!("this machine has no AVX2+FMA: no peak measured"),
    }
    println!(
        "{:>6} {:>8} {:>10} {:>10} {:>9} {:>13}",
        "n", "threads", "time (us)", "GFLOP/s", "of 90", "of measured"
    );
    for &size in &sizes {
        let a = pseudo_random_matrix(size * size, 1);
        let b = pseudo_random_matrix(size * size, 2);
        let mut c = vec![0.0f32; size * size];
        let mut best = [Duration::MAX; THREAD_COUNTS.len()];
        for _round in 0..ROUNDS {
            for (slot, &threads) in THREAD_COUNTS.iter().enumerate() {
                best[slot] = best[slot].min(time_one_round(size, threads, &a, &b, &mut c));
            }
        }
        for (slot, &threads) in THREAD_COUNTS.iter().enumerate() {
            let gflops = 2.0 * (size as f64).powi(3) / best[slot].as_secs_f64() / 1e9;
            let of_measured = machine_peak.map_or("-".to_string(), |peak| {
                format!("{:.0}%", 100.0 * gflops / peak)
            });
            println!(
                "{size:>6} {threads:>8} {:>10.1} {gflops:>10.1} {:>8.0}% {of_measured:>13}",
                best[slot].as_secs_f64() * 1e6,
                100.0 * gflops / MEASURED_PEAK_GFLOPS
            );
        }
    }
    println!(
        "percentages are of one core's peak: {MEASURED_PEAK_GFLOPS} GFLOP/s (Zen 3, design.md) and the one measured above"
    );
    if std::env::args().len() == 1 {
        bench_convolutions();
    }
}

/// ResNet-18 convolutions at 3x32x32, batch 32: conv2d (im2col + GEMM) against the bare GEMM of
/// the same sizes, to show what the im2col copy costs.
fn bench_convolutions() {
    // (name, in channels, out channels, input size, kernel, stride, padding)
    let layers = [
        ("stem 7x7/2", 3, 64, 32, 7, 2, 3),
        ("layer1 3x3", 64, 64, 8, 3, 1, 1),
        ("layer2 3x3", 128, 128, 4, 3, 1, 1),
        ("layer3 1x1/2", 128, 256, 4, 1, 2, 0),
        ("layer4 3x3", 512, 512, 1, 3, 1, 1),
    ];
    println!();
    println!(
        "conv2d, batch 32, GFLOP/s (best of {ROUNDS}); gemm = the bare GEMM of the same m, n, k"
    );
    println!(
        "{:>14} {:>5} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "layer", "m", "k", "n", "conv 1t", "gemm 1t", "conv 2t", "gemm 2t"
    );
    for (name, in_channels, out_channels, size, kernel, stride, padding) in layers {
        let geometry = Conv2dGeometry {
            batch: 32,
            in_channels,
            out_channels,
            in_size: [size, size],
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [1, 1],
            groups: 1,
        };
        let [input_len, weight_len, output_len] = geometry.tensor_lens().expect("valid layer");
        let (input, weight) = (
            pseudo_random_matrix(input_len, 3),
            pseudo_random_matrix(weight_len, 4),
        );
        let mut output = vec![0.0; output_len];
        let mut scratch = vec![0.0; geometry.scratch_len().expect("valid layer")];
        let (m, k, n) = (
            out_channels,
            in_channels * kernel * kernel,
            output_len / out_channels,
        );
        let (a, b) = (
            pseudo_random_matrix(m * k, 5),
            pseudo_random_matrix(k * n, 6),
        );
        let mut c = vec![0.0; m * n];
        let mut best = [Duration::MAX; 4];
        for _round in 0..ROUNDS {
            for (slot, &threads) in THREAD_COUNTS.iter().enumerate() {
                best[2 * slot] = best[2 * slot].min(time_repeated(|| {
                    conv2d_with_scratch(
                        &geometry,
                        &input,
                        &weight,
                        None,
                        &mut output,
                        &mut scratch,
                        threads,
                    )
                    .expect("valid layer");
                }));
                best[2 * slot + 1] = best[2 * slot + 1].min(time_repeated(|| {
                    let (a, b, c) = (
                        MatrixRef::row_major(&a, k),
                        MatrixRef::row_major(&b, n),
                        MatrixMut::row_major(&mut c, n),
                    );
                    sgemm_threaded(threads, m, n, k, a, b, c, false).expect("consistent sizes");
                }));
            }
        }
        let gflops = best.map(|time| 2.0 * (m * n * k) as f64 / time.as_secs_f64() / 1e9);
        println!(
            "{name:>14} {m:>5} {k:>5} {n:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            gflops[0], gflops[1], gflops[2], gflops[3]
        );
    }
}

/// The time of one call of `run`, averaged over a round of repetitions.
fn time_repeated(mut run: impl FnMut()) -> Duration {
    run();
    let start = Instant::now();
    let mut repetitions = 0u32;
    while start.elapsed() < ROUND_TIME {
        run();
        repetitions += 1;
    }
    start.elapsed() / repetitions
}

/// The time of one square GEMM, averaged over a round of repetitions.
fn time_one_round(size: usize, threads: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> Duration {
    time_repeated(|| {
        let (a, b, c) = (
            MatrixRef::row_major(a, size),
            MatrixRef::row_major(b, size),
            MatrixMut::row_major(c, size),
        );
        sgemm_threaded(threads, size, size, size, a, b, c, false)
            .expect("benchmark shapes are consistent");
    })
}

/// One core's FP32 peak with 256-bit FMAs: twelve independent FMA chains (enough to cover the
/// FMA latency on two pipes), best of a few runs. `None` without AVX2+FMA.
fn measure_fma_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        const ITERATIONS: u64 = 20_000_000;
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                // SAFETY: the CPU has AVX2 and FMA.
                std::hint::black_box(unsafe { fma_chains(std::hint::black_box(ITERATIONS)) });
                start.elapsed()
            })
            .min()?;
        return Some((ITERATIONS * 12 * 16) as f64 / best.as_secs_f64() / 1e9);
    }
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut chains = [_mm256_set1_ps(0.0); 12];
    let scale = _mm256_set1_ps(std::hint::black_box(0.999_9));
    let offset = _mm256_set1_ps(std::hint::black_box(0.000_1));
    for _ in 0..iterations {
        for chain in chains.iter_mut() {
            *chain = _mm256_fmadd_ps(*chain, scale, offset);
        }
    }
    let mut lanes = [0.0f32; 8];
    let sum = chains
        .iter()
        .fold(_mm256_set1_ps(0.0), |sum, &chain| _mm256_add_ps(sum, chain));
    // SAFETY: `lanes` holds eight floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// Values in [-1, 1) from a fixed linear congruential sequence.
fn pseudo_random_matrix(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
