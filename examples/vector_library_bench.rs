//! Elementwise kernels with and without the wide-vector library (`src/codegen/vector_library.rs`).
//!
//! `cargo run --release --example vector_library_bench [-- --rounds R]`
//!
//! Cases from the benchmark workloads: the LSTM cell's two gate kernels at batch 32 x hidden
//! 128, softmax's `exp(x - max)` over rows of 64 (the transformer layer's attention scores, the
//! max read per row), and single functions over 64 Ki elements. Prints ns per element, the
//! fastest of R rounds that alternate the two kernels.

use std::time::{Duration, Instant};

use nnc::codegen::{
    compile_elementwise, BinaryOp, ElementwiseExpr, ElementwiseKernel, InputLayout, Jit,
    JitOptions, UnaryOp,
};

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let rounds: usize = arguments
        .iter()
        .position(|argument| argument == "--rounds")
        .and_then(|index| arguments.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(200);
    let jits = [false, true].map(|vector_library| {
        let options = JitOptions {
            vector_library,
            ..JitOptions::default()
        };
        Jit::new(&options).expect("the host CPU is supported")
    });
    println!(
        "{:<36} {:>10} {:>10} {:>8}",
        "case", "f32x4 ns", "library ns", "speedup"
    );
    for (name, expr, length) in cases() {
        let kernels = jits
            .each_ref()
            .map(|jit| compile_elementwise(jit, &expr).expect("compiles"));
        let inputs: Vec<Vec<f32>> = expr
            .input_layouts()
            .iter()
            .map(|layout| {
                let count = layout.required_len(length);
                (0..count)
                    .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
                    .collect()
            })
            .collect();
        let mut best = [Duration::MAX; 2];
        let mut output = vec![0.0f32; length];
        for _ in 0..rounds {
            for (slot, kernel) in kernels.iter().enumerate() {
                best[slot] = best[slot].min(time(kernel, &inputs, &mut output));
            }
        }
        let per_element = best.map(|time| time.as_secs_f64() * 1e9 / length as f64);
        println!(
            "{:<36} {:>10.3} {:>10.3} {:>7.2}x",
            name,
            per_element[0],
            per_element[1],
            per_element[0] / per_element[1]
        );
    }
}

fn time(kernel: &ElementwiseKernel, inputs: &[Vec<f32>], output: &mut [f32]) -> Duration {
    let borrowed: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    kernel.run(&borrowed, output).expect("lengths match");
    started.elapsed()
}

fn cases() -> Vec<(&'static str, ElementwiseExpr, usize)> {
    let mut cases = Vec::new();
    // c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
    let mut cell = ElementwiseExpr::new();
    let [forget, state, input, candidate] = [0; 4].map(|_| cell.input(InputLayout::Contiguous));
    let forget = cell.unary(UnaryOp::Sigmoid, forget);
    let kept = cell.binary(BinaryOp::Mul, forget, state);
    let input = cell.unary(UnaryOp::Sigmoid, input);
    let candidate = cell.unary(UnaryOp::Tanh, candidate);
    let added = cell.binary(BinaryOp::Mul, input, candidate);
    cell.binary(BinaryOp::Add, kept, added);
    cases.push(("lstm cell state, 32x128", cell, 32 * 128));
    // h' = sigmoid(o) * tanh(c')
    let mut hidden = ElementwiseExpr::new();
    let [output_gate, new_state] = [0; 2].map(|_| hidden.input(InputLayout::Contiguous));
    let output_gate = hidden.unary(UnaryOp::Sigmoid, output_gate);
    let squashed = hidden.unary(UnaryOp::Tanh, new_state);
    hidden.binary(BinaryOp::Mul, output_gate, squashed);
    cases.push(("lstm hidden state, 32x128", hidden, 32 * 128));
    // exp(scores - max) with one max per row of 64
    let mut softmax = ElementwiseExpr::new();
    let scores = softmax.input(InputLayout::Contiguous);
    let max = softmax.input(InputLayout::PerChannel {
        channels: 2048,
        inner: 64,
    });
    let shifted = softmax.binary(BinaryOp::Sub, scores, max);
    softmax.unary(UnaryOp::Exp, shifted);
    cases.push(("softmax exp, 2048 rows of 64", softmax, 2048 * 64));
    for (name, op) in [
        ("exp, 64 Ki", UnaryOp::Exp),
        ("sigmoid, 64 Ki", UnaryOp::Sigmoid),
        ("tanh, 64 Ki", UnaryOp::Tanh),
    ] {
        let mut single = ElementwiseExpr::new();
        let x = single.input(InputLayout::Contiguous);
        single.unary(op, x);
        cases.push((name, single, 1 << 16));
    }
    cases
}
