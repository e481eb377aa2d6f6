//! Lowering of softmax and the normalization layers, with inference semantics: batch norm
//! normalizes with its running statistics, which later passes may fold into a convolution.

use super::{resolve_axis, GraphLowering, LowerError};
use crate::prim::*;

/// `softmax(x) = exp(x - max) / sum(exp(x - max))` along `dim`; subtracting the maximum keeps
/// `exp` finite. `log_softmax(x) = (x - max) - log(sum(exp(x - max)))`.
pub(super) fn softmax(
    cx: &mut GraphLowering,
    dim: i64,
    log: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let axis = resolve_axis(dim, cx.out.shape(x).len());
    let maximum = cx.out.reduce(ReduceFn::Max, x, vec![axis], true)?;
    let shifted = cx.out.binary(BinaryFn::Sub, x, maximum)?;
    let exponentials = cx.out.unary(UnaryFn::Exp, shifted)?;
    let total = cx
        .out
        .reduce(ReduceFn::Sum, exponentials, vec![axis], true)?;
    if log {
        let log_total = cx.out.unary(UnaryFn::Log, total)?;
        cx.out.binary(BinaryFn::Sub, shifted, log_total)
    } else {
        cx.out.binary(BinaryFn::Div, exponentials, total)
    }
}

/// `1 / sqrt(variance + eps)`.
fn inverse_std(
    cx: &mut GraphLowering,
    variance: PrimNodeId,
    eps: f64,
) -> Result<PrimNodeId, LowerError> {
    let eps = cx.out.scalar(eps)?;
    let shifted = cx.out.binary(BinaryFn::Add, variance, eps)?;
    let std = cx.out.unary(UnaryFn::Sqrt, shifted)?;
    cx.out.unary(UnaryFn::Reciprocal, std)
}

/// Batch norm at inference on `[N, C, ...]`:
/// `y = (x - running_mean) * (weight / sqrt(running_var + eps)) + bias`, with the per-channel
/// vectors reshaped to `[C, 1, ...]` to broadcast over the dims after `C`.
pub(super) fn batch_norm(
    cx: &mut GraphLowering,
    eps: f64,
    affine: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(x);
    let mut channel_shape = vec![shape[1]];
    channel_shape.resize(shape.len() - 1, 1);
    let running_mean = cx.parameter("running_mean")?;
    let running_var = cx.parameter("running_var")?;
    let mut scale = inverse_std(cx, running_var, eps)?;
    if affine {
        let weight = cx.parameter("weight")?;
        scale = cx.out.binary(BinaryFn::Mul, scale, weight)?;
    }
    let mean = cx.out.reshape(running_mean, channel_shape.clone())?;
    let centered = cx.out.binary(BinaryFn::Sub, x, mean)?;
    let scale = cx.out.reshape(scale, channel_shape.clone())?;
    let normalized = cx.out.binary(BinaryFn::Mul, centered, scale)?;
    if !affine {
        return Ok(normalized);
    }
    let bias = cx.parameter("bias")?;
    let bias = cx.out.reshape(bias, channel_shape)?;
    cx.out.binary(BinaryFn::Add, normalized, bias)
}

/// Layer norm over the last `normalized_dims` dims, with the biased variance as PyTorch:
/// `y = (x - mean) / sqrt(mean((x - mean)^2) + eps) * weight + bias`.
pub(super) fn layer_norm(
    cx: &mut GraphLowering,
    normalized_dims: usize,
    eps: f64,
    affine: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let rank = cx.out.shape(x).len();
    let axes: Vec<usize> = (rank - normalized_dims..rank).collect();
    let mean = cx.out.reduce(ReduceFn::Mean, x, axes.clone(), true)?;
    let centered = cx.out.binary(BinaryFn::Sub, x, mean)?;
    let squares = cx.out.binary(BinaryFn::Mul, centered, centered)?;
    let variance = cx.out.reduce(ReduceFn::Mean, squares, axes, true)?;
    let scale = inverse_std(cx, variance, eps)?;
    let normalized = cx.out.binary(BinaryFn::Mul, centered, scale)?;
    if !affine {
        return Ok(normalized);
    }
    let weight = cx.parameter("weight")?;
    let scaled = cx.out.binary(BinaryFn::Mul, normalized, weight)?;
    let bias = cx.parameter("bias")?;
    cx.out.binary(BinaryFn::Add, scaled, bias)
}
