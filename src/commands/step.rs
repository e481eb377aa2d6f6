//! `nnc step SPEC`: a few SGD steps (forward, loss, backward and update as one compiled
//! executable) on one batch, printing the loss before each update. The batch is random (floats
//! in [-1, 1), class labels below the loss's class count) unless every input is given as .npy;
//! the weights are seeded PyTorch-default ones unless `--weights` names a safetensors file, and
//! `--save` writes the updated weights. Also the flags and helpers `nnc train` shares.

use std::path::{Path, PathBuf};

use nnc::api::{Model, ParamSource, Trainer};
use nnc::lower::SymbolValues;
use nnc::tensor::Tensor;
use nnc::train::Sgd;
use nnc::weights::{NameStyle, ParamStore};

use super::run::{input_files, read_input};
use super::{compile_model, describe_symbols, failure, milliseconds, symbols_from_flags};
use crate::{Failure, SpecArgs};

/// The optimizer flags of `nnc step` and `nnc train`.
pub struct SgdFlags {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

impl SgdFlags {
    /// The optimizer, after checking that the numbers make sense.
    pub fn optimizer(&self) -> Result<Sgd, Failure> {
        let checks = [
            ("--lr", self.lr, self.lr.is_finite() && self.lr > 0.0),
            (
                "--momentum",
                self.momentum,
                (0.0..1.0).contains(&self.momentum),
            ),
            (
                "--weight-decay",
                self.weight_decay,
                self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            ),
        ];
        for (flag, value, valid) in checks {
            if !valid {
                let range = match flag {
                    "--lr" => "a positive number",
                    "--momentum" => "in [0, 1)",
                    _ => "zero or positive",
                };
                return Err(Failure::Usage(format!(
                    "{flag} must be {range}, not {value}"
                )));
            }
        }
        Ok(Sgd::new(self.lr)
            .momentum(self.momentum)
            .weight_decay(self.weight_decay))
    }

    /// `sgd (lr 0.01, momentum 0.9)`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("lr {}", self.lr)];
        if self.momentum != 0.0 {
            parts.push(format!("momentum {}", self.momentum));
        }
        if self.weight_decay != 0.0 {
            parts.push(format!("weight decay {}", self.weight_decay));
        }
        format!("sgd ({})", parts.join(", "))
    }
}

/// The flags of `nnc step`.
pub struct StepArgs {
    pub spec: SpecArgs,
    pub batch: Option<usize>,
    pub dims: Vec<String>,
    pub sgd: SgdFlags,
    pub steps: usize,
    pub seed: u64,
    pub inputs: Vec<String>,
    pub weights: Option<PathBuf>,
    pub save: Option<PathBuf>,
    pub threads: usize,
}

pub fn step(args: &StepArgs) -> Result<u8, Failure> {
    if args.steps == 0 {
        return Err(Failure::Usage("--steps must be at least 1".into()));
    }
    let optimizer = args.sgd.optimizer()?;
    let model = compile_model(&args.spec, args.threads, true)?;
    let (symbols, files) = if args.inputs.is_empty() {
        (symbols_from_flags(&model, args.batch, &args.dims)?, None)
    } else {
        let data = read_training_inputs(&model, &args.inputs)?;
        let shapes: Vec<&[usize]> = data.iter().map(|tensor| tensor.shape.as_slice()).collect();
        let symbols = model
            .training_symbols_for_shapes(&shapes)
            .map_err(failure)?;
        check_batch_flag(args.batch, &symbols)?;
        (symbols, Some(data))
    };
    let mut params = load_params(&model, args.weights.as_deref(), args.seed)?;
    let mut trainer = model
        .trainer_for(&symbols, Box::new(optimizer))
        .map_err(failure)?;
    let (data, origin) = match files {
        Some(data) => (data, "from --input files".to_string()),
        None => (
            trainer.random_inputs(args.seed),
            format!("random, seed {}", args.seed),
        ),
    };
    println!("spec: {}", args.spec.spec.display());
    println!("symbols: {}", describe_symbols(&model, &symbols));
    println!("data: {origin}: {}", describe_inputs(&trainer));
    println!("optimizer: {}", args.sgd.describe());
    println!("compile: {}", milliseconds(trainer.compile_time()));
    for step in 1..=args.steps {
        let loss = trainer.step(&mut params, &data).map_err(failure)?;
        println!(
            "step {step}: {} {loss:.6}",
            trainer.training_step().loss_name()
        );
    }
    if let Some(path) = &args.save {
        save_params(&params, path)?;
    }
    Ok(0)
}

/// Seeded PyTorch-default weights, or a safetensors file.
pub fn load_params(
    model: &Model,
    weights: Option<&Path>,
    seed: u64,
) -> Result<ParamStore, Failure> {
    let source = match weights {
        Some(path) => ParamSource::Safetensors(path),
        None => ParamSource::Seed(seed),
    };
    model.params(&source).map_err(failure)
}

pub fn save_params(params: &ParamStore, path: &Path) -> Result<(), Failure> {
    params
        .save_safetensors(path, NameStyle::Nnc)
        .map_err(|error| Failure::Usage(error.to_string()))?;
    println!("saved: {}", path.display());
    Ok(())
}

/// Every training input (labels included) from `--input NAME=FILE.npy` flags, in input order.
pub fn read_training_inputs(model: &Model, flags: &[String]) -> Result<Vec<Tensor<f32>>, Failure> {
    let signatures = model.training_inputs();
    let files = input_files(&signatures, flags)?;
    signatures
        .iter()
        .zip(&files)
        .map(|(signature, path)| read_input(signature, path))
        .collect()
}

/// `image [4, 784], label [4] int below 10`.
pub fn describe_inputs(trainer: &Trainer) -> String {
    let described: Vec<String> = trainer
        .inputs()
        .iter()
        .map(|input| {
            let mut text = format!("{} {:?}", input.name, input.shape);
            if input.integer {
                text.push_str(" int");
                if let Some(limit) = input.id_limit {
                    text.push_str(&format!(" below {limit}"));
                }
            }
            text
        })
        .collect();
    described.join(", ")
}

/// `--batch` next to input files must agree with their batch dim.
fn check_batch_flag(batch: Option<usize>, symbols: &SymbolValues) -> Result<(), Failure> {
    match (batch, symbols.get("N")) {
        (Some(flag), Some(found)) if flag != found => Err(Failure::Usage(format!(
            "--batch {flag} disagrees with the input files, whose batch dim N is {found}"
        ))),
        _ => Ok(()),
    }
}
