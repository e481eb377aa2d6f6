//! `nnc train SPEC --input NAME=FILE.npy ...`: the minimal training loop. Every input (labels
//! included) is one .npy array holding the whole data set along its leading (batch) dim; each
//! epoch walks it in mini-batches of `--batch` rows (in order, or shuffled with `--shuffle`),
//! taking one SGD step per batch, and prints the loss every `--log-every` steps and the mean
//! loss of each epoch. The step is compiled for one batch size, so a last partial batch is
//! skipped (and reported). Optimizers other than SGD, schedules, validation and data sets
//! beyond .npy arrays are not here yet.

use std::path::PathBuf;
use std::time::Instant;

use nnc::api::SignatureDim;
use nnc::tensor::Tensor;
use nnc::train::inputs::SplitMix;

use super::step::{describe_inputs, load_params, read_training_inputs, save_params, SgdFlags};
use super::{compile_model, describe_symbols, failure, milliseconds};
use crate::{Failure, SpecArgs};

/// The flags of `nnc train`.
pub struct TrainArgs {
    pub spec: SpecArgs,
    pub inputs: Vec<String>,
    pub batch: usize,
    pub epochs: usize,
    pub sgd: SgdFlags,
    pub shuffle: bool,
    pub seed: u64,
    pub log_every: usize,
    pub weights: Option<PathBuf>,
    pub save: Option<PathBuf>,
    pub threads: usize,
}

pub fn train(args: &TrainArgs) -> Result<u8, Failure> {
    if args.batch == 0 || args.epochs == 0 {
        return Err(Failure::Usage(
            "--batch and --epochs must be at least 1".into(),
        ));
    }
    let optimizer = args.sgd.optimizer()?;
    let model = compile_model(&args.spec, args.threads, true)?;
    let signatures = model.training_inputs();
    let batched = SignatureDim::Symbol("N".to_string());
    if let Some(unbatched) = signatures
        .iter()
        .find(|signature| signature.dims.first() != Some(&batched))
    {
        return Err(Failure::Usage(format!(
            "input `{}` ({}) has no leading batch dim N, so `nnc train` cannot split it into mini-batches",
            unbatched.name,
            unbatched.dims_text()
        )));
    }
    let data = read_training_inputs(&model, &args.inputs)?;
    let samples = sample_count(&signatures, &data)?;
    if samples < args.batch {
        return Err(Failure::Usage(format!(
            "the data has {samples} samples, fewer than one batch of {}; pass a smaller --batch",
            args.batch
        )));
    }
    let batch_shapes: Vec<Vec<usize>> = data
        .iter()
        .map(|tensor| {
            let mut shape = tensor.shape.clone();
            shape[0] = args.batch;
            shape
        })
        .collect();
    let shapes: Vec<&[usize]> = batch_shapes.iter().map(Vec::as_slice).collect();
    let symbols = model
        .training_symbols_for_shapes(&shapes)
        .map_err(failure)?;
    let mut params = load_params(&model, args.weights.as_deref(), args.seed)?;
    let mut trainer = model
        .trainer_for(&symbols, Box::new(optimizer))
        .map_err(failure)?;
    let steps_per_epoch = samples / args.batch;
    println!("spec: {}", args.spec.spec.display());
    println!("symbols: {}", describe_symbols(&model, &symbols));
    println!("batch: {}", describe_inputs(&trainer));
    println!(
        "data: {samples} samples, {steps_per_epoch} steps per epoch{}{}",
        if args.shuffle { ", shuffled" } else { "" },
        match samples % args.batch {
            0 => String::new(),
            rest => format!(
                " (the last {rest} samples are skipped: the step is compiled for one batch size)"
            ),
        }
    );
    println!("optimizer: {}", args.sgd.describe());
    println!("compile: {}", milliseconds(trainer.compile_time()));
    let loss_name = trainer.training_step().loss_name().to_string();
    let mut order: Vec<usize> = (0..samples).collect();
    let mut numbers = SplitMix(args.seed ^ 0x7368_7566_666C_6521);
    let mut batch: Vec<Tensor<f32>> = batch_shapes
        .iter()
        .map(|shape| Tensor::zeros(shape))
        .collect();
    for epoch in 1..=args.epochs {
        if args.shuffle {
            shuffle(&mut order, &mut numbers);
        }
        let started = Instant::now();
        let mut total = 0.0f64;
        for step in 0..steps_per_epoch {
            let rows = &order[step * args.batch..(step + 1) * args.batch];
            for (tensor, source) in batch.iter_mut().zip(&data) {
                gather_rows(source, rows, tensor);
            }
            let loss = trainer.step(&mut params, &batch).map_err(failure)?;
            total += loss as f64;
            if args.log_every > 0 && (step + 1) % args.log_every == 0 {
                println!(
                    "epoch {epoch} step {}/{steps_per_epoch}: {loss_name} {loss:.6}",
                    step + 1
                );
            }
        }
        println!(
            "epoch {epoch}: mean {loss_name} {:.6} over {steps_per_epoch} steps ({})",
            total / steps_per_epoch as f64,
            milliseconds(started.elapsed())
        );
    }
    if let Some(path) = &args.save {
        save_params(&params, path)?;
    }
    Ok(0)
}

/// The common leading dim of every array: the number of samples.
fn sample_count(
    signatures: &[nnc::api::InputSignature],
    data: &[Tensor<f32>],
) -> Result<usize, Failure> {
    let counts: Vec<usize> = data
        .iter()
        .map(|tensor| tensor.shape.first().copied().unwrap_or(0))
        .collect();
    if counts.iter().any(|count| *count != counts[0]) || counts[0] == 0 {
        let listing: Vec<String> = signatures
            .iter()
            .zip(&counts)
            .map(|(signature, count)| format!("{} has {count}", signature.name))
            .collect();
        return Err(Failure::Usage(format!(
            "every input needs the same number of samples (rows along the batch dim), but {}",
            listing.join(", ")
        )));
    }
    Ok(counts[0])
}

/// Copies the given rows of `source` (along dim 0) into `batch`.
fn gather_rows(source: &Tensor<f32>, rows: &[usize], batch: &mut Tensor<f32>) {
    let row_len: usize = source.shape[1..].iter().product();
    for (slot, row) in rows.iter().enumerate() {
        batch.data[slot * row_len..(slot + 1) * row_len]
            .copy_from_slice(&source.data[row * row_len..(row + 1) * row_len]);
    }
}

/// Fisher-Yates with the seeded stream, the same order on every machine.
fn shuffle(order: &mut [usize], numbers: &mut SplitMix) {
    for index in (1..order.len()).rev() {
        let other = numbers.below(index + 1);
        order.swap(index, other);
    }
}
