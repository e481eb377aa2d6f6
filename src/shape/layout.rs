//! Shape rules of layout and combining ops: flatten, reshape, broadcasting, concat, matmul.

use super::rules::{float, RuleContext, RuleResult};
use super::{ShapeError, TensorInfo};
use crate::ir::*;

pub(super) fn flatten(
    start_dim: i64,
    end_dim: i64,
    input: &TensorInfo,
    context: &RuleContext,
) -> RuleResult {
    let shape = &input.shape;
    if shape.is_empty() {
        return Err(context.rank("flatten", "at least 1 dim", shape));
    }
    let start = context.axis(start_dim, shape.len(), "flatten")?;
    let end = context.axis(end_dim, shape.len(), "flatten")?;
    if start > end {
        return Err(context.mismatch(
            format!("flatten's start dim {start_dim} comes after its end dim {end_dim}"),
            None,
        ));
    }
    if start == end {
        return Ok((input.clone(), vec![]));
    }
    let mut merged: u64 = 1;
    for dim in &shape[start..=end] {
        let size = context.known(*dim, "flatten", "every flattened dim")?;
        merged = merged.saturating_mul(size);
    }
    let mut out: Shape = shape[..start].to_vec();
    out.push(Dim::Known(merged));
    out.extend_from_slice(&shape[end + 1..]);
    Ok((float(out), vec![]))
}

pub(super) fn reshape(
    target: &[ReshapeDim],
    input: &TensorInfo,
    context: &RuleContext,
) -> RuleResult {
    let shape = &input.shape;
    let mut input_known: u64 = 1;
    let mut input_symbols: Vec<SymbolId> = Vec::new();
    for dim in shape {
        match dim {
            Dim::Known(size) => input_known = input_known.saturating_mul(*size),
            Dim::Symbolic(symbol) => input_symbols.push(*symbol),
        }
    }
    let mut out = Vec::new();
    let mut target_known: u64 = 1;
    let mut target_symbols = Vec::new();
    let mut inferred_at = None;
    for (position, dim) in target.iter().enumerate() {
        let resolved = match dim {
            ReshapeDim::Copy => *shape.get(position).ok_or_else(|| {
                context.mismatch(
                    format!(
                        "reshape copies dim {position} (0), but the input has only {} dims",
                        shape.len()
                    ),
                    None,
                )
            })?,
            ReshapeDim::Size(size) => Dim::Known(*size),
            ReshapeDim::Symbol(symbol) => Dim::Symbolic(*symbol),
            ReshapeDim::Infer => {
                inferred_at = Some(position);
                Dim::Known(1)
            }
        };
        match resolved {
            Dim::Known(size) => target_known = target_known.saturating_mul(size),
            Dim::Symbolic(symbol) => target_symbols.push(symbol),
        }
        out.push(resolved);
    }
    input_symbols.sort();
    target_symbols.sort();
    if input_symbols != target_symbols {
        return Err(context.mismatch(
            format!(
                "reshape from {} must keep the symbolic dims in the target",
                context.format(shape)
            ),
            Some("keep a symbolic dim in place with 0, or name it (for example `N`)"),
        ));
    }
    let target_text = || {
        let parts: Vec<String> = target
            .iter()
            .map(|dim| match dim {
                ReshapeDim::Copy => "0".into(),
                ReshapeDim::Infer => "-1".into(),
                ReshapeDim::Size(size) => size.to_string(),
                ReshapeDim::Symbol(symbol) => context.network.symbol(*symbol).name.clone(),
            })
            .collect();
        parts.join(", ")
    };
    // Symbolic dims appear on both sides (checked above), so only the known sizes must agree.
    let not_counting = if input_symbols.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = input_symbols
            .iter()
            .map(|symbol| context.network.symbol(*symbol).name.as_str())
            .collect();
        format!(" (not counting {})", names.join(", "))
    };
    match inferred_at {
        Some(position) => {
            if !input_known.is_multiple_of(target_known) {
                return Err(context.mismatch(
                    format!(
                        "cannot reshape {} to ({}): its {input_known} elements{not_counting} are not divisible by {target_known}",
                        context.format(shape),
                        target_text()
                    ),
                    Some("the known target dims must divide the input's element count"),
                ));
            }
            out[position] = Dim::Known(input_known / target_known);
        }
        None if input_known != target_known => {
            return Err(context.mismatch(
                format!(
                    "cannot reshape {} to ({}): the input has {input_known} elements{not_counting}, the target {target_known}",
                    context.format(shape),
                    target_text()
                ),
                Some("the target must hold as many elements as the input; use -1 for one dim to infer it"),
            ));
        }
        None => {}
    }
    Ok((float(out), vec![]))
}

pub(super) fn broadcast(
    left: &[Dim],
    right: &[Dim],
    op: &str,
    context: &RuleContext,
) -> Result<Shape, ShapeError> {
    let rank = left.len().max(right.len());
    let mut out = Vec::with_capacity(rank);
    for position in 0..rank {
        let pick = |shape: &[Dim]| {
            let offset = rank - shape.len();
            if position < offset {
                Dim::Known(1)
            } else {
                shape[position - offset]
            }
        };
        let (a, b) = (pick(left), pick(right));
        let dim = match (a, b) {
            _ if a == b => a,
            (Dim::Known(1), other) | (other, Dim::Known(1)) => other,
            _ => {
                let hint = if op == "add" {
                    "a skip connection needs matching shapes: add a projection (for example a 1x1 conv2d) on the shortcut"
                } else {
                    "shapes broadcast when each dim is equal or 1 (aligned from the right)"
                };
                return Err(context.mismatch(
                    format!(
                        "cannot {op} {} and {}: dim {position} is {} vs {}",
                        context.format(left),
                        context.format(right),
                        context.network.format_dim(a),
                        context.network.format_dim(b)
                    ),
                    Some(hint),
                ));
            }
        };
        out.push(dim);
    }
    Ok(out)
}

pub(super) fn concat(dim: i64, inputs: &[&TensorInfo], context: &RuleContext) -> RuleResult {
    let first = &inputs[0].shape;
    let axis = context.axis(dim, first.len(), "concat")?;
    let mut total: u64 = 0;
    for (index, input) in inputs.iter().enumerate() {
        let shape = &input.shape;
        if shape.len() != first.len() {
            return Err(context.mismatch(
                format!(
                    "concat input {index} has shape {}, but input 0 has {}",
                    context.format(shape),
                    context.format(first)
                ),
                None,
            ));
        }
        for position in 0..shape.len() {
            if position != axis && shape[position] != first[position] {
                let what = match (shape.len(), position) {
                    (4, 2) | (4, 3) => "spatial size",
                    _ => "size",
                };
                return Err(context.mismatch(
                    format!(
                        "concat along dim {axis} needs equal {what}s elsewhere: input {index} has shape {}, input 0 has {}",
                        context.format(shape),
                        context.format(first)
                    ),
                    Some("branches joined by concat must keep the same height and width (check strides and padding)"),
                ));
            }
        }
        total += context.known(shape[axis], "concat", "the concatenated dim")?;
    }
    let mut shape = first.clone();
    shape[axis] = Dim::Known(total);
    Ok((float(shape), vec![]))
}

pub(super) fn matmul(left: &TensorInfo, right: &TensorInfo, context: &RuleContext) -> RuleResult {
    let (a, b) = (&left.shape, &right.shape);
    if a.len() < 2 || b.len() < 2 {
        let short = if a.len() < 2 { a } else { b };
        return Err(context.rank("matmul", "at least 2 dims on each side", short));
    }
    let (m, k_left) = (a[a.len() - 2], a[a.len() - 1]);
    let (k_right, p) = (b[b.len() - 2], b[b.len() - 1]);
    if k_left != k_right {
        return Err(context.mismatch(
            format!(
                "matmul of {} and {}: inner dims {} and {} differ",
                context.format(a),
                context.format(b),
                context.network.format_dim(k_left),
                context.network.format_dim(k_right)
            ),
            Some("transpose one side, for example `transpose(k, -2, -1)`"),
        ));
    }
    let mut shape = broadcast(&a[..a.len() - 2], &b[..b.len() - 2], "matmul", context)?;
    shape.push(m);
    shape.push(p);
    Ok((float(shape), vec![]))
}
