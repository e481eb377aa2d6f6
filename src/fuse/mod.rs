//! # Fusion: rewriting the primitive graph for inference, then grouping it into kernels
//!
//! The primitive op set stays closed (it is also the autodiff IR), so fusion never adds ops.
//! It works in two layers:
//!
//! 1. **Passes** rewrite a [`FuseState`]: the run-time graph (a [`PrimGraph`]) and the
//!    *bind graph*, which computes values that depend only on parameters and constants once,
//!    when parameters are bound. One pass per file, each returning whether it changed anything;
//!    [`run_to_fixpoint`] repeats a list of passes until none does:
//!    - [`fold_parameters`]: moves subgraphs that read only parameters and constants (a batch
//!      norm's `weight / sqrt(running_var + eps)`, a transposed dense weight) into the bind graph;
//!      the run graph reads their results as parameters named `fold%<node>`;
//!    - [`fold_batch_norm`]: `conv(x, W) * s[c]` becomes `conv(x, W * s)` (and a dense layer's
//!      `x @ W * s[j]` becomes `x @ (W * s)`), scaling the biases between them;
//!    - [`merge_bias_adds`]: `(y + a) + b` becomes `y + (a + b)` when `a` and `b` are folded;
//!    - [`shrink_conv_windows`]: kernel rows and columns that only ever meet zero padding (a
//!      3x3 convolution over a 1x1 feature map) are sliced off the weight;
//!    - [`flatten_summed_products`]: a batched product summed over its batches (the weight
//!      gradient of a dense layer over `[N, T, D]`) becomes one product over all the rows;
//!    - [`merge_recording_scans`]: a scan and the recording scan autodiff adds for its
//!      gradient (the same recurrence over the same operands) run as one scan;
//!    - [`eliminate_dead_nodes`]: removes what no output reads, in both graphs.
//! 2. **Grouping** ([`group_elementwise`], then [`attach_epilogues`], [`row_normalizations`]
//!    and [`matmul_operand_views`]) is an analysis: it returns a [`KernelPlan`], a side table
//!    listing kernels in execution order, each covering some prim nodes: a JIT elementwise
//!    chain, a matmul or convolution with a JIT epilogue (a matmul reading its operands through
//!    strided views of slices and transposes), a softmax or layer norm over rows, or one
//!    primitive run by the Rust runtime.
//!
//! [`fuse`] is the straight-line driver; `src/runtime` compiles its result. `print.rs` has the
//! text forms (`--emit fused`, `--emit kernels`).
//!
//! Invariant: every pass keeps the run graph's inputs, outputs (by name and type) and values,
//! up to floating-point reassociation; in debug builds the driver runs [`crate::prim::verify`]
//! on both graphs after every pass.

pub mod attach_epilogues;
pub mod eliminate_dead_nodes;
pub mod flatten_summed_products;
pub mod fold_batch_norm;
pub mod fold_parameters;
mod graph_edit;
pub mod group_elementwise;
mod kernel_plan;
pub mod matmul_operand_views;
pub mod merge_bias_adds;
pub mod merge_recording_scans;
pub mod print;
pub mod row_normalizations;
pub mod shrink_conv_windows;

pub use graph_edit::{parameter_only, schedule};
pub use kernel_plan::{
    ElementwiseGroup, Kernel, KernelKind, KernelPlan, OperandView, ProducerKernel, ProducerPost,
    RowNormalization, RowNormalizationKind,
};

use std::collections::BTreeMap;

use crate::prim::{verify, PrimGraph, PrimNodeId, PrimOp, PrimShapeError, VerifyError};

/// What the passes rewrite: the run-time graph and the graph evaluated at bind time.
#[derive(Clone, Debug)]
pub struct FuseState {
    /// The graph run on every call. Its `Parameter` nodes name either a tensor of the user's
    /// parameters or an output of `bind` (names `fold%<id>`, which no state_dict key has).
    pub graph: PrimGraph,
    /// Computes the folded values from the user's parameters; its outputs are named by the
    /// folded parameters they define. It has no inputs.
    pub bind: PrimGraph,
}

impl FuseState {
    pub fn new(graph: PrimGraph) -> FuseState {
        FuseState {
            graph,
            bind: PrimGraph::default(),
        }
    }
}

/// Which parts of fusion run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseOptions {
    /// Run the rewriting passes (folding, batch norm into weights). Scan bodies, whose
    /// parameters arrive as inputs, run without them.
    pub rewrite: bool,
    /// Group elementwise chains and epilogues into JIT kernels; without it every node is its
    /// own primitive kernel.
    pub group: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            rewrite: true,
            group: true,
        }
    }
}

/// The result of fusion: the rewritten graphs and the kernels of the run graph.
#[derive(Clone, Debug)]
pub struct Fused {
    pub state: FuseState,
    pub kernels: KernelPlan,
    /// Each scan node's body, fused on its own (grouping only: its parameters are inputs).
    pub bodies: BTreeMap<PrimNodeId, Fused>,
}

/// A pass: rewrites the state and says whether it changed anything.
pub type Pass = fn(&mut FuseState) -> Result<bool, FuseError>;

/// The rewriting passes in the order the driver runs them, by name.
pub const REWRITE_PASSES: &[(&str, Pass)] = &[
    ("fold_parameters", fold_parameters::run),
    ("fold_batch_norm", fold_batch_norm::run),
    ("merge_bias_adds", merge_bias_adds::run),
    ("shrink_conv_windows", shrink_conv_windows::run),
    ("flatten_summed_products", flatten_summed_products::run),
    ("merge_recording_scans", merge_recording_scans::run),
    ("eliminate_dead_nodes", eliminate_dead_nodes::run),
];

/// Rewrites convergence takes two rounds on every spec; a round more than this is a bug.
const MAX_ROUNDS: usize = 16;

/// A broken invariant while fusing: always a bug in nnc.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("after pass `{pass}`: {error}")]
    Verify {
        pass: &'static str,
        error: VerifyError,
    },
    #[error("internal error (a bug in nnc): a fusion rewrite built an ill-typed node: {0}")]
    Shape(#[from] PrimShapeError),
    #[error("internal error (a bug in nnc): the rewriting passes did not converge in {0} rounds")]
    NoFixpoint(usize),
    #[error("internal error (a bug in nnc): {0}")]
    Internal(String),
}

/// Runs the passes, then groups the run graph into kernels.
pub fn fuse(graph: PrimGraph, options: FuseOptions) -> Result<Fused, FuseError> {
    let mut state = FuseState::new(graph);
    check(&state, "lowering")?;
    if options.rewrite {
        run_to_fixpoint(&mut state, REWRITE_PASSES)?;
    }
    let kernels = if options.group {
        let mut plan = group_elementwise::run(&state.graph)?;
        attach_epilogues::run(&state.graph, &mut plan)?;
        row_normalizations::run(&state.graph, &mut plan)?;
        matmul_operand_views::run(&state.graph, &mut plan)?;
        plan
    } else {
        KernelPlan::one_per_node(&state.graph)
    };
    let mut bodies = BTreeMap::new();
    for id in state.graph.node_ids() {
        if let PrimOp::Scan { body, .. } = &state.graph.node(id).op {
            let body_options = FuseOptions {
                rewrite: false,
                ..options
            };
            bodies.insert(id, fuse(body.graph.clone(), body_options)?);
        }
    }
    Ok(Fused {
        state,
        kernels,
        bodies,
    })
}

/// Runs `passes` in order, again and again, until a whole round changes nothing. Returns
/// whether anything changed.
pub fn run_to_fixpoint(
    state: &mut FuseState,
    passes: &[(&'static str, Pass)],
) -> Result<bool, FuseError> {
    let mut changed_any = false;
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        for (name, pass) in passes {
            if pass(state)? {
                changed = true;
                check(state, name)?;
            }
        }
        if !changed {
            return Ok(changed_any);
        }
        changed_any = true;
    }
    Err(FuseError::NoFixpoint(MAX_ROUNDS))
}

/// The verifier between passes, in debug builds (as Cranelift's `Context::optimize` does).
fn check(state: &FuseState, pass: &'static str) -> Result<(), FuseError> {
    if cfg!(debug_assertions) {
        for graph in [&state.graph, &state.bind] {
            verify(graph).map_err(|error| FuseError::Verify { pass, error })?;
        }
    }
    Ok(())
}
