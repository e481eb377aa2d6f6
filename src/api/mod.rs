//! The library API: compile a spec once, bind parameters, and run the forward pass on `f32`
//! slices or tensors, reading outputs by name. Every mistake in what a caller hands in (the
//! number, shapes and values of inputs, missing or mismatched weights) is an [`ApiError`],
//! never a panic or undefined behaviour: inputs are checked here against the compiled shapes
//! before any kernel sees them.
//!
//! ```no_run
//! use nnc::api::{Model, ModelOptions};
//!
//! let options = ModelOptions::new().set_int("classes", 10).input_shape("image", &[3, 32, 32]);
//! let model = Model::compile_file("specs/resnet18.nn", &options)?;
//! let params = model.init_params(0); // PyTorch's default initialization, seeded
//! let forward = model.for_batch(8)?; // lowered and compiled for N = 8, cached by batch
//! let image = vec![0.5f32; 8 * 3 * 32 * 32];
//! let outputs = forward.run(&params, &[&image])?;
//! let logits = outputs.get("logits").expect("the spec's output");
//! assert_eq!(logits.shape, vec![8, 10]);
//! # Ok::<(), nnc::api::ApiError>(())
//! ```
//!
//! A [`Model`] holds the checked spec (the front end runs once). A [`Forward`] is one
//! specialization of it: concrete values for the symbolic dims (`N`, `T`), lowered to the
//! primitive graph and compiled by the runtime. Specializing is cheap (milliseconds), and the
//! model keeps every specialization it made, so asking again for the same sizes costs a lookup.
//! [`Model::forward`] picks the specialization from the input shapes themselves.

pub(crate) mod forward;
mod signature;
mod trainer;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use forward::{BoundForward, Forward, Outputs};
pub use signature::{InputSignature, SignatureDim};
pub use trainer::Trainer;

use crate::elaborate::{ElaborateOptions, OverrideValue};
use crate::lower::{LowerError, SymbolValues};
use crate::runtime::{Executable, RuntimeError};
use crate::tensor::Tensor;
use crate::train::TrainError;
use crate::weights::{ParamStore, WeightsError};
use crate::Compilation;

/// Everything that can go wrong between a spec and its outputs.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The spec does not compile; the diagnostics are rendered against its text.
    #[error("{rendered}")]
    Spec { rendered: String },
    #[error("cannot read `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("{0}")]
    Lower(#[from] LowerError),
    #[error("{0}")]
    Weights(#[from] WeightsError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// Building or running a training step: no loss in the spec, a gradient that cannot be
    /// taken, the optimizer's state.
    #[error("{0}")]
    Train(#[from] TrainError),
    #[error("the network takes {expected} input(s) ({names}), but {found} were given")]
    InputCount {
        expected: usize,
        found: usize,
        names: String,
    },
    #[error("input `{name}` should have shape {expected}, but has shape {found:?}")]
    InputShape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("input `{name}` should have {expected} elements (shape {shape:?}), but has {found}")]
    InputLength {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("input `{name}` contains NaN at element {index} (flat index into shape {shape:?})")]
    NanInput {
        name: String,
        index: usize,
        shape: Vec<usize>,
    },
    #[error("input `{name}` holds integer ids, but its element {index} is {value}")]
    NotAnInteger {
        name: String,
        index: usize,
        value: f32,
    },
    #[error(
        "input `{name}` holds ids into a table of {rows} rows, but its element {index} is {value}"
    )]
    IdOutOfRange {
        name: String,
        index: usize,
        value: f32,
        rows: usize,
    },
    #[error("the symbolic dim `{symbol}` is {first} in input `{first_input}` but {second} in input `{second_input}`")]
    InconsistentSymbol {
        symbol: String,
        first: usize,
        first_input: String,
        second: usize,
        second_input: String,
    },
    #[error("this network has no batch dim `N` (its inputs: {inputs})")]
    NoBatchDim { inputs: String },
    #[error("the network has no output `{name}` (its outputs: {known})")]
    UnknownOutput { name: String, known: String },
}

/// How to compile a spec: overrides of its top-level params and input sizes, the thread count
/// of the kernels, and whether inputs are checked for NaN.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// `--set` and `--input-shape`, exactly as on the command line.
    pub elaborate: ElaborateOptions,
    /// Threads of the kernels: 1 by default, 0 for all cores. Results do not depend on it.
    pub threads: usize,
    /// Reject inputs holding NaN (costs one pass over the inputs per run).
    pub check_nan: bool,
}

impl Default for ModelOptions {
    fn default() -> ModelOptions {
        ModelOptions {
            elaborate: ElaborateOptions::default(),
            threads: 1,
            check_nan: false,
        }
    }
}

impl ModelOptions {
    pub fn new() -> ModelOptions {
        ModelOptions::default()
    }

    /// Overrides a top-level `param` (as `--set name=value`).
    pub fn set(mut self, name: &str, value: OverrideValue) -> ModelOptions {
        self.elaborate
            .param_overrides
            .push((name.to_string(), value));
        self
    }

    pub fn set_int(self, name: &str, value: i64) -> ModelOptions {
        self.set(name, OverrideValue::Int(value))
    }

    /// Overrides an input's dims after the batch dim (as `--input-shape image=3x32x32`).
    pub fn input_shape(mut self, name: &str, dims: &[u64]) -> ModelOptions {
        self.elaborate
            .input_shape_overrides
            .push((name.to_string(), dims.to_vec()));
        self
    }

    pub fn threads(mut self, threads: usize) -> ModelOptions {
        self.threads = threads;
        self
    }

    pub fn check_nan(mut self, check_nan: bool) -> ModelOptions {
        self.check_nan = check_nan;
        self
    }
}

/// Where parameters come from.
#[derive(Clone, Debug)]
pub enum ParamSource<'a> {
    /// PyTorch's default initialization drawn from a seed ([`ParamStore::initialize`]).
    Seed(u64),
    /// A safetensors file with PyTorch state_dict names, every name and shape checked.
    Safetensors(&'a Path),
}

/// A checked spec, ready to be specialized and run.
pub struct Model {
    compilation: Compilation,
    threads: usize,
    check_nan: bool,
    front_end_time: Duration,
    /// Every specialization made so far; a handful at most, so a list searched by equality.
    specializations: Mutex<Vec<(SymbolValues, Arc<Forward>)>>,
}

impl Model {
    /// Parses, elaborates and shape-checks spec text; `spec_name` labels its diagnostics.
    pub fn compile_named(
        spec_name: &str,
        spec_text: &str,
        options: &ModelOptions,
    ) -> Result<Model, ApiError> {
        let started = Instant::now();
        let compilation = crate::compile(spec_text, &options.elaborate).map_err(|diagnostics| {
            ApiError::Spec {
                rendered: crate::render_diagnostics(&diagnostics, spec_name, spec_text),
            }
        })?;
        Ok(Model {
            compilation,
            threads: options.threads,
            check_nan: options.check_nan,
            front_end_time: started.elapsed(),
            specializations: Mutex::new(Vec::new()),
        })
    }

    /// A model of an already checked spec (its `elaborate` options are not used again).
    pub fn from_compilation(compilation: Compilation, options: &ModelOptions) -> Model {
        Model {
            compilation,
            threads: options.threads,
            check_nan: options.check_nan,
            front_end_time: Duration::ZERO,
            specializations: Mutex::new(Vec::new()),
        }
    }

    pub fn compile(spec_text: &str, options: &ModelOptions) -> Result<Model, ApiError> {
        Model::compile_named("spec", spec_text, options)
    }

    pub fn compile_file(path: impl AsRef<Path>, options: &ModelOptions) -> Result<Model, ApiError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ApiError::Read {
            path: path.display().to_string(),
            message: error.to_string(),
        })?;
        Model::compile_named(&path.display().to_string(), &text, options)
    }

    pub fn compilation(&self) -> &Compilation {
        &self.compilation
    }

    /// How long parsing, elaboration and shape checking took.
    pub fn front_end_time(&self) -> Duration {
        self.front_end_time
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The inputs in the order [`Forward::run`] takes them, with their symbolic dims.
    pub fn inputs(&self) -> Vec<InputSignature> {
        signature::input_signatures(&self.compilation)
    }

    pub fn output_names(&self) -> Vec<&str> {
        let outputs = &self.compilation.network.outputs;
        outputs.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// PyTorch's default initialization of every parameter, the same for the same seed.
    pub fn init_params(&self, seed: u64) -> ParamStore {
        ParamStore::initialize(&self.compilation, seed)
    }

    /// Reads a safetensors file; every tensor of the spec must be there with its shape.
    pub fn load_weights(&self, path: &Path) -> Result<ParamStore, ApiError> {
        Ok(ParamStore::load_safetensors(path, &self.compilation)?)
    }

    pub fn params(&self, source: &ParamSource<'_>) -> Result<ParamStore, ApiError> {
        match source {
            ParamSource::Seed(seed) => Ok(self.init_params(*seed)),
            ParamSource::Safetensors(path) => self.load_weights(path),
        }
    }

    /// The spec's own values of its symbolic dims (`N` = 1, `dim T = 32` gives 32).
    pub fn default_symbols(&self) -> SymbolValues {
        SymbolValues::report_values(&self.compilation.network)
    }

    /// The default symbol values with the batch dim `N` set to `batch`; an error when no input
    /// has the dim `N`, where a batch size would change nothing.
    pub fn symbols_for_batch(&self, batch: usize) -> Result<SymbolValues, ApiError> {
        let inputs = self.inputs();
        let batched = SignatureDim::Symbol("N".to_string());
        if !inputs.iter().any(|input| input.dims.contains(&batched)) {
            let inputs: Vec<String> = inputs.iter().map(|input| input.to_string()).collect();
            return Err(ApiError::NoBatchDim {
                inputs: inputs.join(", "),
            });
        }
        Ok(self.default_symbols().with("N", batch))
    }

    /// The symbol values that the given input shapes imply; symbols no input mentions keep
    /// their defaults.
    pub fn symbols_for_shapes(&self, shapes: &[&[usize]]) -> Result<SymbolValues, ApiError> {
        signature::bind_symbols(&self.inputs(), shapes, self.default_symbols())
    }

    /// The forward pass specialized to `symbols`, compiled on first use and cached.
    pub fn specialize(&self, symbols: &SymbolValues) -> Result<Arc<Forward>, ApiError> {
        if let Some(forward) = self.cached(symbols) {
            return Ok(forward);
        }
        let started = Instant::now();
        let graph = crate::lower::lower(&self.compilation, symbols)?;
        let id_limits = forward::integer_input_limits(&graph);
        let executable = Executable::new(graph, self.threads)?;
        let forward = Arc::new(Forward::new(
            executable,
            symbols.clone(),
            id_limits,
            self.check_nan,
            started.elapsed(),
        ));
        let mut cache = self.lock_cache();
        cache.push((symbols.clone(), Arc::clone(&forward)));
        Ok(forward)
    }

    /// The forward pass at batch size `batch` (other symbolic dims at their defaults).
    pub fn for_batch(&self, batch: usize) -> Result<Arc<Forward>, ApiError> {
        self.specialize(&self.symbols_for_batch(batch)?)
    }

    /// Runs the forward pass on tensors, specialized to their shapes (batch, sequence length).
    pub fn forward(
        &self,
        params: &ParamStore,
        inputs: &[Tensor<f32>],
    ) -> Result<Outputs, ApiError> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|input| input.shape.as_slice()).collect();
        let symbols = self.symbols_for_shapes(&shapes)?;
        self.specialize(&symbols)?.run_tensors(params, inputs)
    }

    /// Multiply-accumulates of one forward pass at these symbol values, by the report's cost
    /// model (docs/report.md); `2 x` this is the FLOP count that GFLOP/s figures use.
    pub fn forward_macs(&self, symbols: &SymbolValues) -> u64 {
        let mut network = self.compilation.network.clone();
        for symbol in &mut network.symbols {
            if let Some(value) = symbols.get(&symbol.name) {
                symbol.report_value = value as u64;
            }
        }
        let shapes = &self.compilation.shapes.table;
        network
            .graph
            .creation_order()
            .into_iter()
            .map(|id| crate::report::cost::node_cost(&network, &network.graph, shapes, id).macs)
            .fold(0, u64::saturating_add)
    }

    /// Forgets every specialization (each holds its compiled graph and constants).
    pub fn clear_cache(&self) {
        self.lock_cache().clear();
    }

    fn cached(&self, symbols: &SymbolValues) -> Option<Arc<Forward>> {
        let cache = self.lock_cache();
        let found = cache.iter().find(|(cached, _)| cached == symbols);
        found.map(|(_, forward)| Arc::clone(forward))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Vec<(SymbolValues, Arc<Forward>)>> {
        // A panic while holding the lock cannot leave the list half-changed (push and clear
        // are its only writes), so a poisoned lock is still a valid cache.
        self.specializations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
