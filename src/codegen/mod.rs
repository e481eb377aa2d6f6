//! # Native code generation with Cranelift
//!
//! This module turns kernels into machine code at run time. It has two layers:
//! - [`jit`]: a [`Jit`] owns one Cranelift `JITModule` for the host CPU (ISA from
//!   `cranelift_native`, so AVX/AVX2/FMA are used when present) and compiles CLIF functions into
//!   [`CompiledFunction`]s. Every compiled function keeps the module's code memory alive, so a
//!   function pointer taken from it stays valid for as long as the handle lives.
//! - [`elementwise`]: a small expression IR for fused elementwise kernels (bias, activations,
//!   residual adds, batch-norm in inference) and its compiler, which emits an f32x4 loop,
//!   unrolled four times, with vectorized polynomial approximations of the transcendental
//!   functions ([`vector_math`]). The loop nest is in `elementwise_loops.rs`, the per-layout
//!   input access (broadcast runs, strided slices, repeated rows) in `elementwise_inputs.rs`.
//! - [`vector_library`]: exp, sigmoid and tanh in Rust with AVX-512 or AVX2 lanes, the same
//!   operations as [`vector_math`]'s (so the same bits, only wider). Kernels whose expression
//!   has such functions run in blocks, stage by stage, calling them between f32x4 loops
//!   (`elementwise_stages.rs`); Cranelift itself has no vectors wider than 128 bits.
//!
//! Invariant: generated code reads and writes only the buffers it is handed, at the indices its
//! broadcast layouts name; the safe entry points check every buffer length first, and only the
//! `unsafe` raw entry points leave that to the caller.
//!
//! Errors split in two tiers, like Cranelift's own: a malformed request from a caller (an
//! operand that does not exist, a broadcast over zero elements, a buffer of the wrong length) is
//! a [`CodegenError`] describing the mistake; Cranelift rejecting the CLIF we generated is a bug
//! in nnc and says so.

pub mod elementwise;
mod elementwise_inputs;
mod elementwise_loops;
mod elementwise_stages;
pub mod jit;
pub mod vector_library;
pub mod vector_math;

pub use elementwise::{
    compile_elementwise, BinaryOp, ElementwiseExpr, ElementwiseKernel, ElementwiseNode,
    InputLayout, NodeId, UnaryOp,
};
pub use jit::{CompiledFunction, ExternalSymbol, Jit, JitOptions, OptLevel};

/// Everything that can go wrong while compiling or running generated code.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CodegenError {
    /// The host CPU is not one Cranelift can generate code for.
    #[error("this CPU is not supported by the code generator: {0}")]
    UnsupportedHost(String),
    /// An expression refers to a node that does not precede it (or does not exist).
    #[error("node {node} uses operand {operand}, which is not an earlier node of the expression")]
    OperandOutOfOrder { node: usize, operand: usize },
    /// An expression reads an input it did not declare.
    #[error("node {node} reads input {input}, but the expression has {n_inputs} inputs")]
    MissingInput {
        node: usize,
        input: usize,
        n_inputs: usize,
    },
    /// An expression has no nodes, so there is nothing to compute.
    #[error("the elementwise expression is empty")]
    EmptyExpression,
    /// A layout with a zero extent (it would divide by zero), or strided runs longer than
    /// their stride.
    #[error("input {input} has a layout with a zero extent or runs past its stride: {layout}")]
    ZeroExtentLayout { input: usize, layout: String },
    /// A run-time call passed the wrong number of input buffers.
    #[error("the kernel takes {expected} input buffers but was given {given}")]
    WrongInputCount { expected: usize, given: usize },
    /// A run-time call passed a buffer whose length does not match its layout.
    #[error("input {input} has {given} elements but its layout ({layout}) needs {expected}")]
    WrongInputLength {
        input: usize,
        layout: String,
        expected: usize,
        given: usize,
    },
    /// A run-time call asked for elements past the end of the full-size inputs.
    #[error("elements {start}..{end} are out of range for inputs of {total} elements")]
    RangeOutOfBounds {
        start: usize,
        end: usize,
        total: usize,
    },
    /// Cranelift rejected the code nnc generated: always a bug in nnc.
    #[error("internal error (a bug in nnc): cranelift rejected function `{function}`: {message}")]
    Cranelift { function: String, message: String },
}
