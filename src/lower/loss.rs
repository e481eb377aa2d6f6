//! Lowering of the loss functions to primitives, with PyTorch's formulas (`F.mse_loss`,
//! `F.cross_entropy`, `F.binary_cross_entropy_with_logits`, `F.binary_cross_entropy`,
//! `F.gaussian_nll_loss`). Every loss ends in a reduction over all dims to a scalar `[]`.
//!
//! Class ids are integers, and the only primitive that reads integers is `Gather`: it looks the
//! id up in a constant column `[[0], [1], ..., [C-1]]`, which gives the id as a float, and the
//! one-hot row is then `relu(1 - |id - c|)` against the constant row `[0, 1, ..., C-1]`, exact
//! for whole numbers. That costs `O(C)` constants, not the `C x C` identity matrix a one-hot
//! lookup would need for a vocabulary of 10,000. An id outside `0..C` fails the lookup, as
//! PyTorch fails on one (there is no `ignore_index`).

use super::{resolve_axis, GraphLowering, LowerError};
use crate::ir::{LossAttrs, LossFunction, Reduction};
use crate::prim::*;
use crate::tensor::Tensor;

/// PyTorch clamps the logarithms of `binary_cross_entropy` at -100, so that a probability of
/// exactly 0 or 1 gives a large finite loss instead of infinity.
const BINARY_CROSS_ENTROPY_LOG_FLOOR: f64 = -100.0;

/// Lowers one `Op::Loss` on its operands (prediction, target and, for `gaussian_nll` with a
/// learned variance, the variance).
pub(super) fn loss(
    cx: &mut GraphLowering,
    attrs: &LossAttrs,
    operands: &[PrimNodeId],
) -> Result<PrimNodeId, LowerError> {
    let (input, target) = (operands[0], operands[1]);
    let reduction = attrs.reduction;
    match &attrs.function {
        LossFunction::MeanSquaredError => {
            let difference = cx.out.binary(BinaryFn::Sub, input, target)?;
            let squares = cx.out.binary(BinaryFn::Mul, difference, difference)?;
            reduce_all(cx, squares, reduction)
        }
        LossFunction::BinaryCrossEntropy => binary_cross_entropy(cx, input, target, reduction),
        LossFunction::BinaryCrossEntropyWithLogits { pos_weight } => {
            binary_cross_entropy_with_logits(cx, input, target, pos_weight.as_deref(), reduction)
        }
        LossFunction::CrossEntropy {
            class_dim,
            class_weights,
            label_smoothing,
        } => {
            let rank = cx.out.shape(input).len();
            let default_dim = if rank == 1 { 0 } else { 1 };
            let axis = resolve_axis(class_dim.unwrap_or(default_dim), rank);
            let options = CrossEntropy {
                axis,
                class_weights: class_weights.as_deref(),
                label_smoothing: *label_smoothing,
                reduction,
            };
            cross_entropy(cx, input, target, &options)
        }
        LossFunction::GaussianNll {
            fixed_variance,
            full,
            eps,
        } => {
            let variance = match fixed_variance {
                Some(variance) => Variance::Fixed(*variance),
                None => Variance::Tensor(operands[2]),
            };
            gaussian_nll(cx, input, target, variance, *full, *eps, reduction)
        }
    }
}

/// The mean or the sum of every element: a scalar `[]`.
fn reduce_all(
    cx: &mut GraphLowering,
    x: PrimNodeId,
    reduction: Reduction,
) -> Result<PrimNodeId, LowerError> {
    let rank = cx.out.shape(x).len();
    if rank == 0 {
        return Ok(x);
    }
    let function = match reduction {
        Reduction::Mean => ReduceFn::Mean,
        Reduction::Sum => ReduceFn::Sum,
    };
    cx.out.reduce(function, x, (0..rank).collect(), false)
}

fn element_count(cx: &GraphLowering, x: PrimNodeId) -> usize {
    cx.out.shape(x).iter().product()
}

/// `x * value` for a compile-time number.
fn scaled(cx: &mut GraphLowering, x: PrimNodeId, value: f64) -> Result<PrimNodeId, LowerError> {
    let factor = cx.out.scalar(value)?;
    cx.out.binary(BinaryFn::Mul, x, factor)
}

/// `x + value` for a compile-time number.
fn shifted(cx: &mut GraphLowering, x: PrimNodeId, value: f64) -> Result<PrimNodeId, LowerError> {
    let term = cx.out.scalar(value)?;
    cx.out.binary(BinaryFn::Add, x, term)
}

/// A constant tensor of the given shape and row-major values.
fn constant(
    cx: &mut GraphLowering,
    shape: &[usize],
    values: Vec<f64>,
) -> Result<PrimNodeId, LowerError> {
    let tensor = Tensor::from_vec(shape, values).expect("the values fill the shape");
    cx.out.emit(PrimOp::Constant(Constant::Dense(tensor)), &[])
}

/// `-(t log(p) + (1 - t) log(1 - p))`, each log clamped at -100.
fn binary_cross_entropy(
    cx: &mut GraphLowering,
    probabilities: PrimNodeId,
    target: PrimNodeId,
    reduction: Reduction,
) -> Result<PrimNodeId, LowerError> {
    let floor = cx.out.scalar(BINARY_CROSS_ENTROPY_LOG_FLOOR)?;
    let one = cx.out.scalar(1.0)?;
    let log_p = cx.out.unary(UnaryFn::Log, probabilities)?;
    let log_p = cx.out.binary(BinaryFn::Max, log_p, floor)?;
    let complement = cx.out.binary(BinaryFn::Sub, one, probabilities)?;
    let log_complement = cx.out.unary(UnaryFn::Log, complement)?;
    let log_complement = cx.out.binary(BinaryFn::Max, log_complement, floor)?;
    let target_complement = cx.out.binary(BinaryFn::Sub, one, target)?;
    let positive = cx.out.binary(BinaryFn::Mul, target, log_p)?;
    let negative = cx
        .out
        .binary(BinaryFn::Mul, target_complement, log_complement)?;
    let likelihood = cx.out.binary(BinaryFn::Add, positive, negative)?;
    let reduced = reduce_all(cx, likelihood, reduction)?;
    cx.out.unary(UnaryFn::Neg, reduced)
}

/// The stable form: `log(1 + exp(-x)) = max(-x, 0) + log(1 + exp(-|x|))` never overflows.
/// Without a positive weight, `max(x, 0) - x t + log(1 + exp(-|x|))`; with one,
/// `(1 - t) x + (1 + (p - 1) t) (max(-x, 0) + log(1 + exp(-|x|)))`.
fn binary_cross_entropy_with_logits(
    cx: &mut GraphLowering,
    logits: PrimNodeId,
    target: PrimNodeId,
    pos_weight: Option<&[f64]>,
    reduction: Reduction,
) -> Result<PrimNodeId, LowerError> {
    let magnitude = cx.out.unary(UnaryFn::Abs, logits)?;
    let negative_magnitude = cx.out.unary(UnaryFn::Neg, magnitude)?;
    let log_term = cx.out.unary(UnaryFn::Softplus, negative_magnitude)?;
    let elementwise = match pos_weight {
        None => {
            let positive_part = cx.out.unary(UnaryFn::Relu, logits)?;
            let product = cx.out.binary(BinaryFn::Mul, logits, target)?;
            let difference = cx.out.binary(BinaryFn::Sub, positive_part, product)?;
            cx.out.binary(BinaryFn::Add, difference, log_term)?
        }
        Some(weights) => {
            let negated = cx.out.unary(UnaryFn::Neg, logits)?;
            let negative_part = cx.out.unary(UnaryFn::Relu, negated)?;
            let softplus_of_negated = cx.out.binary(BinaryFn::Add, negative_part, log_term)?;
            // `p - 1` broadcasts along the last dim, as PyTorch's `pos_weight` does.
            let weights_minus_one: Vec<f64> = weights.iter().map(|weight| weight - 1.0).collect();
            let weights_minus_one = constant(cx, &[weights.len()], weights_minus_one)?;
            let weighted_target = cx.out.binary(BinaryFn::Mul, weights_minus_one, target)?;
            let log_weight = shifted(cx, weighted_target, 1.0)?;
            let one = cx.out.scalar(1.0)?;
            let target_complement = cx.out.binary(BinaryFn::Sub, one, target)?;
            let linear = cx.out.binary(BinaryFn::Mul, target_complement, logits)?;
            let weighted = cx
                .out
                .binary(BinaryFn::Mul, log_weight, softplus_of_negated)?;
            cx.out.binary(BinaryFn::Add, linear, weighted)?
        }
    };
    reduce_all(cx, elementwise, reduction)
}

struct CrossEntropy<'a> {
    /// The class axis of the logits, resolved.
    axis: usize,
    class_weights: Option<&'a [f64]>,
    label_smoothing: f64,
    reduction: Reduction,
}

/// `-sum w_c t_c log_softmax(x)_c` over classes and samples, where `t` is the one-hot label (or
/// the given probabilities) smoothed to `(1 - s) t + s / C`; the mean divides by the sum of the
/// labels' weights for class ids (the number of samples without weights), and by the number of
/// samples for probabilities, as PyTorch does. Expanding the smoothing shows it is PyTorch's
/// `(1 - s) nll + (s / C) smooth_loss`, both divided by that same denominator.
fn cross_entropy(
    cx: &mut GraphLowering,
    logits: PrimNodeId,
    target: PrimNodeId,
    options: &CrossEntropy,
) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(logits);
    let rank = shape.len();
    let classes = shape[options.axis];
    let log_probabilities = super::norm::softmax(cx, options.axis as i64, true, logits)?;
    let class_ids = cx.out.graph.node(target).ty.element_type == crate::ir::ElementType::Int64;
    let mut target_distribution = if class_ids {
        one_hot(cx, target, classes, options.axis, rank)?
    } else {
        target
    };
    let smoothing = options.label_smoothing;
    if smoothing > 0.0 {
        let kept = scaled(cx, target_distribution, 1.0 - smoothing)?;
        target_distribution = shifted(cx, kept, smoothing / classes as f64)?;
    }
    let mut terms = cx
        .out
        .binary(BinaryFn::Mul, log_probabilities, target_distribution)?;
    // Class weights `[C, 1, ...]` broadcast over the dims after the class dim.
    let mut weight_shape = vec![classes];
    weight_shape.resize(rank - options.axis, 1);
    if let Some(weights) = options.class_weights {
        let broadcast_weights = constant(cx, &weight_shape, weights.to_vec())?;
        terms = cx.out.binary(BinaryFn::Mul, terms, broadcast_weights)?;
    }
    let total = reduce_all(cx, terms, Reduction::Sum)?;
    let negated = cx.out.unary(UnaryFn::Neg, total)?;
    if options.reduction == Reduction::Sum {
        return Ok(negated);
    }
    match options.class_weights {
        Some(weights) if class_ids => {
            // The labels' weights `w[y]`, looked up by class id, summed.
            let table = constant(cx, &[classes], weights.to_vec())?;
            let label_weights = cx.out.emit(PrimOp::Gather, &[table, target])?;
            let weight_sum = reduce_all(cx, label_weights, Reduction::Sum)?;
            cx.out.binary(BinaryFn::Div, negated, weight_sum)
        }
        _ => {
            let samples = element_count(cx, logits) / classes;
            scaled(cx, negated, 1.0 / samples as f64)
        }
    }
}

/// Class ids `[samples...]` as one-hot rows with the class dim at `axis` of a rank-`rank`
/// result (see the module doc for why it is built this way).
fn one_hot(
    cx: &mut GraphLowering,
    class_ids: PrimNodeId,
    classes: usize,
    axis: usize,
    rank: usize,
) -> Result<PrimNodeId, LowerError> {
    let class_numbers: Vec<f64> = (0..classes).map(|class| class as f64).collect();
    let id_column = constant(cx, &[classes, 1], class_numbers.clone())?;
    let ids = cx.out.emit(PrimOp::Gather, &[id_column, class_ids])?;
    let class_row = constant(cx, &[classes], class_numbers)?;
    let distance = cx.out.binary(BinaryFn::Sub, ids, class_row)?;
    let distance = cx.out.unary(UnaryFn::Abs, distance)?;
    let one = cx.out.scalar(1.0)?;
    let closeness = cx.out.binary(BinaryFn::Sub, one, distance)?;
    let rows = cx.out.unary(UnaryFn::Relu, closeness)?;
    // The classes are last; move them to `axis`.
    let perm: Vec<usize> = (0..rank)
        .map(|position| match position {
            position if position < axis => position,
            position if position == axis => rank - 1,
            position => position - 1,
        })
        .collect();
    cx.out.transpose(rows, perm)
}

enum Variance {
    /// `gaussian_nll(mean, target, var)` with a tensor (a learned variance).
    Tensor(PrimNodeId),
    /// `gaussian_nll(mean, target, 0.5)`: a known variance.
    Fixed(f64),
}

/// `0.5 (log(v) + (input - target)^2 / v)` with `v = max(var, eps)`, plus `0.5 log(2 pi)` when
/// `full`. PyTorch clamps `var` without recording the clamp for autograd (its gradient passes
/// to `var` even where clamped); here the clamp is a `max`, whose gradient is zero there.
fn gaussian_nll(
    cx: &mut GraphLowering,
    input: PrimNodeId,
    target: PrimNodeId,
    variance: Variance,
    full: bool,
    eps: f64,
    reduction: Reduction,
) -> Result<PrimNodeId, LowerError> {
    let difference = cx.out.binary(BinaryFn::Sub, input, target)?;
    let squares = cx.out.binary(BinaryFn::Mul, difference, difference)?;
    let elements = element_count(cx, squares) as f64;
    // Terms that are the same for every element add once to the mean and `elements` times to
    // the sum.
    let per_element_count = match reduction {
        Reduction::Mean => 1.0,
        Reduction::Sum => elements,
    };
    let reduced = match variance {
        Variance::Fixed(variance) => {
            let variance = variance.max(eps);
            let reduced_squares = reduce_all(cx, squares, reduction)?;
            let half_ratio = scaled(cx, reduced_squares, 0.5 / variance)?;
            shifted(cx, half_ratio, per_element_count * 0.5 * variance.ln())?
        }
        Variance::Tensor(variance) => {
            let input_shape = cx.out.shape(input);
            let variance_shape = cx.out.shape(variance);
            // `var` without the last dim: one variance per sample, broadcast over that dim.
            let variance = if variance_shape.len() + 1 == input_shape.len() {
                let mut shape = variance_shape;
                shape.push(1);
                cx.out.reshape(variance, shape)?
            } else {
                variance
            };
            let eps = cx.out.scalar(eps)?;
            let clamped = cx.out.binary(BinaryFn::Max, variance, eps)?;
            let log_variance = cx.out.unary(UnaryFn::Log, clamped)?;
            let ratio = cx.out.binary(BinaryFn::Div, squares, clamped)?;
            let elementwise = cx.out.binary(BinaryFn::Add, log_variance, ratio)?;
            let reduced = reduce_all(cx, elementwise, reduction)?;
            scaled(cx, reduced, 0.5)?
        }
    };
    if !full {
        return Ok(reduced);
    }
    let constant_term = 0.5 * (2.0 * std::f64::consts::PI).ln();
    shifted(cx, reduced, per_element_count * constant_term)
}
