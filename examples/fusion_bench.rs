//! Forward time of whole networks through the runtime, with and without fusion.
//!
//! `cargo run --release --example fusion_bench [-- --rounds R] [-- --threads T] [-- --only NAME]`
//!
//! Workloads: lenet5 on 1x28x28 at batch 64 and resnet18 on 3x32x32 with 10 classes at batch 32
//! (the benchmark sizes). Each round runs every variant once, alternating, so a noisy
//! moment of the machine hits all variants alike; the table shows the median per variant.
//! "unfused" runs every primitive node on its own (the runtime before fusion), "fused" folds
//! parameters and batch norm and runs JIT kernels with epilogues. Both run on bound parameters,
//! so the one-time folding is not part of the timed forward; "fused run()" is the fused
//! executable through `Executable::run`, which checks its cache of folded values each call.
//! `--profile` adds per-kernel times.

use std::time::{Duration, Instant};

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::lower::{lower, SymbolValues};
use nnc::runtime::{Executable, ExecutableOptions};
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

struct Workload {
    name: &'static str,
    set: &'static [(&'static str, i64)],
    input_shapes: &'static [(&'static str, &'static [u64])],
    batch: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "lenet5",
        set: &[],
        input_shapes: &[],
        batch: 64,
    },
    Workload {
        name: "resnet18",
        set: &[("classes", 10)],
        input_shapes: &[("image", &[3, 32, 32])],
        batch: 32,
    },
];

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let option = |name: &str| {
        arguments
            .iter()
            .position(|argument| argument == name)
            .and_then(|index| arguments.get(index + 1))
            .cloned()
    };
    let rounds: usize = option("--rounds")
        .and_then(|value| value.parse().ok())
        .unwrap_or(30);
    let threads: usize = option("--threads")
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    let only = option("--only");
    println!("forward time, median of {rounds} rounds, {threads} thread(s)");
    println!(
        "{:<10} {:>6} {:>12} {:>12} {:>8} {:>15} {:>13} {:>9} {:>13}",
        "network",
        "batch",
        "unfused ms",
        "fused ms",
        "speedup",
        "fused run() ms",
        "compile ms",
        "kernels",
        "arena floats"
    );
    for workload in WORKLOADS {
        if only.as_deref().is_some_and(|only| only != workload.name) {
            continue;
        }
        bench(
            workload,
            rounds,
            threads,
            arguments.iter().any(|argument| argument == "--profile"),
        );
    }
}

fn bench(workload: &Workload, rounds: usize, threads: usize, profile: bool) {
    let path = format!("{}/specs/{}.nn", env!("CARGO_MANIFEST_DIR"), workload.name);
    let text = std::fs::read_to_string(&path).expect("the spec is readable");
    let options = ElaborateOptions {
        param_overrides: workload
            .set
            .iter()
            .map(|(name, value)| (name.to_string(), OverrideValue::Int(*value)))
            .collect(),
        input_shape_overrides: workload
            .input_shapes
            .iter()
            .map(|(name, dims)| (name.to_string(), dims.to_vec()))
            .collect(),
    };
    let compilation = nnc::compile(&text, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, &path, &text))
    });
    let symbols = SymbolValues::report_values(&compilation.network).with("N", workload.batch);
    let graph = lower(&compilation, &symbols).expect("the spec lowers");
    let params = ParamStore::initialize(&compilation, 7);
    let inputs: Vec<Tensor<f32>> = graph
        .inputs
        .iter()
        .map(|(_, id)| {
            let shape = graph.node(*id).ty.shape.clone();
            let count: usize = shape.iter().product();
            let data = (0..count)
                .map(|index| ((index * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            Tensor { shape, data }
        })
        .collect();

    let unfused = Executable::with_options(
        graph.clone(),
        threads,
        &ExecutableOptions {
            fuse: false,
            ..ExecutableOptions::default()
        },
    )
    .expect("compiles");
    let fused = Executable::new(graph, threads).expect("compiles");
    let unfused_bound = unfused.bind(&params).expect("binds");
    let fused_bound = fused.bind(&params).expect("binds");
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (slot, bound) in [&unfused_bound, &fused_bound].into_iter().enumerate() {
            let started = Instant::now();
            let outputs = bound.run(&inputs).expect("runs");
            times[slot].push(started.elapsed());
            std::hint::black_box(outputs);
        }
        // `Executable::run` on the same store: folded values come from its cache after a
        // bit-for-bit check of the tensors they were computed from.
        let started = Instant::now();
        let outputs = fused.run(&params, &inputs).expect("runs");
        times[2].push(started.elapsed());
        std::hint::black_box(outputs);
    }
    let [unfused_ms, fused_ms, fused_run_ms] = times.map(|mut samples| median_ms(&mut samples));
    println!(
        "{:<10} {:>6} {:>12.3} {:>12.3} {:>7.2}x {:>15.3} {:>13.2} {:>9} {:>13}",
        workload.name,
        workload.batch,
        unfused_ms,
        fused_ms,
        unfused_ms / fused_ms,
        fused_run_ms,
        fused.compile_time().as_secs_f64() * 1e3,
        fused.kernel_count(),
        fused.planned_arena_floats(),
    );
    if profile {
        println!("  unfused kernels:");
        profile_kernels(&unfused_bound, &inputs, rounds);
        println!("  fused kernels:");
        profile_kernels(&fused_bound, &inputs, rounds);
    }
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// `--profile`: per-kernel times of the fused executable, summed over rounds.
fn profile_kernels(
    bound: &nnc::runtime::BoundExecutable<'_>,
    inputs: &[Tensor<f32>],
    rounds: usize,
) {
    let mut totals: Vec<(String, Duration)> = Vec::new();
    for _ in 0..rounds {
        for (index, (label, time)) in bound.profile(inputs).expect("runs").into_iter().enumerate() {
            if totals.len() <= index {
                totals.push((label, Duration::ZERO));
            }
            totals[index].1 += time;
        }
    }
    for (label, total) in totals {
        println!(
            "    {:<40} {:>9.3} ms",
            label,
            total.as_secs_f64() * 1e3 / rounds as f64
        );
    }
}
