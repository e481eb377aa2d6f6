//! The `nnc` command line. Exit codes: 0 ok, 1 spec error, 2 usage error (bad flags, missing
//! file), 3 a `--assert` budget was broken, 4 a runtime error (bad input, mismatched weights),
//! 5 a gradient check above its tolerance (`nnc gradcheck`). `run`, `bench`, `step`, `train`
//! and `gradcheck` live in `commands/`, on top of the library API (`nnc::api`).

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::report;

#[derive(Parser)]
#[command(
    name = "nnc",
    version,
    about = "A compiler for neural-network specs: checks every shape and reports what a network costs"
)]
#[command(
    after_help = "Exit codes: 0 ok, 1 spec error, 2 usage error (bad flags, missing file), 3 budget broken (--assert), 4 runtime error (bad input, mismatched weights), 5 gradient check failed (gradcheck)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct SpecArgs {
    /// The .nn spec file
    spec: PathBuf,
    /// Override a top-level `param`, e.g. --set classes=10 (repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Override an input's dims after the batch dim, e.g. --input-shape image=3x32x32 (repeatable)
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    input_shape: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a spec and print its per-layer shape, parameter and cost report
    Build {
        #[command(flatten)]
        spec: SpecArgs,
        /// Output format of the report
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Collapse blocks deeper than this many instance-path segments into one row
        #[arg(long)]
        depth: Option<usize>,
        /// A budget such as 'params <= 12M' or 'macs < 2G'; exit code 3 when broken (repeatable)
        #[arg(long = "assert", value_name = "BUDGET")]
        budgets: Vec<String>,
        /// Print an intermediate form instead of the report
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// The batch size of the planned memory and compile time lines (default 1)
        #[arg(long)]
        batch: Option<usize>,
        /// The size of another symbolic dim for those lines, e.g. --dim T=64 (repeatable)
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dims: Vec<String>,
        /// Kernel threads of the compiled forward pass (0: all cores)
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Run the forward pass on .npy inputs and write the outputs as .npy
    #[command(
        after_help = "The batch size and other symbolic dims come from the input shapes. Id (int) inputs accept int64, int32 or float arrays of whole numbers.\nExit codes: 0 ok, 1 spec error, 2 usage error (bad flags, unreadable file), 4 runtime error (wrong input shape, NaN with --check-nan, weights that do not fit the spec)"
    )]
    Run {
        #[command(flatten)]
        spec: SpecArgs,
        /// An input as NAME=FILE.npy, or FILE.npy for a network with one input (repeatable)
        #[arg(long = "input", short = 'i', value_name = "NAME=FILE", required = true)]
        inputs: Vec<String>,
        /// Weights as a safetensors file with PyTorch state_dict names
        #[arg(long, conflicts_with = "seed")]
        weights: Option<PathBuf>,
        /// Seed of PyTorch-default random weights when no --weights is given (default 0)
        #[arg(long)]
        seed: Option<u64>,
        /// The output .npy file, or a directory that gets NAME.npy per output for several outputs
        #[arg(long, short)]
        output: PathBuf,
        /// Kernel threads (0: all cores); results do not depend on it
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Reject inputs that contain NaN (exit code 4)
        #[arg(long)]
        check_nan: bool,
    },
    /// Time the forward pass (or a training step, --train) on random data: compile time, median, GFLOP/s
    Bench {
        #[command(flatten)]
        spec: SpecArgs,
        /// Batch size N (default: 1)
        #[arg(long)]
        batch: Option<usize>,
        /// The size of another symbolic dim, e.g. --dim T=64 (repeatable)
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dims: Vec<String>,
        /// Kernel threads (0: all cores)
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Timed forward passes
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// Untimed forward passes before the timed ones
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Seed of the random weights and inputs
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Time a training step instead (forward, loss, backward and SGD update; needs a `loss`)
        #[arg(long)]
        train: bool,
    },
    /// Take SGD steps on one batch (random, or every input as .npy) and print the loss per step
    #[command(
        after_help = "Forward, loss, backward and the SGD update run as one compiled executable that updates the weights in place. Without --input the batch is random: floats in [-1, 1), class labels below the loss's class count. The spec needs a `loss` statement.\nExit codes: 0 ok, 1 spec error (or no loss), 2 usage error (bad flags, unreadable file), 4 runtime error (wrong input shape, ids out of range, weights that do not fit the spec)"
    )]
    Step {
        #[command(flatten)]
        spec: SpecArgs,
        /// Batch size N of the random batch (default 1; taken from the files with --input)
        #[arg(long)]
        batch: Option<usize>,
        /// The size of another symbolic dim, e.g. --dim T=64 (repeatable)
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dims: Vec<String>,
        #[command(flatten)]
        sgd: SgdArgs,
        /// How many steps to take on the batch
        #[arg(long, default_value_t = 1)]
        steps: usize,
        /// Seed of the random weights (without --weights) and of the random batch
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Every input, labels included, as NAME=FILE.npy (repeatable); all or none
        #[arg(long = "input", short = 'i', value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Start from these weights (safetensors with PyTorch state_dict names)
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Write the updated weights to this safetensors file
        #[arg(long)]
        save: Option<PathBuf>,
        /// Kernel threads (0: all cores); results do not depend on it
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Train with SGD on .npy arrays in mini-batches for some epochs (minimal: SGD only)
    #[command(
        after_help = "Each --input file holds the whole data set for one input (labels included) along its leading batch dim. Each epoch takes one SGD step per full batch (a last partial batch is skipped) and prints the mean loss. Other optimizers, schedules, validation and data-set formats are not supported yet.\nExit codes: 0 ok, 1 spec error (or no loss), 2 usage error (bad flags, unreadable file, inputs of different sample counts), 4 runtime error (wrong input shape, ids out of range, weights that do not fit the spec)"
    )]
    Train {
        #[command(flatten)]
        spec: SpecArgs,
        /// Every input, labels included, as NAME=FILE.npy with all samples (repeatable)
        #[arg(long = "input", short = 'i', value_name = "NAME=FILE", required = true)]
        inputs: Vec<String>,
        /// Samples per step
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Passes over the data
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        #[command(flatten)]
        sgd: SgdArgs,
        /// Visit the samples in a new random order each epoch
        #[arg(long)]
        shuffle: bool,
        /// Seed of the random weights (without --weights) and of the shuffling
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the loss every K steps (0: only each epoch's mean)
        #[arg(long, default_value_t = 10, value_name = "K")]
        log_every: usize,
        /// Start from these weights (safetensors with PyTorch state_dict names)
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Write the trained weights to this safetensors file
        #[arg(long)]
        save: Option<PathBuf>,
        /// Kernel threads (0: all cores); results do not depend on it
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Compare the JIT gradients of the loss with f64 finite differences and the f64 interpreter
    #[command(
        after_help = "Random weights and a random batch. For each trainable parameter it prints the worst error of the runtime's gradient (f32) against central finite differences of the loss computed in f64 by the reference interpreter (on at most --samples elements, relative to the parameter's largest gradient element), and against the interpreter's own f64 gradient (whole tensor, |a - b|_2 / |b|_2).\nExit codes: 0 ok, 1 spec error (or no loss), 2 usage error, 4 runtime error, 5 worst error above --tolerance"
    )]
    Gradcheck {
        #[command(flatten)]
        spec: SpecArgs,
        /// Batch size N
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// The size of another symbolic dim, e.g. --dim T=8 (repeatable)
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dims: Vec<String>,
        /// At most this many elements of each parameter get a finite difference
        #[arg(long, default_value_t = 8)]
        samples: usize,
        /// The finite-difference step h
        #[arg(long, default_value_t = 1e-5)]
        step: f64,
        /// The largest relative error that passes
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f64,
        /// Seed of the random weights (without --weights), batch and sampled elements
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Check at these weights (safetensors with PyTorch state_dict names)
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Kernel threads of the runtime (0: all cores)
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Only check a spec: print errors, or nothing and exit 0
    Check {
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Write the network as Graphviz DOT (blocks as clusters); SVG when the output ends in .svg
    Graph {
        #[command(flatten)]
        spec: SpecArgs,
        /// Output file (.dot or .svg); standard output when absent
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// The SGD flags of `step` and `train`.
#[derive(clap::Args, Clone)]
struct SgdArgs {
    /// Learning rate
    #[arg(long, default_value_t = 0.01)]
    lr: f32,
    /// Momentum (PyTorch's SGD, no dampening); 0 for plain SGD
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    /// L2 weight decay added to the gradient (PyTorch's SGD weight_decay)
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
}

impl SgdArgs {
    fn flags(&self) -> commands::step::SgdFlags {
        commands::step::SgdFlags {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The layer graph with shapes
    Ir,
    /// The primitive graph after lowering, with symbolic dims at their report values (N = 1)
    Lowered,
    /// The graphs after fusion: the bind-time graph, then the run graph grouped into kernels
    Fused,
    /// One line per kernel: kind, the nodes it covers, shapes, JIT compile time
    Kernels,
    /// The simplified gradient graph of the spec's loss (training mode, N = 1)
    Grad,
    /// Which forward values the backward pass keeps and which it recomputes (N = 1)
    Recompute,
}

const EXIT_SPEC_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_BUDGET: u8 = 3;
const EXIT_RUNTIME: u8 = 4;

/// Rust ignores SIGPIPE, so printing into a closed pipe (`nnc build x.nn | head`) would panic
/// in `println!`; the default action ends the process quietly instead, as `cat` or `grep` do.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default has no preconditions; it runs
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    end_quietly_on_closed_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Spec(rendered)) => {
            eprint!("{rendered}");
            ExitCode::from(EXIT_SPEC_ERROR)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

enum Failure {
    Usage(String),
    Spec(String),
    /// Bad input values or shapes, weights that do not fit the spec.
    Runtime(String),
}

fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Build {
            spec,
            format,
            depth,
            budgets,
            emit,
            batch,
            dims,
            threads,
        } => {
            let budgets = budgets
                .iter()
                .map(|text| report::Budget::parse(text))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Failure::Usage)?;
            let (compilation, text) = compile(&spec)?;
            if let Some(Emit::Grad | Emit::Recompute) = emit {
                let name = spec.spec.display().to_string();
                let spec_text = commands::build_training::SpecText {
                    name: &name,
                    text: &text,
                };
                let listing = match emit {
                    Some(Emit::Grad) => {
                        commands::build_training::gradient_listing(&compilation, &spec_text)?
                    }
                    _ => commands::build_training::recompute_listing(&compilation, &spec_text)?,
                };
                print!("{listing}");
                return Ok(0);
            }
            if let Some(Emit::Ir) = emit {
                print!(
                    "{}",
                    nnc::ir::print::print_network(&compilation.network, &compilation.shapes.table)
                );
                return Ok(0);
            }
            if let Some(Emit::Lowered | Emit::Fused | Emit::Kernels) = emit {
                let symbols = nnc::lower::SymbolValues::report_values(&compilation.network);
                let lowered = nnc::lower::lower(&compilation, &symbols)
                    .map_err(|error| Failure::Spec(format!("error: {error}\n")))?;
                if let Some(Emit::Lowered) = emit {
                    print!("{}", nnc::prim::print::print_graph(&lowered));
                    return Ok(0);
                }
                let executable = nnc::runtime::Executable::new(lowered, threads)
                    .map_err(|error| Failure::Runtime(error.to_string()))?;
                match emit {
                    Some(Emit::Fused) => print!("{}", executable.fused_listing()),
                    _ => print!("{}", executable.kernel_listing()),
                }
                return Ok(0);
            }
            let summary = report::summarize(&compilation);
            let model_options = nnc::api::ModelOptions::new().threads(threads);
            let model = nnc::api::Model::from_compilation(compilation, &model_options);
            let facts = commands::build_extras::measure(&model, batch, &dims)?;
            let training = commands::build_training::measure(&model, batch, &dims)?;
            let network = &model.compilation().network;
            match format {
                Format::Table => print!(
                    "{}{}{}",
                    report::table::render(&summary, network, depth),
                    facts.table_lines(),
                    training
                        .as_ref()
                        .map_or(String::new(), |training| training.table_lines())
                ),
                Format::Json => {
                    let json = facts.add_to_json(&report::json::render(&summary, network));
                    let json = commands::build_training::add_to_json(&json, training.as_ref());
                    println!("{json}")
                }
            }
            let broken: Vec<String> = budgets
                .iter()
                .filter_map(|budget| budget.check(&summary))
                .collect();
            for message in &broken {
                eprintln!("budget broken: {message}");
            }
            Ok(if broken.is_empty() { 0 } else { EXIT_BUDGET })
        }
        Command::Run {
            spec,
            inputs,
            weights,
            seed,
            output,
            threads,
            check_nan,
        } => commands::run::run(&commands::run::RunArgs {
            spec,
            inputs,
            weights,
            seed,
            output,
            threads,
            check_nan,
        }),
        Command::Bench {
            spec,
            batch,
            dims,
            threads,
            iterations,
            warmup,
            seed,
            train,
        } => {
            let args = commands::bench::BenchArgs {
                spec,
                batch,
                dims,
                threads,
                iterations,
                warmup,
                seed,
            };
            if train {
                commands::bench_train::bench_train(&args)
            } else {
                commands::bench::bench(&args)
            }
        }
        Command::Step {
            spec,
            batch,
            dims,
            sgd,
            steps,
            seed,
            inputs,
            weights,
            save,
            threads,
        } => commands::step::step(&commands::step::StepArgs {
            spec,
            batch,
            dims,
            sgd: sgd.flags(),
            steps,
            seed,
            inputs,
            weights,
            save,
            threads,
        }),
        Command::Train {
            spec,
            inputs,
            batch,
            epochs,
            sgd,
            shuffle,
            seed,
            log_every,
            weights,
            save,
            threads,
        } => commands::train::train(&commands::train::TrainArgs {
            spec,
            inputs,
            batch,
            epochs,
            sgd: sgd.flags(),
            shuffle,
            seed,
            log_every,
            weights,
            save,
            threads,
        }),
        Command::Gradcheck {
            spec,
            batch,
            dims,
            samples,
            step,
            tolerance,
            seed,
            weights,
            threads,
        } => commands::gradcheck::gradcheck(&commands::gradcheck::GradcheckArgs {
            spec,
            batch,
            dims,
            samples,
            step,
            tolerance,
            seed,
            weights,
            threads,
        }),
        Command::Check { spec } => {
            compile(&spec)?;
            Ok(0)
        }
        Command::Graph { spec, output } => {
            let (compilation, _) = compile(&spec)?;
            let dot = report::dot::render(&compilation);
            match output {
                None => print!("{dot}"),
                Some(path) => report::dot::write(&dot, &path).map_err(Failure::Usage)?,
            }
            Ok(0)
        }
    }
}

fn compile(args: &SpecArgs) -> Result<(nnc::Compilation, String), Failure> {
    let text = std::fs::read_to_string(&args.spec).map_err(|error| {
        Failure::Usage(format!(
            "cannot read spec `{}`: {error}",
            args.spec.display()
        ))
    })?;
    let options = options(args)?;
    let name = args.spec.display().to_string();
    match nnc::compile(&text, &options) {
        Ok(compilation) => Ok((compilation, text)),
        Err(diagnostics) => Err(Failure::Spec(nnc::render_diagnostics(
            &diagnostics,
            &name,
            &text,
        ))),
    }
}

fn options(args: &SpecArgs) -> Result<ElaborateOptions, Failure> {
    let mut options = ElaborateOptions::default();
    for setting in &args.set {
        let (name, value) = setting.split_once('=').ok_or_else(|| {
            Failure::Usage(format!("--set expects NAME=VALUE, found `{setting}`"))
        })?;
        let value = match value {
            "true" => OverrideValue::Bool(true),
            "false" => OverrideValue::Bool(false),
            _ => match value.parse::<i64>() {
                Ok(number) => OverrideValue::Int(number),
                Err(_) => OverrideValue::Float(
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|number| number.is_finite())
                        .ok_or_else(|| {
                            Failure::Usage(format!(
                                "--set {name}: `{value}` is not a number or boolean"
                            ))
                        })?,
                ),
            },
        };
        options
            .param_overrides
            .push((name.trim().to_string(), value));
    }
    for setting in &args.input_shape {
        let (name, dims) = setting.split_once('=').ok_or_else(|| {
            Failure::Usage(format!(
                "--input-shape expects NAME=DIMS such as image=3x32x32, found `{setting}`"
            ))
        })?;
        let dims = dims
            .split('x')
            .map(|dim| dim.trim().parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                Failure::Usage(format!(
                    "--input-shape {name}: `{dims}` is not a list of sizes like 3x32x32"
                ))
            })?;
        options
            .input_shape_overrides
            .push((name.trim().to_string(), dims));
    }
    Ok(options)
}
