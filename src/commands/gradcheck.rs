//! `nnc gradcheck SPEC`: the runtime's gradients of the spec's loss (f32, fused, JIT-compiled)
//! against the reference interpreter's (f64) and against central finite differences of the loss
//! (f64, through the interpreter), on a small random batch. Prints the worst relative error of
//! each trainable parameter and exits with 5 when the worst error exceeds `--tolerance`. The
//! method and its error measures are `nnc::train::gradcheck`'s.

use std::path::PathBuf;

use nnc::api::{ApiError, SignatureDim};
use nnc::train::gradcheck::{gradcheck as check_gradients, GradcheckOptions};
use nnc::train::{data_inputs, lower_for_training, random_data, TrainError};

use super::step::load_params;
use super::{compile_model, describe_symbols, failure, symbols_from_flags};
use crate::{Failure, SpecArgs};

/// The exit code of a gradient check above the tolerance.
pub const EXIT_GRADCHECK_FAILED: u8 = 5;

/// The flags of `nnc gradcheck`.
pub struct GradcheckArgs {
    pub spec: SpecArgs,
    pub batch: usize,
    pub dims: Vec<String>,
    pub samples: usize,
    pub step: f64,
    pub tolerance: f64,
    pub seed: u64,
    pub weights: Option<PathBuf>,
    pub threads: usize,
}

pub fn gradcheck(args: &GradcheckArgs) -> Result<u8, Failure> {
    if !(args.step.is_finite() && args.step > 0.0) {
        return Err(Failure::Usage(format!(
            "--step must be a positive number, not {}",
            args.step
        )));
    }
    if !(args.tolerance.is_finite() && args.tolerance > 0.0) {
        return Err(Failure::Usage(format!(
            "--tolerance must be a positive number, not {}",
            args.tolerance
        )));
    }
    let model = compile_model(&args.spec, args.threads, false)?;
    let batched = SignatureDim::Symbol("N".to_string());
    let has_batch = (model.training_inputs().iter()).any(|input| input.dims.contains(&batched));
    let batch = has_batch.then_some(args.batch);
    let symbols = symbols_from_flags(&model, batch, &args.dims)?;
    let params = load_params(&model, args.weights.as_deref(), args.seed)?;
    let compilation = model.compilation();
    let (forward, _) = lower_for_training(compilation, &symbols).map_err(train_failure)?;
    let inputs = data_inputs(&forward, forward.inputs.len(), compilation);
    let data = random_data(&inputs, args.seed);
    let options = GradcheckOptions {
        samples: args.samples,
        step: args.step,
        seed: args.seed,
        threads: args.threads,
    };
    let report =
        check_gradients(compilation, &symbols, &params, &data, &options).map_err(train_failure)?;
    let described: Vec<String> = inputs
        .iter()
        .map(|input| match (input.integer, input.id_limit) {
            (true, Some(limit)) => format!("{} {:?} int below {limit}", input.name, input.shape),
            (true, None) => format!("{} {:?} int", input.name, input.shape),
            (false, _) => format!("{} {:?}", input.name, input.shape),
        })
        .collect();
    println!("spec: {}", args.spec.spec.display());
    println!("symbols: {}", describe_symbols(&model, &symbols));
    println!("data: random, seed {}: {}", args.seed, described.join(", "));
    println!(
        "{}: {:.6} (interpreter, f64)",
        report.loss_name, report.loss
    );
    println!(
        "method: runtime gradients (f32, fused, JIT) against the interpreter's (f64, whole tensors, |a - b|_2 / |b|_2) and against central finite differences of the loss (f64 interpreter, step {:e}) on at most {} sampled elements per parameter (--samples), |a - fd| relative to the parameter's largest gradient element",
        args.step, args.samples
    );
    print_table(&report);
    let worst = report.worst_error();
    let verdict = if worst <= args.tolerance {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "worst relative error: {worst:.2e} (tolerance {:e}): {verdict}",
        args.tolerance
    );
    Ok(if worst <= args.tolerance {
        0
    } else {
        EXIT_GRADCHECK_FAILED
    })
}

fn print_table(report: &nnc::train::gradcheck::GradcheckReport) {
    let rows: Vec<[String; 6]> = report
        .parameters
        .iter()
        .map(|check| {
            [
                check.name.clone(),
                format!("{:?}", check.shape),
                format!("{} of {}", check.checked, check.elements),
                format!("{:.2e}", check.finite_difference_error),
                format!("{:.2e}", check.interpreter_error),
                format!("{:.2e}", check.gradient_norm),
            ]
        })
        .collect();
    let header = [
        "parameter".to_string(),
        "shape".to_string(),
        "checked".to_string(),
        "vs finite diff".to_string(),
        "vs interpreter".to_string(),
        "|gradient|".to_string(),
    ];
    let mut widths = header.clone().map(|cell| cell.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| match column {
                0 | 1 => format!("{cell:<width$}"),
                _ => format!("{cell:>width$}"),
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// A spec without a loss is a spec error; everything else as the API maps it.
fn train_failure(error: TrainError) -> Failure {
    failure(ApiError::Train(error))
}
