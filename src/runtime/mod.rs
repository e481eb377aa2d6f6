//! Running a primitive graph in f32. [`Executable::new`] fuses the graph (`src/fuse`: folding
//! parameters and batch norm, grouping elementwise chains and GEMM epilogues into kernels),
//! compiles each group into a Cranelift function, and plans memory ([`plan`]); running walks
//! the kernels ([`program`], `run.rs`): Rust GEMMs and convolutions (`execute.rs`), JIT
//! elementwise functions (`jit_call.rs`), Rust loops for the rest, a loop per scan (`scan.rs`).
//!
//! Parameters are bound either for one call ([`Executable::run`], which caches the folded
//! values while the tensors they come from do not change) or for many
//! ([`Executable::bind`], which borrows the store and computes them once).
//! A training step is compiled with [`Executable::with_parameter_updates`]: some outputs are
//! declared the new values of parameters, and [`Executable::run_in_place`] has the kernels that
//! compute them write the parameters' own buffers (`in_place.rs`, `in_place_run.rs`).
//!
//! Every buffer handed to a kernel has been checked against the compiled shapes first: inputs
//! and parameters at the API boundary here, arena ranges by the plan, and each JIT function's
//! input lengths against its layouts when it was compiled.
//!
//! An [`Executable`] is compiled once per shape specialization (batch size and other symbolic
//! dims) and can run any number of times with any bound parameters.

mod bind;
mod convolution;
mod elementwise;
mod execute;
mod in_place;
mod in_place_run;
mod jit_call;
mod layout;
pub mod peak_memory;
pub mod plan;
mod pool_argmax;
mod prepack;
mod program;
mod random_fill;
mod reduce;
mod row_normalization;
mod run;
mod scan;
mod strided_matmul;
mod transpose;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codegen::{CodegenError, Jit, JitOptions};
use crate::fuse::print::{print_fused, print_kernels, KernelTimes};
use crate::fuse::{fuse, FuseOptions, FuseState, Fused, KernelKind, KernelPlan};
use crate::kernels::gemm::GemmError;
use crate::kernels::KernelError;
use crate::prim::PrimGraph;
use crate::tensor::Tensor;
use crate::weights::ParamStore;
use bind::{FoldCache, FoldedValues, ParameterValues};
pub use in_place::ParameterUpdate;
use prepack::PackedOperands;
use program::{compile_program, compile_program_with_updates, KernelCompiler, Program};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the network takes {expected} input(s) ({names}), but {found} were given")]
    InputCount {
        expected: usize,
        found: usize,
        names: String,
    },
    #[error("input `{name}` should have shape {expected:?} ({expected_len} elements), but has shape {found:?} with {found_len} elements")]
    InputShape {
        name: String,
        expected: Vec<usize>,
        expected_len: usize,
        found: Vec<usize>,
        found_len: usize,
    },
    #[error("input `{name}` contains NaN at element {index}")]
    NanInput { name: String, index: usize },
    #[error("parameter `{name}` is missing from the bound weights")]
    MissingParameter { name: String },
    #[error("parameter `{name}` should have shape {expected:?}, but has shape {found:?}")]
    ParameterShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("parameter `{name}` has shape {shape:?}, which needs {expected_len} elements, but its data has {found_len} elements")]
    ParameterData {
        name: String,
        shape: Vec<usize>,
        expected_len: usize,
        found_len: usize,
    },
    #[error("index {index} is not a row of a table with {rows} rows")]
    IndexOutOfRange { index: f64, rows: usize },
    #[error("not supported yet: {what}")]
    Unsupported { what: String },
    #[error("kernel error: {0}")]
    Kernel(#[from] KernelError),
    #[error("matmul error: {0}")]
    Gemm(#[from] GemmError),
    #[error("code generation: {0}")]
    Codegen(CodegenError),
    #[error("internal error (a bug in nnc): {0}")]
    Internal(String),
}

impl RuntimeError {
    pub fn internal(message: &str) -> RuntimeError {
        RuntimeError::Internal(message.to_string())
    }
}

/// How [`Executable::with_options`] compiles.
#[derive(Clone, Debug)]
pub struct ExecutableOptions {
    /// Fold parameters and batch norm, and fuse elementwise chains and epilogues into JIT
    /// kernels. Without it every primitive node runs on its own in Rust (the reference point
    /// for measuring fusion).
    pub fuse: bool,
    pub jit: JitOptions,
}

impl Default for ExecutableOptions {
    fn default() -> Self {
        ExecutableOptions {
            fuse: true,
            jit: JitOptions::default(),
        }
    }
}

/// A compiled primitive graph, ready to run.
pub struct Executable {
    graph: PrimGraph,
    fused: Fused,
    program: Program,
    /// Computes the folded parameters; `None` when nothing was folded.
    bind_program: Option<Program>,
    user_parameters: Vec<(String, Vec<usize>)>,
    /// Outputs written into parameters by [`Executable::run_in_place`].
    updates: Vec<ParameterUpdate>,
    fold_cache: FoldCache,
    threads: usize,
    fuse_time: Duration,
    compile_time: Duration,
    kernel_times: KernelTimes,
}

/// An executable with its parameters bound: folded values computed once, the store borrowed so
/// it cannot change meanwhile.
pub struct BoundExecutable<'a> {
    executable: &'a Executable,
    params: &'a ParamStore,
    folded: Arc<FoldedValues>,
    /// The matmul weights packed once for these parameters (`prepack.rs`), which cannot change
    /// while they are borrowed.
    packed: PackedOperands,
}

impl Executable {
    /// Fuses, compiles and plans memory; `threads` is used by the kernels (0: all cores).
    pub fn new(graph: PrimGraph, threads: usize) -> Result<Executable, RuntimeError> {
        Executable::with_options(graph, threads, &ExecutableOptions::default())
    }

    pub fn with_options(
        graph: PrimGraph,
        threads: usize,
        options: &ExecutableOptions,
    ) -> Result<Executable, RuntimeError> {
        Executable::with_parameter_updates(graph, threads, options, &[])
    }

    /// Compiles a graph some of whose outputs are the new values of parameters (a training
    /// step's weights and optimizer state): [`Executable::run_in_place`] writes each straight
    /// into its parameter's buffer and does not return it (see `in_place.rs`). Such an
    /// executable cannot run with read-only parameters.
    pub fn with_parameter_updates(
        graph: PrimGraph,
        threads: usize,
        options: &ExecutableOptions,
        updates: &[ParameterUpdate],
    ) -> Result<Executable, RuntimeError> {
        let started = Instant::now();
        let mut user_parameters = bind::user_parameters(&graph);
        let update_positions = in_place::resolve_updates(&graph, updates, &mut user_parameters)?;
        let fuse_options = FuseOptions {
            rewrite: options.fuse,
            group: options.fuse,
        };
        let fused = fuse(graph.clone(), fuse_options)
            .map_err(|error| RuntimeError::Internal(error.to_string()))?;
        let fuse_time = started.elapsed();
        let jit = Jit::new(&options.jit).map_err(RuntimeError::Codegen)?;
        let mut compiler = KernelCompiler::new(jit);
        let (program, kernel_times) =
            compile_program_with_updates(&fused, &mut compiler, threads, &update_positions)?;
        let bind_program = if fused.state.bind.outputs.is_empty() {
            None
        } else {
            let bind = &fused.state.bind;
            let bind_fused = Fused {
                state: FuseState::new(bind.clone()),
                kernels: KernelPlan::one_per_node(bind),
                bodies: Default::default(),
            };
            Some(compile_program(&bind_fused, &mut compiler, 1)?.0)
        };
        Ok(Executable {
            user_parameters,
            updates: updates.to_vec(),
            graph,
            fused,
            program,
            bind_program,
            fold_cache: FoldCache::default(),
            threads,
            fuse_time,
            compile_time: compiler.total_time,
            kernel_times,
        })
    }

    /// The graph as given (its inputs, outputs and parameters are the executable's).
    pub fn graph(&self) -> &PrimGraph {
        &self.graph
    }

    /// The graphs after fusion and the kernel plan.
    pub fn fused(&self) -> &Fused {
        &self.fused
    }

    /// Floats of working memory one run needs (the planned peak of intermediate values).
    pub fn planned_arena_floats(&self) -> usize {
        self.program.plan.arena_len
    }

    /// The memory plan of the run graph (`fused().state.graph`'s node ids), for reports.
    pub fn memory_plan(&self) -> &plan::MemoryPlan {
        &self.program.plan
    }

    /// The JIT compile time of each kernel of the run graph, by the node the kernel writes
    /// (a scan's includes its body's; a reused function counts zero), in kernel order.
    pub fn kernel_compile_times(&self) -> Vec<(crate::prim::PrimNodeId, Duration)> {
        fn total(times: &KernelTimes) -> Duration {
            let own = times.per_kernel.iter().flatten().map(|time| match time {
                crate::fuse::print::JitCompile::Compiled(time) => *time,
                crate::fuse::print::JitCompile::Reused => Duration::ZERO,
            });
            own.sum::<Duration>() + times.bodies.values().map(total).sum::<Duration>()
        }
        let kernels = &self.fused.kernels.kernels;
        kernels
            .iter()
            .zip(&self.kernel_times.per_kernel)
            .map(|(kernel, time)| {
                let own = match time {
                    Some(crate::fuse::print::JitCompile::Compiled(time)) => *time,
                    _ => Duration::ZERO,
                };
                let body = self
                    .kernel_times
                    .bodies
                    .get(&kernel.output)
                    .map_or(Duration::ZERO, total);
                (kernel.output, own + body)
            })
            .collect()
    }

    /// Floats the intermediate values would need without reusing memory.
    pub fn unshared_floats(&self) -> usize {
        self.program.plan.unshared_len
    }

    /// The summed compile time of every JIT function (scan bodies and the bind step included).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// The time the fusion passes and kernel grouping took.
    pub fn fuse_time(&self) -> Duration {
        self.fuse_time
    }

    /// The number of kernels one run executes (outside scan bodies; reshapes are free).
    pub fn kernel_count(&self) -> usize {
        self.fused
            .kernels
            .kernels
            .iter()
            .filter(|kernel| !matches!(kernel.kind, KernelKind::Alias))
            .count()
    }

    /// `--emit kernels`: one line per kernel, with compile times, then the total.
    pub fn kernel_listing(&self) -> String {
        let mut listing = print_kernels(&self.fused, Some(&self.kernel_times));
        listing.push_str(&format!(
            "total: {} kernels, JIT compile {:.3} ms, fusion {:.3} ms\n",
            self.kernel_count(),
            self.compile_time.as_secs_f64() * 1e3,
            self.fuse_time.as_secs_f64() * 1e3
        ));
        listing
    }

    /// `--emit fused`: the bind graph and the run graph grouped into kernels.
    pub fn fused_listing(&self) -> String {
        print_fused(&self.fused)
    }

    /// Checks `params` against the compiled shapes and computes the folded parameters once.
    pub fn bind<'a>(&'a self, params: &'a ParamStore) -> Result<BoundExecutable<'a>, RuntimeError> {
        self.check_read_only()?;
        bind::check_parameters(&self.user_parameters, params)?;
        let folded = match &self.bind_program {
            Some(bind_program) => Arc::new(bind::evaluate(bind_program, params)?),
            None => Arc::new(FoldedValues::default()),
        };
        let values = ParameterValues {
            user: params,
            folded: &folded,
        };
        let bound = self.program.bind_parameters(&values)?;
        let packed = self.program.pack_constant_operands(&bound, &[])?;
        Ok(BoundExecutable {
            executable: self,
            params,
            folded,
            packed,
        })
    }

    /// Runs the graph on `inputs` (in the graph's input order) with parameters from `params`.
    /// Random ops draw with run key 0 (see [`Executable::run_with_key`]).
    pub fn run(
        &self,
        params: &ParamStore,
        inputs: &[Tensor<f32>],
    ) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        self.run_with_key(params, inputs, 0)
    }

    /// [`Executable::run`] with random ops (dropout masks, noise) drawing from the stream of
    /// `run_key`: the same key gives the same numbers as the interpreter's
    /// `interpret_with_key`, and a training loop passes the step number for fresh masks.
    pub fn run_with_key(
        &self,
        params: &ParamStore,
        inputs: &[Tensor<f32>],
        run_key: u64,
    ) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        self.check_read_only()?;
        bind::check_parameters(&self.user_parameters, params)?;
        self.check_inputs(inputs)?;
        let folded = match &self.bind_program {
            Some(bind_program) => self.fold_cache.get_or_compute(bind_program, params)?,
            None => Arc::new(FoldedValues::default()),
        };
        self.run_checked(params, &folded, None, inputs, run_key)
    }

    fn run_checked(
        &self,
        params: &ParamStore,
        folded: &FoldedValues,
        packed: Option<&PackedOperands>,
        inputs: &[Tensor<f32>],
        run_key: u64,
    ) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        let values = ParameterValues {
            user: params,
            folded,
        };
        let input_slices: Vec<&[f32]> = inputs.iter().map(|input| input.data.as_slice()).collect();
        self.program
            .run_timed(&values, packed, &input_slices, self.threads, run_key, None)
    }

    fn check_inputs(&self, inputs: &[Tensor<f32>]) -> Result<(), RuntimeError> {
        if inputs.len() != self.graph.inputs.len() {
            let names: Vec<&str> = self
                .graph
                .inputs
                .iter()
                .map(|(name, _)| name.as_str())
                .collect();
            return Err(RuntimeError::InputCount {
                expected: self.graph.inputs.len(),
                found: inputs.len(),
                names: names.join(", "),
            });
        }
        for ((name, id), input) in self.graph.inputs.iter().zip(inputs) {
            let expected = &self.graph.node(*id).ty.shape;
            let expected_len: usize = expected.iter().product();
            if &input.shape != expected || input.data.len() != expected_len {
                return Err(RuntimeError::InputShape {
                    name: name.clone(),
                    expected: expected.clone(),
                    expected_len,
                    found: input.shape.clone(),
                    found_len: input.data.len(),
                });
            }
        }
        Ok(())
    }
}

impl BoundExecutable<'_> {
    /// Runs the graph on `inputs` with the bound parameters (run key 0).
    pub fn run(&self, inputs: &[Tensor<f32>]) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        self.run_with_key(inputs, 0)
    }

    /// [`BoundExecutable::run`] with random ops drawing from the stream of `run_key`.
    pub fn run_with_key(
        &self,
        inputs: &[Tensor<f32>],
        run_key: u64,
    ) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        self.executable.check_inputs(inputs)?;
        self.executable.run_checked(
            self.params,
            &self.folded,
            Some(&self.packed),
            inputs,
            run_key,
        )
    }

    pub fn executable(&self) -> &Executable {
        self.executable
    }

    /// Runs once and returns each kernel's wall time next to its `--emit kernels` label and
    /// kind (`k3 conv2d+bias+epilogue`), in execution order; scans include their bodies.
    pub fn profile(&self, inputs: &[Tensor<f32>]) -> Result<Vec<(String, Duration)>, RuntimeError> {
        let executable = self.executable;
        executable.check_inputs(inputs)?;
        let values = ParameterValues {
            user: self.params,
            folded: &self.folded,
        };
        let packed = Some(&self.packed);
        let input_slices: Vec<&[f32]> = inputs.iter().map(|input| input.data.as_slice()).collect();
        let mut times = Vec::new();
        executable.program.run_timed(
            &values,
            packed,
            &input_slices,
            executable.threads,
            0,
            Some(&mut times),
        )?;
        let graph = &executable.fused.state.graph;
        let labels = executable
            .fused
            .kernels
            .kernels
            .iter()
            .filter(|kernel| !matches!(kernel.kind, KernelKind::Alias))
            .enumerate()
            .map(|(index, kernel)| format!("k{index} {}", kernel.kind.name(graph, kernel.output)));
        Ok(labels.zip(times).collect())
    }
}
