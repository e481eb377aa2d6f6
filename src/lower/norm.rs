//! Lowering of softmax and the normalization layers. Batch norm depends on the mode: at
//! inference it normalizes with its running statistics (which later passes may fold into a
//! convolution); in training it normalizes with the batch's statistics and produces the
//! updated running statistics as extra graph values, as `model.train()` does in PyTorch.
//! Layer norm always uses the statistics of its input, so it is the same in both modes.

use super::{resolve_axis, GraphLowering, LowerError, LowerMode};
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

/// Batch norm on `[N, C, ...]` in the lowering's mode: see [`inference_batch_norm`] and
/// [`training_batch_norm`].
pub(super) fn batch_norm(
    cx: &mut GraphLowering,
    eps: f64,
    momentum: f64,
    affine: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    match cx.options.mode {
        LowerMode::Inference => inference_batch_norm(cx, eps, affine, x),
        LowerMode::Training => training_batch_norm(cx, eps, momentum, affine, x),
    }
}

/// `[C, 1, ...]`: a per-channel vector shaped to broadcast over the dims after `C` of `shape`.
fn channel_shape(shape: &[usize]) -> Vec<usize> {
    let mut channel_shape = vec![shape[1]];
    channel_shape.resize(shape.len() - 1, 1);
    channel_shape
}

/// Batch norm at inference:
/// `y = (x - running_mean) * (weight / sqrt(running_var + eps)) + bias`, with the per-channel
/// vectors reshaped to `[C, 1, ...]` to broadcast over the dims after `C`.
fn inference_batch_norm(
    cx: &mut GraphLowering,
    eps: f64,
    affine: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let channel_shape = channel_shape(&cx.out.shape(x));
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
    add_bias(cx, normalized, channel_shape)
}

/// `normalized + bias`, the bias reshaped to `channel_shape`.
fn add_bias(
    cx: &mut GraphLowering,
    normalized: PrimNodeId,
    channel_shape: Vec<usize>,
) -> Result<PrimNodeId, LowerError> {
    let bias = cx.parameter("bias")?;
    let bias = cx.out.reshape(bias, channel_shape)?;
    cx.out.binary(BinaryFn::Add, normalized, bias)
}

/// Batch norm in training mode, as `torch.nn.BatchNorm*d` after `model.train()`:
/// `y = (x - mean) / sqrt(var + eps) * weight + bias` with the batch's mean and biased variance
/// over every dim but the channel dim, and the running statistics updated with `momentum`:
/// `running_mean' = (1 - m) running_mean + m mean`, `running_var' = (1 - m) running_var +
/// m var * n / (n - 1)` (the unbiased variance, `n` values per channel). The updates become the
/// graph outputs `buffer_update.<name>` (see [`GraphLowering::record_buffer_update`]).
///
/// PyTorch's `num_batches_tracked` only matters when `momentum` is `None` (a cumulative
/// average), which the language cannot express, so it is no graph value: the weight store
/// counts it per training step (`ParamStore::track_batch`) and saves it for PyTorch.
fn training_batch_norm(
    cx: &mut GraphLowering,
    eps: f64,
    momentum: f64,
    affine: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(x);
    let channels = shape[1];
    let per_channel = shape.iter().product::<usize>() / channels.max(1);
    if cx.in_scan_body() {
        return Err(cx.training_error("batch norm inside a recurrent cell is not supported yet"));
    }
    if per_channel < 2 {
        return Err(cx.training_error(&format!(
            "batch norm needs more than one value per channel to compute batch statistics \
             (input {shape:?}), as in PyTorch"
        )));
    }
    let axes: Vec<usize> = (0..shape.len()).filter(|axis| *axis != 1).collect();
    let mean = cx.out.reduce(ReduceFn::Mean, x, axes.clone(), true)?;
    let centered = cx.out.binary(BinaryFn::Sub, x, mean)?;
    let squares = cx.out.binary(BinaryFn::Mul, centered, centered)?;
    let variance = cx.out.reduce(ReduceFn::Mean, squares, axes, true)?;
    let mut scale = inverse_std(cx, variance, eps)?;
    let channel_shape = channel_shape(&shape);
    if affine {
        let weight = cx.parameter("weight")?;
        let weight = cx.out.reshape(weight, channel_shape.clone())?;
        scale = cx.out.binary(BinaryFn::Mul, scale, weight)?;
    }
    let normalized = cx.out.binary(BinaryFn::Mul, centered, scale)?;
    let mean = cx.out.reshape(mean, vec![channels])?;
    let variance = cx.out.reshape(variance, vec![channels])?;
    update_running_statistics(cx, momentum, mean, variance, per_channel)?;
    if !affine {
        return Ok(normalized);
    }
    add_bias(cx, normalized, channel_shape)
}

/// Records `running' = (1 - momentum) running + momentum batch` for the mean and the unbiased
/// variance. A layer applied twice updates twice, the second time from the first's result,
/// as two calls of one PyTorch module do.
fn update_running_statistics(
    cx: &mut GraphLowering,
    momentum: f64,
    mean: PrimNodeId,
    biased_variance: PrimNodeId,
    per_channel: usize,
) -> Result<(), LowerError> {
    let correction = cx
        .out
        .scalar(per_channel as f64 / (per_channel - 1) as f64)?;
    let unbiased = cx.out.binary(BinaryFn::Mul, biased_variance, correction)?;
    for (tensor, batch_value) in [("running_mean", mean), ("running_var", unbiased)] {
        let running = cx.running_buffer(tensor)?;
        let keep = cx.out.scalar(1.0 - momentum)?;
        let kept = cx.out.binary(BinaryFn::Mul, running, keep)?;
        let rate = cx.out.scalar(momentum)?;
        let added = cx.out.binary(BinaryFn::Mul, batch_value, rate)?;
        let updated = cx.out.binary(BinaryFn::Add, kept, added)?;
        cx.record_buffer_update(tensor, updated);
    }
    Ok(())
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
