//! Two bias adds in a row become one: `(y ± a) ± b` with `a` and `b` parameter-only becomes
//! `y ± c` with `c` computed at bind time. After batch norm folding a convolution is followed by
//! `- mean * scale` and `+ bias`; this leaves a single per-channel bias, which the convolution
//! kernel adds for free. Applies only when the inner result has no other reader and the merged
//! node keeps its type.
//!
//! ```text
//! (y + a) + b  ==>  y + (a + b)        (y - a) + b  ==>  y + (b - a)
//! (y + a) - b  ==>  y + (a - b)        (y - a) - b  ==>  y - (a + b)
//! ```

use std::collections::HashSet;

use super::graph_edit::{parameter_only, replace_operand, schedule, sole_user};
use super::{FuseError, FuseState};
use crate::prim::{infer_type, BinaryFn, PrimGraph, PrimNodeId, PrimOp, TensorType};

pub fn run(state: &mut FuseState) -> Result<bool, FuseError> {
    let mut changed = false;
    while let Some(merge) = find_merge(&state.graph) {
        apply(&mut state.graph, &merge)?;
        changed = true;
    }
    Ok(changed)
}

/// `outer = inner ± outer_bias`, `inner = value ± inner_bias`; the merged node computes
/// `value (op) (left combine right)`.
struct Merge {
    outer: PrimNodeId,
    inner: PrimNodeId,
    value: PrimNodeId,
    merged_op: BinaryFn,
    combine_op: BinaryFn,
    combine_operands: [PrimNodeId; 2],
}

/// A node `value ± bias` (bias parameter-only, in either position of an add, second of a
/// subtract): the value, the bias and whether the bias is subtracted.
fn split_bias(
    graph: &PrimGraph,
    foldable: &HashSet<PrimNodeId>,
    id: PrimNodeId,
) -> Option<(PrimNodeId, PrimNodeId, bool)> {
    let operands = graph.operands(id);
    match graph.node(id).op {
        PrimOp::Binary(BinaryFn::Add) => {
            let position = operands
                .iter()
                .position(|operand| foldable.contains(operand))?;
            Some((operands[1 - position], operands[position], false))
        }
        PrimOp::Binary(BinaryFn::Sub) if foldable.contains(&operands[1]) => {
            Some((operands[0], operands[1], true))
        }
        _ => None,
    }
}

fn find_merge(graph: &PrimGraph) -> Option<Merge> {
    let foldable = parameter_only(graph);
    for outer in schedule(graph) {
        if foldable.contains(&outer) {
            continue;
        }
        let Some((inner, outer_bias, outer_subtracts)) = split_bias(graph, &foldable, outer) else {
            continue;
        };
        if sole_user(graph, inner) != Some(outer) {
            continue;
        }
        let Some((value, inner_bias, inner_subtracts)) = split_bias(graph, &foldable, inner) else {
            continue;
        };
        if foldable.contains(&value) {
            continue;
        }
        let (merged_op, combine_op, combine_operands) = match (inner_subtracts, outer_subtracts) {
            (false, false) => (BinaryFn::Add, BinaryFn::Add, [inner_bias, outer_bias]),
            (false, true) => (BinaryFn::Add, BinaryFn::Sub, [inner_bias, outer_bias]),
            (true, false) => (BinaryFn::Add, BinaryFn::Sub, [outer_bias, inner_bias]),
            (true, true) => (BinaryFn::Sub, BinaryFn::Add, [inner_bias, outer_bias]),
        };
        let merge = Merge {
            outer,
            inner,
            value,
            merged_op,
            combine_op,
            combine_operands,
        };
        if keeps_type(graph, &merge) {
            return Some(merge);
        }
    }
    None
}

fn keeps_type(graph: &PrimGraph, merge: &Merge) -> bool {
    let [left, right] = merge.combine_operands.map(|id| &graph.node(id).ty);
    let Ok(combined) = infer_type(&PrimOp::Binary(merge.combine_op), &[left, right]) else {
        return false;
    };
    let value: &TensorType = &graph.node(merge.value).ty;
    infer_type(&PrimOp::Binary(merge.merged_op), &[value, &combined])
        .is_ok_and(|ty| ty == graph.node(merge.outer).ty)
}

fn apply(graph: &mut PrimGraph, merge: &Merge) -> Result<(), FuseError> {
    let origin = graph.node(merge.outer).origin.clone();
    let combined = graph.add(
        PrimOp::Binary(merge.combine_op),
        &merge.combine_operands,
        origin,
    )?;
    graph.petgraph_mut()[merge.outer.0].op = PrimOp::Binary(merge.merged_op);
    replace_operand(graph, merge.outer, 0, merge.value);
    replace_operand(graph, merge.outer, 1, combined);
    graph.petgraph_mut().remove_node(merge.inner.0);
    Ok(())
}
