//! Shape rules of the loss functions, and the check that a spec's `loss` is a scalar.
//!
//! Every loss returns a scalar `[]`. The operands must line up as PyTorch requires, but without
//! its silent broadcasting of `mse_loss(input, target)` (a warning there, and almost always a
//! mistake): prediction and target have one shape. `cross_entropy` reads int class ids with the
//! logits' shape without the class dim, or float class probabilities with the logits' shape.

use super::rules::{float, RuleContext, RuleResult};
use super::{ShapeError, ShapeTable, TensorInfo};
use crate::ir::*;

/// The shape rule of `Op::Loss`.
pub(super) fn loss(attrs: &LossAttrs, inputs: &[&TensorInfo], context: &RuleContext) -> RuleResult {
    let name = attrs.function.name();
    let is_cross_entropy = matches!(attrs.function, LossFunction::CrossEntropy { .. });
    for (position, input) in inputs.iter().enumerate() {
        // Only cross_entropy's target (operand 1) may hold class ids.
        if input.element_type == ElementType::Int64 && !(is_cross_entropy && position == 1) {
            return Err(context.mismatch(
                format!(
                    "`{name}` needs float tensors, but its operand {} holds integers",
                    context.format(&input.shape)
                ),
                Some("only `cross_entropy` reads integer class ids"),
            ));
        }
    }
    let (input, target) = (&inputs[0].shape, &inputs[1].shape);
    match &attrs.function {
        LossFunction::MeanSquaredError | LossFunction::BinaryCrossEntropy => {
            same_shape(name, input, target, context)?;
        }
        LossFunction::BinaryCrossEntropyWithLogits { pos_weight } => {
            same_shape(name, input, target, context)?;
            if let Some(weights) = pos_weight {
                check_positive_weights(weights.len(), input, context)?;
            }
        }
        LossFunction::CrossEntropy {
            class_dim,
            class_weights,
            ..
        } => cross_entropy(
            *class_dim,
            class_weights.as_deref(),
            inputs[0],
            inputs[1],
            context,
        )?,
        LossFunction::GaussianNll { fixed_variance, .. } => {
            same_shape(name, input, target, context)?;
            if fixed_variance.is_none() {
                variance_shape(input, &inputs[2].shape, context)?;
            }
        }
    }
    Ok((float(Vec::new()), Vec::new()))
}

/// The spec's `loss` must be a scalar: a training step minimizes one number.
pub(super) fn check_loss_is_scalar(network: &Network, table: &ShapeTable) -> Option<ShapeError> {
    let (name, node) = network.loss.as_ref()?;
    let span = network.loss_span?;
    // A loss whose value failed its own rule was reported already.
    let shape = &table.infos.get(node)?.shape;
    if shape.is_empty() {
        return None;
    }
    Some(ShapeError::Mismatch {
        path: network.graph.node(*node).path.to_string(),
        span,
        message: format!(
            "the loss `{name}` must be a scalar (shape []), but it has shape {}",
            network.format_shape(shape)
        ),
        hint: Some(
            "reduce it to one number: `mean(x)` or `sum(x)` without `dim`, or a loss function such as `cross_entropy(logits, label)`".into(),
        ),
    })
}

fn same_shape(
    name: &str,
    input: &[Dim],
    target: &[Dim],
    context: &RuleContext,
) -> Result<(), ShapeError> {
    if input == target {
        return Ok(());
    }
    Err(context.mismatch(
        format!(
            "`{name}` compares input {} with target {}: they must have the same shape",
            context.format(input),
            context.format(target)
        ),
        None,
    ))
}

fn cross_entropy(
    class_dim: Option<i64>,
    class_weights: Option<&[f64]>,
    logits: &TensorInfo,
    target: &TensorInfo,
    context: &RuleContext,
) -> Result<(), ShapeError> {
    let shape = &logits.shape;
    if shape.is_empty() {
        return Err(context.rank("cross_entropy", "logits with a class dim", shape));
    }
    // PyTorch's class dim is 1, or 0 for unbatched `[C]` logits.
    let default_dim = if shape.len() == 1 { 0 } else { 1 };
    let axis = context.axis(
        class_dim.unwrap_or(default_dim),
        shape.len(),
        "cross_entropy",
    )?;
    let classes = context.known(shape[axis], "cross_entropy", "the class dim")?;
    if target.element_type == ElementType::Int64 {
        let mut expected = shape.clone();
        expected.remove(axis);
        if target.shape != expected {
            let mut classes_last = shape.clone();
            classes_last.pop();
            let hint = if axis + 1 != shape.len() && target.shape == classes_last {
                format!(
                    "the logits {} have their classes in dim {axis}; for classes in the last dim (a sequence model's [N, T, V]), pass `dim = -1`",
                    context.format(shape)
                )
            } else {
                format!(
                    "one class id per position: the logits {} without their class dim {axis} (a label does not follow `--input-shape` of another input: give it its own)",
                    context.format(shape)
                )
            };
            return Err(ShapeError::Mismatch {
                path: context.path.clone(),
                span: context.span,
                message: format!(
                    "`cross_entropy` needs class ids of shape {}, but the label has shape {}",
                    context.format(&expected),
                    context.format(&target.shape)
                ),
                hint: Some(hint),
            });
        }
    } else if target.shape != *shape {
        return Err(context.mismatch(
            format!(
                "a float target of `cross_entropy` holds class probabilities and must have the logits' shape {}, but it has shape {}",
                context.format(shape),
                context.format(&target.shape)
            ),
            Some("for class ids, declare the label as integers: `input label: [N] int`"),
        ));
    }
    if let Some(weights) = class_weights {
        if weights.len() as u64 != classes {
            return Err(context.mismatch(
                format!(
                    "`weight` lists {} class weights, but the logits {} have {classes} classes (dim {axis})",
                    weights.len(),
                    context.format(shape)
                ),
                Some("give one weight per class, in class order"),
            ));
        }
    }
    Ok(())
}

/// `pos_weight` broadcasts along the last dim, as PyTorch's: one number, or one per entry.
fn check_positive_weights(
    count: usize,
    input: &[Dim],
    context: &RuleContext,
) -> Result<(), ShapeError> {
    if count == 1 {
        return Ok(());
    }
    let last = input.last().copied().unwrap_or(Dim::Known(1));
    let size = context.known(last, "bce_with_logits", "the last dim (pos_weight)")?;
    if size == count as u64 {
        return Ok(());
    }
    Err(context.mismatch(
        format!(
            "`pos_weight` lists {count} weights, but the last dim of {} has size {size}",
            context.format(input)
        ),
        Some("give one number, or one weight per entry of the last dim (per class)"),
    ))
}

/// `var` has the input's shape, or that shape with the last dim 1 (one variance per sample) or
/// without the last dim, as `F.gaussian_nll_loss` accepts.
fn variance_shape(input: &[Dim], var: &[Dim], context: &RuleContext) -> Result<(), ShapeError> {
    let leading = &input[..input.len().saturating_sub(1)];
    let last_is_one = var.len() == input.len() && var.last() == Some(&Dim::Known(1));
    if var == input
        || (last_is_one && &var[..var.len() - 1] == leading)
        || (!input.is_empty() && var == leading)
    {
        return Ok(());
    }
    Err(context.mismatch(
        format!(
            "`gaussian_nll` needs `var` of the input's shape {}, or with its last dim 1 or removed, but `var` has shape {}",
            context.format(input),
            context.format(var)
        ),
        None,
    ))
}
