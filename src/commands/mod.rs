//! The commands that execute networks (`nnc run`, `nnc bench`) and the planned-memory lines of
//! `nnc build`, on top of the library API (`nnc::api`). Errors map onto the documented exit
//! codes: a spec error is 1, a usage error (bad flag, unreadable file, unknown dim) 2, and a
//! runtime error (bad input values or shapes, weights that do not fit the spec) 4.

pub mod bench;
pub mod bench_train;
pub mod build_extras;
pub mod build_training;
pub mod gradcheck;
pub mod run;
pub mod step;
pub mod train;

use nnc::api::{ApiError, Model, ModelOptions};
use nnc::lower::{LowerError, SymbolValues};
use nnc::train::TrainError;
use nnc::weights::WeightsError;

use crate::{options, Failure, SpecArgs};

/// Compiles the spec of `args` into a model with the given thread count and NaN checking.
pub fn compile_model(args: &SpecArgs, threads: usize, check_nan: bool) -> Result<Model, Failure> {
    let model_options = ModelOptions {
        elaborate: options(args)?,
        threads,
        check_nan,
    };
    Model::compile_file(&args.spec, &model_options).map_err(failure)
}

/// The exit-code class of an API error.
pub fn failure(error: ApiError) -> Failure {
    match error {
        ApiError::Spec { rendered } => Failure::Spec(rendered),
        ApiError::Read { path, message } => {
            Failure::Usage(format!("cannot read spec `{path}`: {message}"))
        }
        ApiError::Weights(WeightsError::Read { .. }) => Failure::Usage(error.to_string()),
        ApiError::Lower(LowerError::Internal { .. }) => Failure::Runtime(error.to_string()),
        ApiError::Lower(_) | ApiError::NoBatchDim { .. } => Failure::Usage(error.to_string()),
        // Training needs a `loss` statement: the spec is what to change.
        ApiError::Train(TrainError::NoLoss) => Failure::Spec(format!("error: {error}\n")),
        ApiError::Train(TrainError::Lower(LowerError::Internal { .. })) => {
            Failure::Runtime(error.to_string())
        }
        ApiError::Train(TrainError::Lower(_)) => Failure::Usage(error.to_string()),
        _ => Failure::Runtime(error.to_string()),
    }
}

/// The model's default symbol values with `--batch` and `--dim NAME=VALUE` applied.
pub fn symbols_from_flags(
    model: &Model,
    batch: Option<usize>,
    dims: &[String],
) -> Result<SymbolValues, Failure> {
    let mut symbols = match batch {
        Some(batch) => model.symbols_for_batch(batch).map_err(failure)?,
        None => model.default_symbols(),
    };
    for setting in dims {
        let parsed = setting
            .split_once('=')
            .and_then(|(name, value)| Some((name.trim(), value.trim().parse::<usize>().ok()?)));
        let Some((name, value)) = parsed else {
            return Err(Failure::Usage(format!(
                "--dim expects NAME=SIZE such as T=64, found `{setting}`"
            )));
        };
        symbols.set(name, value);
    }
    Ok(symbols)
}

/// `N=64, T=32`: the network's symbols in declaration order with their values.
pub fn describe_symbols(model: &Model, symbols: &SymbolValues) -> String {
    let network = &model.compilation().network;
    let described: Vec<String> = network
        .symbols
        .iter()
        .filter_map(|symbol| {
            let value = symbols.get(&symbol.name)?;
            Some(format!("{}={value}", symbol.name))
        })
        .collect();
    if described.is_empty() {
        "none".to_string()
    } else {
        described.join(", ")
    }
}

/// The thread count the kernels will use (`0` means every core).
pub fn resolved_threads(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism().map_or(1, |count| count.get())
}

/// `1.18 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in units {
        if bytes >= size {
            return format!("{:.2} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

/// Milliseconds with three significant decimals for small times.
pub fn milliseconds(duration: std::time::Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.1} ms")
    }
}
