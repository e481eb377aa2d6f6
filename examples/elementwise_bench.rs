//! JIT-compiled fused elementwise kernels against plain Rust loops.
//!
//! `cargo run --release --example elementwise_bench [-- --elements N] [-- --rounds R]`
//!
//! Cases: a per-channel bias + ReLU over NCHW (the epilogue of a convolution), a per-feature
//! bias + ReLU over [rows, features] (the epilogue of a dense layer), and GELU (erf form).
//! The Rust baselines are the loops a person would write; the GELU one calls glibc's `erff`
//! per element, which is also the best a JIT kernel calling libm per lane could do. Bandwidth
//! counts one f32 read per full-size input and one f32 write per element. Times are medians over
//! rounds that alternate JIT and Rust; the machine is noisy, so compare within one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nnc::codegen::{
    compile_elementwise, BinaryOp, ElementwiseExpr, ElementwiseKernel, InputLayout, Jit,
    JitOptions, UnaryOp,
};

extern "C" {
    /// glibc's single-precision error function.
    fn erff(x: f32) -> f32;
}

const CHANNELS: usize = 64;

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let option = |name: &str, default: usize| {
        arguments
            .iter()
            .position(|argument| argument == name)
            .and_then(|index| arguments.get(index + 1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let elements = option("--elements", 1 << 20);
    let rounds = option("--rounds", 30);
    let jit = Jit::new(&JitOptions::default()).expect("the host CPU is supported");
    println!(
        "elementwise kernels, {elements} f32 elements, median of {rounds} rounds, verifier {}",
        if jit.options().verify { "on" } else { "off" }
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>11} {:>10} {:>10}",
        "case", "jit ms", "rust ms", "jit/rust", "jit GB/s", "rust GB/s", "compile ms"
    );
    bench_channel_bias_relu(&jit, elements, rounds);
    bench_feature_bias_relu(&jit, elements, rounds);
    bench_gelu(&jit, elements, rounds);
    bench_two_threads(&jit, elements, rounds);
}

fn bench_channel_bias_relu(jit: &Jit, elements: usize, rounds: usize) {
    let inner = (elements / CHANNELS).clamp(1, 1024);
    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    let bias = expr.input(InputLayout::PerChannel {
        channels: CHANNELS,
        inner,
    });
    let sum = expr.binary(BinaryOp::Add, x, bias);
    expr.unary(UnaryOp::Relu, sum);
    let kernel = compile_elementwise(jit, &expr).expect("compiles");
    let input = test_data(elements, 1);
    let bias_values = test_data(CHANNELS, 2);
    let mut jit_output = vec![0.0; elements];
    let mut rust_output = vec![0.0; elements];
    let (jit_time, rust_time) = alternate(
        rounds,
        || {
            kernel
                .run(&[&input, &bias_values], &mut jit_output)
                .expect("sizes match")
        },
        || {
            // NCHW: the bias is constant over each run of `inner` elements.
            for (run_index, (output_run, input_run)) in rust_output
                .chunks_mut(inner)
                .zip(input.chunks(inner))
                .enumerate()
            {
                let channel_bias = bias_values[run_index % CHANNELS];
                for (output, value) in output_run.iter_mut().zip(input_run) {
                    *output = (value + channel_bias).max(0.0);
                }
            }
        },
    );
    assert_eq!(
        jit_output, rust_output,
        "bias+relu must match the Rust loop exactly"
    );
    report(
        "bias+relu per-channel",
        &kernel,
        elements,
        1,
        jit_time,
        rust_time,
    );
}

fn bench_feature_bias_relu(jit: &Jit, elements: usize, rounds: usize) {
    let features = 1000.min(elements.max(1));
    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    let bias = expr.input(InputLayout::PerLastDim { features });
    let sum = expr.binary(BinaryOp::Add, x, bias);
    expr.unary(UnaryOp::Relu, sum);
    let kernel = compile_elementwise(jit, &expr).expect("compiles");
    let input = test_data(elements, 3);
    let bias_values = test_data(features, 4);
    let mut jit_output = vec![0.0; elements];
    let mut rust_output = vec![0.0; elements];
    let (jit_time, rust_time) = alternate(
        rounds,
        || {
            kernel
                .run(&[&input, &bias_values], &mut jit_output)
                .expect("sizes match")
        },
        || {
            for (output_row, input_row) in
                rust_output.chunks_mut(features).zip(input.chunks(features))
            {
                for ((output, value), bias) in
                    output_row.iter_mut().zip(input_row).zip(&bias_values)
                {
                    *output = (value + bias).max(0.0);
                }
            }
        },
    );
    assert_eq!(
        jit_output, rust_output,
        "bias+relu must match the Rust loop exactly"
    );
    report(
        "bias+relu per-feature(1000)",
        &kernel,
        elements,
        1,
        jit_time,
        rust_time,
    );
}

fn bench_gelu(jit: &Jit, elements: usize, rounds: usize) {
    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    expr.unary(UnaryOp::Gelu, x);
    let kernel = compile_elementwise(jit, &expr).expect("compiles");
    let input = test_data(elements, 5);
    let mut jit_output = vec![0.0; elements];
    let mut rust_output = vec![0.0; elements];
    let (jit_time, rust_time) = alternate(
        rounds,
        || kernel.run(&[&input], &mut jit_output).expect("sizes match"),
        || {
            for (output, &value) in rust_output.iter_mut().zip(&input) {
                // SAFETY: erff is a pure function of a float.
                let erf = unsafe { erff(value * std::f32::consts::FRAC_1_SQRT_2) };
                *output = 0.5 * value * (1.0 + erf);
            }
        },
    );
    // The Rust loop's 1 + erff(..) cancels for negative inputs (an absolute error of about
    // |x| * 6e-8), so the two are compared on an absolute scale.
    let max_difference = jit_output
        .iter()
        .zip(&rust_output)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(
        max_difference < 1e-6,
        "gelu differs from erff by {max_difference}"
    );
    report("gelu (erf)", &kernel, elements, 1, jit_time, rust_time);
}

/// The GELU kernel on two threads, each computing one half of the output.
fn bench_two_threads(jit: &Jit, elements: usize, rounds: usize) {
    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    expr.unary(UnaryOp::Gelu, x);
    let kernel = compile_elementwise(jit, &expr).expect("compiles");
    let input = test_data(elements, 5);
    let mut one_thread = vec![0.0; elements];
    let mut two_threads = vec![0.0; elements];
    let (two_time, one_time) = alternate(
        rounds,
        || {
            let half = elements.div_ceil(2).max(1);
            std::thread::scope(|scope| {
                for (index, chunk) in two_threads.chunks_mut(half).enumerate() {
                    let (kernel, input) = (&kernel, &input);
                    scope.spawn(move || {
                        kernel
                            .run_chunk(&[input], elements, chunk, index * half)
                            .expect("in range");
                    });
                }
            });
        },
        || kernel.run(&[&input], &mut one_thread).expect("sizes match"),
    );
    assert_eq!(
        one_thread, two_threads,
        "results must not depend on the thread split"
    );
    report(
        "gelu 2 threads vs 1 (jit)",
        &kernel,
        elements,
        1,
        two_time,
        one_time,
    );
}

/// Runs `first` and `second` alternately after a warm-up; returns their median times.
fn alternate(
    rounds: usize,
    mut first: impl FnMut(),
    mut second: impl FnMut(),
) -> (Duration, Duration) {
    first();
    second();
    let mut first_times = Vec::with_capacity(rounds);
    let mut second_times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        first();
        first_times.push(started.elapsed());
        let started = Instant::now();
        second();
        second_times.push(started.elapsed());
        black_box(());
    }
    (median(&mut first_times), median(&mut second_times))
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn report(
    case: &str,
    kernel: &ElementwiseKernel,
    elements: usize,
    full_size_inputs: usize,
    jit_time: Duration,
    rust_time: Duration,
) {
    let bytes = (elements * 4 * (full_size_inputs + 1)) as f64;
    let gigabytes_per_second = |time: Duration| bytes / time.as_secs_f64() / 1e9;
    println!(
        "{:<28} {:>9.3} {:>9.3} {:>9.2} {:>11.1} {:>10.1} {:>10.2}",
        case,
        jit_time.as_secs_f64() * 1e3,
        rust_time.as_secs_f64() * 1e3,
        jit_time.as_secs_f64() / rust_time.as_secs_f64(),
        gigabytes_per_second(jit_time),
        gigabytes_per_second(rust_time),
        kernel.compile_time().as_secs_f64() * 1e3,
    );
}

/// Deterministic values in [-4, 4) (a 64-bit LCG; no dependency needed for a benchmark).
fn test_data(length: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..length)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        })
        .collect()
}
