//! `nnc bench SPEC [--batch B] [--threads T] [--iterations K]`: the forward pass on random
//! inputs with seeded random weights. Reports the compile time, the median and fastest forward
//! time over K runs after a warm-up, the GFLOP/s that the report's cost model gives at that
//! batch (2 x MACs / time), and the planned arena memory. The output is `key: value` lines
//! (bench/compare.py parses them).

use std::time::{Duration, Instant};

use nnc::report::table::group_digits;

use super::{
    compile_model, describe_symbols, failure, human_bytes, milliseconds, resolved_threads,
    symbols_from_flags,
};
use crate::{Failure, SpecArgs};

/// The flags of `nnc bench`.
pub struct BenchArgs {
    pub spec: SpecArgs,
    pub batch: Option<usize>,
    pub dims: Vec<String>,
    pub threads: usize,
    pub iterations: usize,
    pub warmup: usize,
    pub seed: u64,
}

pub fn bench(args: &BenchArgs) -> Result<u8, Failure> {
    if args.iterations == 0 {
        return Err(Failure::Usage("--iterations must be at least 1".into()));
    }
    let model = compile_model(&args.spec, args.threads, false)?;
    let symbols = symbols_from_flags(&model, args.batch, &args.dims)?;
    let forward = model.specialize(&symbols).map_err(failure)?;
    let params = model.init_params(args.seed);
    let inputs = forward.random_inputs(args.seed);
    // Parameters are bound once, as a serving or training loop would: timing covers the run.
    let bound = forward.bind(&params).map_err(failure)?;
    for _ in 0..args.warmup {
        bound.run_tensors(&inputs).map_err(failure)?;
    }
    let mut times = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let started = Instant::now();
        let outputs = bound.run_tensors(&inputs).map_err(failure)?;
        times.push(started.elapsed());
        std::hint::black_box(outputs);
    }
    times.sort();
    let median = median(&times);
    let fastest = times[0];
    let macs = model.forward_macs(&symbols);
    let gflops = |time: Duration| 2.0 * macs as f64 / time.as_secs_f64().max(1e-12) / 1e9;
    let front_end = model.front_end_time();
    let specialize = forward.compile_time();
    let arena = forward.planned_arena_bytes();
    println!("spec: {}", args.spec.spec.display());
    println!("symbols: {}", describe_symbols(&model, &symbols));
    println!("threads: {}", resolved_threads(args.threads));
    println!(
        "compile: {} (front end {}, lower + runtime {})",
        milliseconds(front_end + specialize),
        milliseconds(front_end),
        milliseconds(specialize)
    );
    println!(
        "runs: {} timed after {} warm-up",
        args.iterations, args.warmup
    );
    println!("forward median: {}", milliseconds(median));
    println!("forward min: {}", milliseconds(fastest));
    println!("forward MACs: {} (2 FLOPs each)", group_digits(macs));
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
    Ok(0)
}

/// The middle time, or the mean of the two middle ones; `times` is sorted and not empty.
pub fn median(times: &[Duration]) -> Duration {
    let middle = times.len() / 2;
    if times.len() % 2 == 1 {
        times[middle]
    } else {
        (times[middle - 1] + times[middle]) / 2
    }
}
