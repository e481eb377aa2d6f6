//! SGEMM throughput of `nnc::kernels::gemm` at square sizes, 1 and 2 threads, on every
//! micro-kernel family the CPU supports side by side (AVX-512, AVX2+FMA; the portable one with
//! `--portable`), then ResNet-18 convolutions (im2col + GEMM) next to the bare GEMM of the same
//! sizes, on the process's kernel (`NNC_GEMM` picks it).
//!
//! Run with `cargo run --release --example gemm_bench`. Each figure is the median of several
//! rounds (the machine is shared and noisy), rounds alternating between configurations. GFLOP/s
//! are compared with the single-core FMA peaks this program measures on the machine it runs on,
//! 256-bit and (where the CPU has AVX-512) 512-bit; ../shared/design.md measured 90 GFLOP/s on an
//! AMD EPYC Zen 3 with 256-bit FMAs. Optional arguments: sizes, e.g.
//! `cargo run --release --example gemm_bench -- 512 1024` (the convolutions run only without
//! sizes).

use std::time::{Duration, Instant};

use nnc::kernels::conv::{conv2d_with_scratch, Conv2dGeometry};
use nnc::kernels::gemm::{sgemm_threaded, sgemm_with_kernel, GemmKernel, MatrixMut, MatrixRef};

const ROUNDS: usize = 9;
/// Each round repeats the GEMM for at least this long, so timer resolution does not matter.
const ROUND_TIME: Duration = Duration::from_millis(40);
const THREAD_COUNTS: [usize; 2] = [1, 2];

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = arguments
        .iter()
        .filter_map(|argument| argument.parse().ok())
        .collect();
    let only_sizes = !sizes.is_empty();
    let sizes = if sizes.is_empty() {
        vec![64, 256, 512, 1024]
    } else {
        sizes
    };
    let kernels: Vec<GemmKernel> = GemmKernel::supported()
        .into_iter()
        .filter(|&kernel| {
            kernel != GemmKernel::Portable || arguments.iter().any(|a| a == "--portable")
        })
        .collect();
    let peak_256 = measure_fma_peak_gflops(FmaWidth::Bits256);
    let peak_512 = measure_fma_peak_gflops(FmaWidth::Bits512);
    println!("nnc sgemm, C = A x B, square n x n x n, median of {ROUNDS} rounds");
    for (bits, peak) in [(256, peak_256), (512, peak_512)] {
        match peak {
            Some(peak) => {
                println!("this machine's {bits}-bit FMA peak, measured now on one core: {peak:.1} GFLOP/s")
            }
            None => println!("this machine has no {bits}-bit FMAs: no peak measured"),
        }
    }
    let best_peak = peak_512.or(peak_256);
    println!(
        "{:>6} {:>9} {:>8} {:>10} {:>10} {:>13}",
        "n", "kernel", "threads", "time (us)", "GFLOP/s", "of best peak"
    );
    for &size in &sizes {
        let a = pseudo_random_matrix(size * size, 1);
        let b = pseudo_random_matrix(size * size, 2);
        let mut c = vec![0.0f32; size * size];
        let configurations: Vec<(GemmKernel, usize)> = kernels
            .iter()
            .flat_map(|&kernel| THREAD_COUNTS.iter().map(move |&threads| (kernel, threads)))
            .collect();
        let mut times = vec![Vec::with_capacity(ROUNDS); configurations.len()];
        for _round in 0..ROUNDS {
            for (slot, &(kernel, threads)) in configurations.iter().enumerate() {
                times[slot].push(time_one_round(size, kernel, threads, &a, &b, &mut c));
            }
        }
        for (slot, &(kernel, threads)) in configurations.iter().enumerate() {
            times[slot].sort();
            let median = times[slot][ROUNDS / 2];
            let gflops = 2.0 * (size as f64).powi(3) / median.as_secs_f64() / 1e9;
            let of_peak = best_peak.map_or("-".to_string(), |peak| {
                format!("{:.0}%", 100.0 * gflops / peak)
            });
            println!(
                "{size:>6} {:>9} {threads:>8} {:>10.1} {gflops:>10.1} {of_peak:>13}",
                kernel.name(),
                median.as_secs_f64() * 1e6,
            );
        }
    }
    println!("percentages are of one core's peak (the 512-bit one where the CPU has it)");
    if !only_sizes {
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

/// The time of one square GEMM on one kernel family, averaged over a round of repetitions.
fn time_one_round(
    size: usize,
    kernel: GemmKernel,
    threads: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) -> Duration {
    time_repeated(|| {
        let (a, b, c) = (
            MatrixRef::row_major(a, size),
            MatrixRef::row_major(b, size),
            MatrixMut::row_major(c, size),
        );
        sgemm_with_kernel(kernel, threads, size, size, size, a, b, c, false)
            .expect("benchmark shapes are consistent");
    })
}

#[derive(Clone, Copy)]
enum FmaWidth {
    Bits256,
    Bits512,
}

/// One core's FP32 FMA peak at a vector width: independent FMA chains (more than the FMA latency
/// times two pipes, and few enough to stay in registers), best of a few runs. `None` when the CPU lacks the FMAs.
fn measure_fma_peak_gflops(width: FmaWidth) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let (supported, lanes, chains) = match width {
            FmaWidth::Bits256 => (
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"),
                8,
                CHAINS_256,
            ),
            FmaWidth::Bits512 => (
                std::arch::is_x86_feature_detected!("avx512f"),
                16,
                CHAINS_512,
            ),
        };
        if !supported {
            return None;
        }
        const ITERATIONS: u64 = 10_000_000;
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                let iterations = std::hint::black_box(ITERATIONS);
                // SAFETY: the CPU has the instructions (checked above).
                let sum = unsafe {
                    match width {
                        FmaWidth::Bits256 => fma_chains_256(iterations),
                        FmaWidth::Bits512 => fma_chains_512(iterations),
                    }
                };
                std::hint::black_box(sum);
                start.elapsed()
            })
            .min()?;
        let flops = ITERATIONS * chains as u64 * lanes * 2;
        return Some(flops as f64 / best.as_secs_f64() / 1e9);
    }
    #[allow(unreachable_code)]
    None
}

/// Twelve of the sixteen ymm registers that AVX2 code can name; twenty-four of 32 zmm.
const CHAINS_256: usize = 12;
const CHAINS_512: usize = 24;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_256(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut chains = [_mm256_set1_ps(0.0); CHAINS_256];
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_512(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut chains = [_mm512_set1_ps(0.0); CHAINS_512];
    let scale = _mm512_set1_ps(std::hint::black_box(0.999_9));
    let offset = _mm512_set1_ps(std::hint::black_box(0.000_1));
    for _ in 0..iterations {
        for chain in chains.iter_mut() {
            *chain = _mm512_fmadd_ps(*chain, scale, offset);
        }
    }
    let sum = chains
        .iter()
        .fold(_mm512_set1_ps(0.0), |sum, &chain| _mm512_add_ps(sum, chain));
    _mm512_reduce_add_ps(sum)
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
