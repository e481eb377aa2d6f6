//! Row normalizations: softmax and layer norm over the trailing axes each become one kernel.
//!
//! Lowering writes softmax as `max`, `x - max`, `exp`, `sum`, `e / sum` and layer norm as
//! `mean`, `x - mean`, its square, `mean`, `1 / sqrt(var + eps)`, the product and the optional
//! affine `* weight + bias`: primitives with gradient rules, which autodiff needs. Grouped as
//! usual they are four and six kernels, each a pass over the tensor (the transformer layer's
//! softmax took 111 us of its 1.6 ms). This grouping step recognizes the two patterns in the
//! kernel plan and replaces their kernels with one [`RowNormalization`] kernel, which the
//! runtime computes row by row while the row is in L1 (`kernels/row_normalization.rs`).
//!
//! A pattern is replaced only when every intermediate value has no reader outside it (in a
//! training graph the backward pass reads them, so training keeps the primitive kernels) and
//! the kernels that compute it compute nothing else. The row is the reduced trailing axes,
//! contiguous in a row-major tensor.

use std::collections::HashSet;

use super::graph_edit::sole_user;
use super::kernel_plan::{RowNormalization, RowNormalizationKind};
use super::{FuseError, Kernel, KernelKind, KernelPlan};
use crate::ir::ElementType;
use crate::prim::{BinaryFn, Constant, PrimGraph, PrimNodeId, PrimOp, ReduceFn, UnaryFn};

pub fn run(graph: &PrimGraph, plan: &mut KernelPlan) -> Result<(), FuseError> {
    let candidates: Vec<PrimNodeId> = graph.node_ids().collect();
    for reduction in candidates {
        let Some(found) = softmax_at(graph, reduction).or_else(|| layer_norm_at(graph, reduction))
        else {
            continue;
        };
        replace_kernels(plan, found);
    }
    Ok(())
}

/// A recognized pattern: its nodes (the last is its result) and the kernel that replaces them.
struct Found {
    nodes: Vec<PrimNodeId>,
    output: PrimNodeId,
    row: RowNormalization,
}

/// Replaces the kernels computing `found.nodes` with one kernel, placed where the last of them
/// ran (every value the pattern reads is computed before its first kernel). Leaves the plan
/// alone when any of those kernels also computes a value outside the pattern.
fn replace_kernels(plan: &mut KernelPlan, found: Found) {
    let members: HashSet<PrimNodeId> = found.nodes.iter().copied().collect();
    let touching: Vec<usize> = (0..plan.kernels.len())
        .filter(|index| {
            plan.kernels[*index]
                .covers
                .iter()
                .any(|node| members.contains(node))
        })
        .collect();
    let only_members = touching.iter().all(|index| {
        plan.kernels[*index]
            .covers
            .iter()
            .all(|node| members.contains(node))
    });
    let covered: HashSet<PrimNodeId> = touching
        .iter()
        .flat_map(|index| plan.kernels[*index].covers.iter().copied())
        .collect();
    let Some(&last) = touching.last() else {
        return;
    };
    if !only_members || covered != members {
        return;
    }
    let kernel = Kernel {
        kind: KernelKind::RowNormalization(found.row),
        output: found.output,
        covers: found.nodes,
    };
    plan.kernels[last] = kernel;
    for index in touching.iter().rev().skip(1) {
        plan.kernels.remove(*index);
    }
}

/// `(operand, row length)` when `id` is `reduce(op)` over trailing axes, keeping them, of an f32
/// operand.
fn trailing_reduction(
    graph: &PrimGraph,
    id: PrimNodeId,
    op: ReduceFn,
) -> Option<(PrimNodeId, usize)> {
    let PrimOp::Reduce {
        op: found,
        axes,
        keepdim: true,
    } = &graph.node(id).op
    else {
        return None;
    };
    let [operand] = graph.operands(id)[..] else {
        return None;
    };
    let shape = &graph.node(operand).ty.shape;
    let rank = shape.len();
    let trailing = !axes.is_empty()
        && axes.last() == Some(&(rank.checked_sub(1)?))
        && axes.windows(2).all(|pair| pair[1] == pair[0] + 1);
    let floats = graph.node(operand).ty.element_type == ElementType::Float32;
    if *found != op || !trailing || !floats {
        return None;
    }
    let cols: usize = axes.iter().map(|axis| shape[*axis]).product();
    (cols > 0).then_some((operand, cols))
}

/// The operands of a binary node `op`.
fn binary(graph: &PrimGraph, id: PrimNodeId, op: BinaryFn) -> Option<[PrimNodeId; 2]> {
    match (&graph.node(id).op, &graph.operands(id)[..]) {
        (PrimOp::Binary(found), [left, right]) if *found == op => Some([*left, *right]),
        _ => None,
    }
}

/// The operand of a unary node `op`.
fn unary(graph: &PrimGraph, id: PrimNodeId, op: UnaryFn) -> Option<PrimNodeId> {
    match (&graph.node(id).op, &graph.operands(id)[..]) {
        (PrimOp::Unary(found), [operand]) if *found == op => Some(*operand),
        _ => None,
    }
}

/// `users(id)` when `id` is not a graph output.
fn inner_users(graph: &PrimGraph, id: PrimNodeId) -> Option<Vec<PrimNodeId>> {
    let is_output = graph.outputs.iter().any(|(_, output)| *output == id);
    (!is_output).then(|| graph.users(id))
}

fn same_shape(graph: &PrimGraph, a: PrimNodeId, b: PrimNodeId) -> bool {
    graph.node(a).ty.shape == graph.node(b).ty.shape
}

/// `max`, `x - max`, `exp`, `sum`, `e / sum` starting at the maximum `id`.
fn softmax_at(graph: &PrimGraph, id: PrimNodeId) -> Option<Found> {
    let (input, cols) = trailing_reduction(graph, id, ReduceFn::Max)?;
    let shifted = sole_user(graph, id)?;
    if binary(graph, shifted, BinaryFn::Sub)? != [input, id] {
        return None;
    }
    let exponentials = sole_user(graph, shifted)?;
    if unary(graph, exponentials, UnaryFn::Exp)? != shifted {
        return None;
    }
    let users = inner_users(graph, exponentials)?;
    let [first, second] = users[..] else {
        return None;
    };
    let (total, result) = if binary(graph, second, BinaryFn::Div).is_some() {
        (first, second)
    } else {
        (second, first)
    };
    let (summed, total_cols) = trailing_reduction(graph, total, ReduceFn::Sum)?;
    let divided = binary(graph, result, BinaryFn::Div)?;
    let fits = summed == exponentials
        && total_cols == cols
        && divided == [exponentials, total]
        && sole_user(graph, total) == Some(result)
        && same_shape(graph, result, input);
    fits.then(|| Found {
        nodes: vec![id, shifted, exponentials, total, result],
        output: result,
        row: RowNormalization {
            kind: RowNormalizationKind::Softmax,
            input,
            cols,
        },
    })
}

/// `mean`, `x - mean`, its square, `mean`, `+ eps`, `sqrt`, reciprocal, the product, then
/// optionally `* weight` and `+ bias`, starting at the first mean `id`.
fn layer_norm_at(graph: &PrimGraph, id: PrimNodeId) -> Option<Found> {
    let (input, cols) = trailing_reduction(graph, id, ReduceFn::Mean)?;
    let centered = sole_user(graph, id)?;
    if binary(graph, centered, BinaryFn::Sub)? != [input, id] {
        return None;
    }
    let users = inner_users(graph, centered)?;
    let [first, second] = users[..] else {
        return None;
    };
    let is_square = |node| binary(graph, node, BinaryFn::Mul) == Some([centered, centered]);
    let (squares, normalized) = if is_square(first) {
        (first, second)
    } else if is_square(second) {
        (second, first)
    } else {
        return None;
    };
    let variance = sole_user(graph, squares)?;
    if trailing_reduction(graph, variance, ReduceFn::Mean)? != (squares, cols) {
        return None;
    }
    let shifted = sole_user(graph, variance)?;
    let epsilon = match binary(graph, shifted, BinaryFn::Add)? {
        [value, epsilon] | [epsilon, value] if value == variance => scalar_value(graph, epsilon)?,
        _ => return None,
    };
    let root = sole_user(graph, shifted)?;
    if unary(graph, root, UnaryFn::Sqrt)? != shifted {
        return None;
    }
    let inverse = sole_user(graph, root)?;
    if unary(graph, inverse, UnaryFn::Reciprocal)? != root
        || sole_user(graph, inverse)? != normalized
    {
        return None;
    }
    match binary(graph, normalized, BinaryFn::Mul)? {
        [left, right]
            if (left, right) == (centered, inverse) || (left, right) == (inverse, centered) => {}
        _ => return None,
    }
    let mut nodes = vec![
        id, centered, squares, variance, shifted, root, inverse, normalized,
    ];
    let mut result = normalized;
    // The affine part: each factor one value per row element.
    let mut scale = None;
    let mut shift = None;
    if let Some(user) = sole_user(graph, result) {
        if let Some(weight) = row_operand(graph, user, BinaryFn::Mul, result, cols) {
            scale = Some(weight);
            nodes.push(user);
            result = user;
        }
    }
    if let Some(user) = sole_user(graph, result) {
        if let Some(bias) = row_operand(graph, user, BinaryFn::Add, result, cols) {
            shift = Some(bias);
            nodes.push(user);
            result = user;
        }
    }
    if !same_shape(graph, result, input) {
        return None;
    }
    Some(Found {
        nodes,
        output: result,
        row: RowNormalization {
            kind: RowNormalizationKind::LayerNorm {
                epsilon,
                scale,
                shift,
            },
            input,
            cols,
        },
    })
}

/// The other operand of `node = value (op) other` (either order) when `other` holds one value
/// per element of a row: `cols` values, laid out as the trailing axes (leading sizes 1).
fn row_operand(
    graph: &PrimGraph,
    node: PrimNodeId,
    op: BinaryFn,
    value: PrimNodeId,
    cols: usize,
) -> Option<PrimNodeId> {
    let other = match binary(graph, node, op)? {
        [left, other] | [other, left] if left == value && other != value => other,
        _ => return None,
    };
    let shape = &graph.node(other).ty.shape;
    let value_shape = &graph.node(value).ty.shape;
    let leading_ones = shape.iter().take_while(|size| **size == 1).count();
    let row_dims = &shape[leading_ones..];
    let trailing_match = row_dims.len() <= value_shape.len()
        && value_shape[value_shape.len() - row_dims.len()..] == *row_dims
        && row_dims.iter().product::<usize>() == cols;
    let floats = graph.node(other).ty.element_type == ElementType::Float32;
    (trailing_match && floats && same_shape(graph, node, value)).then_some(other)
}

/// The value of a splat constant that broadcasts as a scalar.
fn scalar_value(graph: &PrimGraph, id: PrimNodeId) -> Option<f64> {
    match &graph.node(id).op {
        PrimOp::Constant(Constant::Splat { shape, value })
            if shape.iter().all(|size| *size == 1) =>
        {
            Some(*value)
        }
        _ => None,
    }
}
