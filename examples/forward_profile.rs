//! Where a forward pass spends its time, kernel by kernel.
//!
//! `cargo run --release --example forward_profile -- SPEC [--batch B] [--threads T]
//! [--rounds R] [--train-kernels | --train]`
//!
//! Prints each kernel of the fused executable (its `--emit kernels` label) with the fastest and
//! the median of its times over R profiled runs, then the same for the body of every scan,
//! compiled on its own and run on random step inputs (a scan's line at the top level is the
//! whole loop; the body lines say which of its kernels the loop pays for per step). The fastest
//! time is the useful one on a noisy shared machine; the median shows how noisy it was.
//! `--train-kernels` lists the kernels of the SGD training step instead, and `--train` times them.

use std::time::Duration;

use nnc::api::{Model, ModelOptions};
use nnc::prim::{PrimGraph, PrimOp};
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let option = |name: &str| {
        arguments
            .iter()
            .position(|argument| argument == name)
            .and_then(|index| arguments.get(index + 1))
            .cloned()
    };
    let spec = arguments
        .get(1)
        .cloned()
        .expect("usage: forward_profile SPEC [--batch B]");
    let batch: usize = option("--batch").and_then(|v| v.parse().ok()).unwrap_or(1);
    let threads: usize = option("--threads")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rounds: usize = option("--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let options = ModelOptions::default().threads(threads);
    let model = Model::compile_file(&spec, &options).expect("the spec compiles");
    if arguments
        .iter()
        .any(|argument| argument == "--train-kernels")
    {
        // The kernels of the SGD training step, for `perf` to be read against.
        let trainer = model
            .trainer(batch, nnc::train::Sgd::new(0.01))
            .expect("the spec has a loss");
        print!("{}", trainer.training_step().executable().kernel_listing());
        return;
    }
    if arguments.iter().any(|argument| argument == "--train") {
        // The SGD training step timed per kernel: it updates its parameters in place, so it
        // runs through `profile_in_place` on parameters of its own (the learning rate is the
        // step graph's last input).
        let trainer = model
            .trainer(batch, nnc::train::Sgd::new(0.01))
            .expect("the spec has a loss");
        let mut params = model.init_params(7);
        let mut inputs = trainer.random_inputs(7);
        inputs.push(Tensor {
            shape: Vec::new(),
            data: vec![0.01],
        });
        let executable = trainer.training_step().executable();
        let mut samples: Vec<(String, Vec<Duration>)> = Vec::new();
        for round in 0..rounds {
            let times = executable
                .profile_in_place(params.iter_mut(), &inputs, round as u64)
                .expect("the training step runs");
            for (index, (label, time)) in times.into_iter().enumerate() {
                if samples.len() <= index {
                    samples.push((label, Vec::new()));
                }
                samples[index].1.push(time);
            }
        }
        println!("{spec} training step at batch {batch}, {threads} thread(s), {rounds} rounds");
        print_samples(&mut samples);
        return;
    }
    let forward = model.for_batch(batch).expect("the spec specializes");
    let params = model.init_params(7);
    let inputs = forward.random_inputs(7);
    let executable = forward.executable();
    let bound = executable.bind(&params).expect("the parameters bind");
    let mut samples: Vec<(String, Vec<Duration>)> = Vec::new();
    for _ in 0..rounds {
        let times = bound.profile(&inputs).expect("the forward pass runs");
        for (index, (label, time)) in times.into_iter().enumerate() {
            if samples.len() <= index {
                samples.push((label, Vec::new()));
            }
            samples[index].1.push(time);
        }
    }
    println!("{spec} at batch {batch}, {threads} thread(s), {rounds} rounds");
    print_samples(&mut samples);
    for (scan, body) in scan_bodies(executable.fused().state.graph.clone()) {
        println!("body of scan %{scan} (one step):");
        profile_body(body, &params, threads, rounds);
    }
}

/// Prints `label  min  median` per kernel and the sum of the minimums.
fn print_samples(samples: &mut [(String, Vec<Duration>)]) {
    let mut total_min = Duration::ZERO;
    for (label, times) in samples.iter_mut() {
        times.sort();
        total_min += times[0];
        println!(
            "  {:<44} min {:>8.1} us  median {:>8.1} us",
            label,
            times[0].as_secs_f64() * 1e6,
            times[times.len() / 2].as_secs_f64() * 1e6
        );
    }
    println!("  sum of minimums: {:.1} us", total_min.as_secs_f64() * 1e6);
}

/// Each scan node's body graph, by the scan's node index.
fn scan_bodies(graph: PrimGraph) -> Vec<(usize, PrimGraph)> {
    graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            PrimOp::Scan { body, .. } => Some((id.index(), body.graph.clone())),
            _ => None,
        })
        .collect()
}

/// Compiles a scan body on its own and profiles it on deterministic inputs in [-1, 1).
fn profile_body(body: PrimGraph, params: &ParamStore, threads: usize, rounds: usize) {
    let inputs: Vec<Tensor<f32>> = body
        .inputs
        .iter()
        .map(|(_, id)| {
            let shape = body.node(*id).ty.shape.clone();
            let count: usize = shape.iter().product();
            let data = (0..count)
                .map(|index| ((index * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            Tensor { shape, data }
        })
        .collect();
    let executable = Executable::new(body, threads).expect("the body compiles");
    let bound = executable.bind(params).expect("the body binds");
    let mut samples: Vec<(String, Vec<Duration>)> = Vec::new();
    for _ in 0..rounds {
        for (index, (label, time)) in bound
            .profile(&inputs)
            .expect("runs")
            .into_iter()
            .enumerate()
        {
            if samples.len() <= index {
                samples.push((label, Vec::new()));
            }
            samples[index].1.push(time);
        }
    }
    print_samples(&mut samples);
}
