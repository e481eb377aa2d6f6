//! # nnc: a compiler for neural-network specs
//!
//! A spec in the `.nn` language (see `docs/language.md`) describes a network with blocks,
//! `repeat`, conditionals and shared layers. nnc turns it into a **layer graph**
//! ([`ir::Network`]): a petgraph `DiGraph` whose nodes are layer applications, each carrying its
//! [`ir::Op`] with attributes, the instance path that names it (`layer2.0.conv1`, matching
//! PyTorch `state_dict` names for the reference specs) and the span of spec text that produced
//! it. Analyses never mutate the graph; they return side tables keyed by node id
//! ([`shape::ShapeAnalysis`], [`report::cost`]).
//!
//! The pipeline, one module per stage, driven by [`compile`]:
//! 1. [`syntax`]: text to AST with spans (pest, `grammar/nn.pest`);
//! 2. [`elaborate`]: AST to layer graph (blocks expanded, names resolved, paths assigned);
//! 3. [`shape`]: every node's shape and every layer's parameters, or all independent errors;
//! 4. [`report`]: the per-layer table, JSON, DOT and budget checks.
//!
//! Parsing and checking never panic on any input: every user mistake becomes a
//! [`diagnostic::Diagnostic`] that points at the spec.
//!
//! To run a network, use [`api`]: [`api::Model::compile_file`] checks a spec (with `--set` and
//! `--input-shape` overrides), [`api::Model::init_params`] or [`api::Model::load_weights`] binds
//! parameters, [`api::Model::for_batch`] specializes the forward pass to a batch size (cached),
//! and [`api::Forward::run`] runs it on `&[f32]` slices, returning outputs by name. Every input
//! or weight mistake is an [`api::ApiError`]. `docs/api.md` walks through it.

pub mod api;
pub mod autodiff;
pub mod codegen;
pub mod diagnostic;
pub mod elaborate;
pub mod fuse;
pub mod interpret;
pub mod ir;
pub mod kernels;
pub mod lower;
pub mod prim;
pub mod report;
pub mod runtime;
pub mod shape;
pub mod suggest;
pub mod syntax;
pub mod tensor;
pub mod train;
pub mod weights;

use diagnostic::Diagnostic;
use elaborate::ElaborateOptions;
use syntax::SourceId;

/// The built-in blocks (attention, transformer layers), written in the language itself.
pub const PRELUDE: &str = include_str!("prelude.nn");

/// A checked spec: its layer graph and the shape analysis of it.
pub struct Compilation {
    pub network: ir::Network,
    pub shapes: shape::ShapeAnalysis,
}

/// The stack of the thread that [`compile`] runs on. Parsing and elaboration recurse through
/// nested expressions, blocks and names; each recursion is bounded (`MAX_NESTING` in the parser,
/// `MAX_BLOCK_DEPTH` and `MAX_EVAL_DEPTH` in elaboration), and this stack holds the deepest
/// allowed recursion even in a debug build (about 16 MiB at `MAX_EVAL_DEPTH`), whatever the
/// caller's thread. Untouched stack pages cost no memory.
const COMPILE_STACK_SIZE: usize = 64 * 1024 * 1024;

/// Parses, elaborates and shape-checks a spec. Errors come back as diagnostics for people.
pub fn compile(
    spec_text: &str,
    options: &ElaborateOptions,
) -> Result<Compilation, Vec<Diagnostic>> {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("nnc-compile".into())
            .stack_size(COMPILE_STACK_SIZE)
            .spawn_scoped(scope, || compile_here(spec_text, options));
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread to be had: compile on the caller's stack.
            Err(_) => compile_here(spec_text, options),
        }
    })
}

fn compile_here(
    spec_text: &str,
    options: &ElaborateOptions,
) -> Result<Compilation, Vec<Diagnostic>> {
    let program = syntax::parse_program(spec_text, SourceId::Spec)
        .map_err(|error| vec![Diagnostic::from(&error)])?;
    let prelude = syntax::parse_program(PRELUDE, SourceId::Prelude).unwrap_or_else(|error| {
        panic!("internal error (a bug in nnc): the prelude does not parse: {error}")
    });
    let network = elaborate::elaborate(&program, &prelude, options)
        .map_err(|errors| errors.iter().map(Diagnostic::from).collect::<Vec<_>>())?;
    let shapes = shape::infer_shapes(&network)
        .map_err(|errors| errors.iter().map(Diagnostic::from).collect::<Vec<_>>())?;
    Ok(Compilation { network, shapes })
}

/// Renders diagnostics against the spec (and prelude) text.
pub fn render_diagnostics(diagnostics: &[Diagnostic], spec_name: &str, spec_text: &str) -> String {
    diagnostic::render(
        diagnostics,
        &diagnostic::Sources {
            spec_name,
            spec_text,
            prelude_text: PRELUDE,
        },
    )
}
