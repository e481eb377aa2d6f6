//! `nnc bench SPEC --train`: the training step (forward, loss, backward and the SGD update, one
//! executable that updates the weights in place) on a random batch with seeded random weights.
//! Reports the time to build and compile the step, the median and fastest step over K runs
//! after a warm-up, the step graph's FLOPs (counted on the primitive graph, backward included)
//! with the GFLOP/s they give, and the step's memory: parameters, optimizer state and the
//! planned arena (activations kept for the backward pass, gradients, workspace). The output is
//! `key: value` lines, like `nnc bench` (bench/compare.py parses them).

use std::time::{Duration, Instant};

use nnc::prim::cost::graph_cost;
use nnc::report::table::group_digits;
use nnc::train::Sgd;

use super::bench::{median, BenchArgs};
use super::{
    compile_model, describe_symbols, failure, human_bytes, milliseconds, resolved_threads,
    symbols_from_flags,
};
use crate::Failure;

/// The learning rate of the timed steps (bench/compare.py uses the same in PyTorch and JAX).
const LEARNING_RATE: f32 = 0.01;

pub fn bench_train(args: &BenchArgs) -> Result<u8, Failure> {
    if args.iterations == 0 {
        return Err(Failure::Usage("--iterations must be at least 1".into()));
    }
    let model = compile_model(&args.spec, args.threads, false)?;
    let symbols = symbols_from_flags(&model, args.batch, &args.dims)?;
    let mut trainer = model
        .trainer_for(&symbols, Box::new(Sgd::new(LEARNING_RATE)))
        .map_err(failure)?;
    let mut params = model.init_params(args.seed);
    let inputs = trainer.random_inputs(args.seed);
    let resident_before = reset_peak_resident_bytes();
    for _ in 0..args.warmup {
        trainer.step(&mut params, &inputs).map_err(failure)?;
    }
    let mut times = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let started = Instant::now();
        let loss = trainer.step(&mut params, &inputs).map_err(failure)?;
        times.push(started.elapsed());
        std::hint::black_box(loss);
    }
    let step_peak = resident_before.and_then(|before| {
        let peak = status_bytes("VmHWM")?;
        Some(peak.saturating_sub(before))
    });
    times.sort();
    let median = median(&times);
    let fastest = times[0];
    let step = trainer.training_step();
    let executable = step.executable();
    // The work the step runs: the fused graph, where fusion merged the recording scans that
    // autodiff adds into the forward ones (the gradient graph would count those twice).
    let cost = graph_cost(&executable.fused().state.graph);
    let flops = cost.flops();
    let gflops = |time: Duration| flops as f64 / time.as_secs_f64().max(1e-12) / 1e9;
    let front_end = model.front_end_time();
    let arena = executable.planned_arena_floats() as u64 * 4;
    let parameters = params.element_count() as u64 * 4;
    let state: u64 = (trainer.optimizer_state().iter())
        .map(|(_, tensor)| tensor.element_count() as u64 * 4)
        .sum();
    let (in_place, copied) = executable.update_placement();
    println!("spec: {}", args.spec.spec.display());
    println!("symbols: {}", describe_symbols(&model, &symbols));
    println!("threads: {}", resolved_threads(args.threads));
    println!("optimizer: sgd (lr {LEARNING_RATE})");
    println!(
        "compile: {} (front end {}, forward + backward + update {})",
        milliseconds(front_end + trainer.compile_time()),
        milliseconds(front_end),
        milliseconds(trainer.compile_time())
    );
    println!(
        "runs: {} timed after {} warm-up",
        args.iterations, args.warmup
    );
    println!("train step median: {}", milliseconds(median));
    println!("train step min: {}", milliseconds(fastest));
    println!(
        "train step FLOPs: {} ({} MACs x 2 + {} other, counted on the fused step graph)",
        group_digits(flops),
        group_digits(cost.macs),
        group_digits(cost.other_flops)
    );
    println!(
        "GFLOP/s: {:.2} (median), {:.2} (min)",
        gflops(median),
        gflops(fastest)
    );
    println!(
        "planned arena: {} bytes ({})",
        group_digits(arena),
        human_bytes(arena)
    );
    println!(
        "training memory: {} (parameters {}, optimizer state {}, arena {})",
        human_bytes(parameters + state + arena),
        human_bytes(parameters),
        human_bytes(state),
        human_bytes(arena)
    );
    match step_peak {
        Some(bytes) => println!(
            "step peak memory: {} bytes ({}; peak RSS during the steps minus RSS before them)",
            group_digits(bytes),
            human_bytes(bytes)
        ),
        None => println!("step peak memory: unavailable (needs Linux /proc/self)"),
    }
    println!(
        "updates: {in_place} written in place, {copied} copied ({} kernels per step)",
        executable.kernel_count()
    );
    Ok(0)
}

/// Resets the process's peak resident set size to its current size (Linux: writing 5 to
/// /proc/self/clear_refs) and returns that size, so the peak read later is the steps' own
/// (bench/train_workloads.py measures PyTorch and JAX the same way).
fn reset_peak_resident_bytes() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_bytes("VmRSS")
}

/// A `kB` line of /proc/self/status, in bytes.
fn status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{key}:")))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}
