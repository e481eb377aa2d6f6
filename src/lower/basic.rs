//! Lowering of dense layers, elementwise ops, layout ops and reductions.

use super::{resolve_axis, GraphLowering, LowerError};
use crate::ir::{self, Node, ReduceOp};
use crate::prim::*;
use crate::tensor::Tensor;

/// `dense`: `x @ weight^T + bias`, with weight `[out, in]`. A rank-1 input is a one-row matrix.
pub(super) fn dense(
    cx: &mut GraphLowering,
    bias: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let weight = cx.parameter("weight")?;
    let weight_transposed = cx.out.transpose_matrix(weight)?;
    let shape = cx.out.shape(x);
    let product = if shape.len() == 1 {
        let row = cx.out.reshape(x, vec![1, shape[0]])?;
        let product = cx.out.matmul(row, weight_transposed)?;
        let features = cx.out.shape(product)[1];
        cx.out.reshape(product, vec![features])?
    } else {
        cx.out.matmul(x, weight_transposed)?
    };
    if !bias {
        return Ok(product);
    }
    let bias = cx.parameter("bias")?;
    cx.out.binary(BinaryFn::Add, product, bias)
}

/// `transpose(dim0, dim1)`: a permutation that swaps two axes.
pub(super) fn swap_axes(
    cx: &mut GraphLowering,
    dim0: i64,
    dim1: i64,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let rank = cx.out.shape(x).len();
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(resolve_axis(dim0, rank), resolve_axis(dim1, rank));
    cx.out.transpose(x, perm)
}

pub(super) fn unary(
    cx: &mut GraphLowering,
    unary: ir::UnaryOp,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let function = match unary {
        ir::UnaryOp::Relu => UnaryFn::Relu,
        ir::UnaryOp::LeakyRelu { negative_slope } => UnaryFn::LeakyRelu { negative_slope },
        ir::UnaryOp::Sigmoid => UnaryFn::Sigmoid,
        ir::UnaryOp::Tanh => UnaryFn::Tanh,
        ir::UnaryOp::Gelu => UnaryFn::Gelu,
        ir::UnaryOp::Silu => UnaryFn::Silu,
        ir::UnaryOp::Exp => UnaryFn::Exp,
        ir::UnaryOp::Log => UnaryFn::Log,
        ir::UnaryOp::Sqrt => UnaryFn::Sqrt,
        ir::UnaryOp::Neg => UnaryFn::Neg,
        ir::UnaryOp::Abs => UnaryFn::Abs,
        ir::UnaryOp::Softplus => UnaryFn::Softplus,
    };
    cx.out.unary(function, x)
}

fn binary_fn(op: ir::BinaryOp) -> BinaryFn {
    match op {
        ir::BinaryOp::Add => BinaryFn::Add,
        ir::BinaryOp::Sub => BinaryFn::Sub,
        ir::BinaryOp::Mul => BinaryFn::Mul,
        ir::BinaryOp::Div => BinaryFn::Div,
    }
}

pub(super) fn binary(
    cx: &mut GraphLowering,
    op: ir::BinaryOp,
    operands: &[PrimNodeId],
) -> Result<PrimNodeId, LowerError> {
    cx.out.binary(binary_fn(op), operands[0], operands[1])
}

/// `x op c` or `c op x`: a scalar constant broadcast against `x`.
pub(super) fn scalar(
    cx: &mut GraphLowering,
    op: ir::BinaryOp,
    value: f64,
    scalar_first: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let constant = cx.out.scalar(value)?;
    let (a, b) = if scalar_first {
        (constant, x)
    } else {
        (x, constant)
    };
    cx.out.binary(binary_fn(op), a, b)
}

/// Python slicing `start..end` (negative counts from the end, both clamped) along `dim`.
pub(super) fn slice(
    cx: &mut GraphLowering,
    dim: i64,
    start: i64,
    end: i64,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(x);
    let axis = resolve_axis(dim, shape.len());
    let size = shape[axis] as i64;
    let clamp = |index: i64| {
        let index = if index < 0 { index + size } else { index };
        index.clamp(0, size) as usize
    };
    cx.out.slice(x, axis, clamp(start), clamp(end))
}

/// `select(dim, index)`: a one-element slice whose axis is then dropped.
pub(super) fn select(
    cx: &mut GraphLowering,
    dim: i64,
    index: i64,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(x);
    let axis = resolve_axis(dim, shape.len());
    let index = if index < 0 {
        index + shape[axis] as i64
    } else {
        index
    };
    cx.out.select(x, axis, index as usize)
}

/// `mean`, `sum`, `max` over `dims`, or over every dim when `dims` is empty.
pub(super) fn reduce(
    cx: &mut GraphLowering,
    op: ReduceOp,
    dims: &[i64],
    keepdim: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let rank = cx.out.shape(x).len();
    let mut axes: Vec<usize> = if dims.is_empty() {
        (0..rank).collect()
    } else {
        dims.iter().map(|dim| resolve_axis(*dim, rank)).collect()
    };
    axes.sort();
    axes.dedup();
    let function = match op {
        ReduceOp::Mean => ReduceFn::Mean,
        ReduceOp::Sum => ReduceFn::Sum,
        ReduceOp::Max => ReduceFn::Max,
    };
    cx.out.reduce(function, x, axes, keepdim)
}

/// `causal_mask` on `[..., T, S]`: adds a constant `[T, S]` that is `-inf` where column > row.
/// Adding `-inf` equals replacing for every finite score, and softmax then gives those zero.
pub(super) fn causal_mask(cx: &mut GraphLowering, x: PrimNodeId) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(x);
    let (rows, columns) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let mut mask = Tensor::<f64>::zeros(&[rows, columns]);
    for row in 0..rows {
        for column in row + 1..columns {
            mask.data[row * columns + column] = f64::NEG_INFINITY;
        }
    }
    let mask = cx.out.emit(PrimOp::Constant(Constant::Dense(mask)), &[])?;
    cx.out.binary(BinaryFn::Add, x, mask)
}

/// `randn_like`: noise of `x`'s shape, seeded by the layer's instance path so that the same
/// spec gives the same noise.
pub(super) fn random_normal(
    cx: &mut GraphLowering,
    node: &Node,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(x);
    let seed = fnv1a(node.path.to_string().as_bytes());
    cx.out.emit(PrimOp::RandomNormal { seed, shape }, &[])
}

/// The 64-bit FNV-1a hash: stable across runs and platforms, unlike `std`'s hasher.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
