//! Batch norm folded into the weights before it, for inference.
//!
//! Lowered batch norm is `((y - mean) * scale) + bias` with per-channel vectors, and after
//! parameter folding `scale` is one folded parameter. When `y` is a convolution (or a dense
//! layer's matmul), the scale moves into the weight:
//!
//! ```text
//! (conv(x, W) + b1 - b2 ...) * s[c]   ==>   conv(x, W * s[c]) + b1 * s[c] - b2 * s[c] ...
//! (x @ W + b ...) * s[j]              ==>   x @ (W * s[j]) + b * s[j] ...
//! ```
//! The new products depend only on parameters, so the next round of parameter folding computes
//! them at bind time, and merging the bias adds leaves `conv(x, W') + t'`. The rule applies
//! when the scale varies only along the producer's output channels (axis 1 of a convolution's
//! NCHW output, the last axis of a matmul's) and each value in the chain has no other reader,
//! since the chain's values change meaning (they become scaled).

use super::graph_edit::{
    parameter_only, replace_operand, replace_uses, schedule, sole_user, varies_only_along,
};
use super::{FuseError, FuseState};
use crate::prim::{BinaryFn, PrimGraph, PrimNodeId, PrimOp};

pub fn run(state: &mut FuseState) -> Result<bool, FuseError> {
    let mut changed = false;
    // One rewrite at a time: each adds parameter-only nodes the next search must see.
    while let Some(rewrite) = find_rewrite(&state.graph) {
        apply(&mut state.graph, &rewrite)?;
        changed = true;
    }
    Ok(changed)
}

/// `scale_user = chain_top * scale`, where the chain runs down from `chain_top` through
/// `bias_steps` to `producer`.
struct Rewrite {
    scale_user: PrimNodeId,
    scale: PrimNodeId,
    chain_top: PrimNodeId,
    /// The adds and subtracts between the producer and the multiply, and the operand position
    /// of each one's bias.
    bias_steps: Vec<(PrimNodeId, usize)>,
    producer: PrimNodeId,
    /// The shape the scale takes to multiply the weight: `[O, 1, 1, 1]` or `[1, P]`.
    weight_scale_shape: Vec<usize>,
}

fn find_rewrite(graph: &PrimGraph) -> Option<Rewrite> {
    let foldable = parameter_only(graph);
    for id in schedule(graph) {
        if !matches!(graph.node(id).op, PrimOp::Binary(BinaryFn::Mul)) {
            continue;
        }
        let operands = graph.operands(id);
        for (value, scale) in [(operands[0], operands[1]), (operands[1], operands[0])] {
            if foldable.contains(&scale) && !foldable.contains(&value) {
                if let Some(rewrite) = match_chain(graph, &foldable, id, value, scale) {
                    return Some(rewrite);
                }
            }
        }
    }
    None
}

fn match_chain(
    graph: &PrimGraph,
    foldable: &std::collections::HashSet<PrimNodeId>,
    scale_user: PrimNodeId,
    chain_top: PrimNodeId,
    scale: PrimNodeId,
) -> Option<Rewrite> {
    let mut bias_steps = Vec::new();
    let (mut current, mut reader) = (chain_top, scale_user);
    loop {
        if sole_user(graph, current) != Some(reader) {
            return None;
        }
        let operands = graph.operands(current);
        match graph.node(current).op {
            PrimOp::Conv2d(_) | PrimOp::MatMul => break,
            PrimOp::Binary(BinaryFn::Sub) if foldable.contains(&operands[1]) => {
                bias_steps.push((current, 1));
                (reader, current) = (current, operands[0]);
            }
            PrimOp::Binary(BinaryFn::Add) => {
                let bias_position = operands
                    .iter()
                    .position(|operand| foldable.contains(operand))?;
                bias_steps.push((current, bias_position));
                (reader, current) = (current, operands[1 - bias_position]);
            }
            _ => return None,
        }
        if foldable.contains(&current) {
            return None;
        }
    }
    let producer = current;
    let output_shape = &graph.node(producer).ty.shape;
    let weight = graph.operands(producer)[1];
    let weight_rank = graph.node(weight).ty.shape.len();
    let axis = match graph.node(producer).op {
        PrimOp::Conv2d(_) => 1,
        PrimOp::MatMul if weight_rank == 2 => output_shape.len() - 1,
        _ => return None,
    };
    if !foldable.contains(&weight) || graph.node(scale_user).ty.shape != *output_shape {
        return None;
    }
    let per_channel =
        |id: PrimNodeId| varies_only_along(&graph.node(id).ty.shape, output_shape, axis);
    let biases_per_channel = bias_steps
        .iter()
        .all(|(step, position)| per_channel(graph.operands(*step)[*position]));
    if !per_channel(scale) || !biases_per_channel {
        return None;
    }
    let scale_count = graph.node(scale).ty.element_count();
    let weight_scale_shape = if axis == 1 && output_shape.len() == 4 {
        vec![scale_count, 1, 1, 1]
    } else {
        vec![1, scale_count]
    };
    Some(Rewrite {
        scale_user,
        scale,
        chain_top,
        bias_steps,
        producer,
        weight_scale_shape,
    })
}

fn apply(graph: &mut PrimGraph, rewrite: &Rewrite) -> Result<(), FuseError> {
    let origin = graph.node(rewrite.scale_user).origin.clone();
    let reshaped_scale = graph.add(
        PrimOp::Reshape {
            shape: rewrite.weight_scale_shape.clone(),
        },
        &[rewrite.scale],
        origin.clone(),
    )?;
    let weight = graph.operands(rewrite.producer)[1];
    let scaled_weight = graph.add(
        PrimOp::Binary(BinaryFn::Mul),
        &[weight, reshaped_scale],
        origin.clone(),
    )?;
    replace_operand(graph, rewrite.producer, 1, scaled_weight);
    for (step, position) in &rewrite.bias_steps {
        let bias = graph.operands(*step)[*position];
        let scaled_bias = graph.add(
            PrimOp::Binary(BinaryFn::Mul),
            &[bias, rewrite.scale],
            origin.clone(),
        )?;
        replace_operand(graph, *step, *position, scaled_bias);
    }
    replace_uses(graph, rewrite.scale_user, rewrite.chain_top);
    graph.petgraph_mut().remove_node(rewrite.scale_user.0);
    Ok(())
}
