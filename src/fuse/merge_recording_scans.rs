//! One scan instead of two: a scan whose states follow the same recurrence as another's, over
//! the same operands, computes the same states at every step, so the two can run as one scan
//! whose step output holds both step outputs, each then sliced out of the stacked result.
//!
//! The gradient of a scan needs the states entering each step, which its result does not hold,
//! so autodiff adds a recording scan (`src/autodiff/scan.rs`): the forward body run again with
//! its step output replaced by the entering states. In a training step both scans run, the
//! whole recurrence twice (an LSTM layer's 32 steps of `h W_hh^T` and gates, about 1.5 ms of the
//! benchmark LSTM's step). Merged, the recurrence runs once.
//!
//! Two bodies are compared by canonical keys: each node's op with its attributes and the keys
//! of its operands, inputs by position, so two bodies simplified from the same source have the
//! same keys wherever they compute the same value. The scans merge when they have the same
//! operands, axis and direction, their state outputs have equal keys, and the first scan's step
//! output is one of its states (an RNN, LSTM or GRU layer's `h`): the merged body is then the
//! second body with its step output widened to `[state, second step output]`, both flattened.
//! Only scans over axis 0 merge (the recurrent layers run time-major), where the stacked
//! result `[T, a + b]` splits into the two results by a slice and a reshape.

use std::collections::HashMap;

use super::graph_edit::replace_uses;
use super::{FuseError, FuseState};
use crate::prim::{PrimGraph, PrimNodeId, PrimOp, ScanBody};

pub fn run(state: &mut FuseState) -> Result<bool, FuseError> {
    let graph = &mut state.graph;
    let mut scans: Vec<PrimNodeId> = graph
        .node_ids()
        .filter(|id| matches!(graph.node(*id).op, PrimOp::Scan { axis: 0, .. }))
        .collect();
    scans.sort();
    for &kept in &scans {
        for &widened in &scans {
            if kept == widened {
                continue;
            }
            if let Some(merged_body) = merged_body(graph, kept, widened) {
                merge(graph, kept, widened, merged_body)?;
                // One merge per call: the driver runs the pass again until none is left.
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The widened body, holding the step outputs of both scans, when `kept`'s step output can be
/// read from `widened`'s states: `(body, kept's flattened size, widened's flattened size)`.
fn merged_body(
    graph: &PrimGraph,
    kept: PrimNodeId,
    widened: PrimNodeId,
) -> Option<(ScanBody, usize, usize)> {
    let (
        PrimOp::Scan {
            body: kept_body,
            axis: 0,
            reverse: kept_reverse,
        },
        PrimOp::Scan {
            body: widened_body,
            axis: 0,
            reverse: widened_reverse,
        },
    ) = (&graph.node(kept).op, &graph.node(widened).op)
    else {
        return None;
    };
    let same_interface = kept_reverse == widened_reverse
        && graph.operands(kept) == graph.operands(widened)
        && kept_body.sequence_count == widened_body.sequence_count
        && kept_body.state_count == widened_body.state_count
        && kept_body.state_count > 0;
    if !same_interface {
        return None;
    }
    let mut interner = HashMap::new();
    let kept_keys = canonical_keys(&kept_body.graph, &mut interner);
    let widened_keys = canonical_keys(&widened_body.graph, &mut interner);
    let state_count = kept_body.state_count;
    let (kept_outputs, widened_outputs) = (&kept_body.graph.outputs, &widened_body.graph.outputs);
    if kept_outputs.len() != state_count + 1 || widened_outputs.len() != state_count + 1 {
        return None;
    }
    let same_states = (0..state_count)
        .all(|index| kept_keys[&kept_outputs[index].1] == widened_keys[&widened_outputs[index].1]);
    if !same_states {
        return None;
    }
    let kept_step = kept_keys[&kept_outputs[state_count].1];
    let state_index =
        (0..state_count).find(|index| kept_keys[&kept_outputs[*index].1] == kept_step)?;
    let mut body = widened_body.as_ref().clone();
    let state_value = body.graph.outputs[state_index].1;
    let widened_step = body.graph.outputs[state_count].1;
    let flat = |graph: &mut PrimGraph, value: PrimNodeId| -> Option<(PrimNodeId, usize)> {
        let node = graph.node(value);
        let size: usize = node.ty.shape.iter().product();
        let origin = node.origin.clone();
        let reshaped = graph
            .add(PrimOp::Reshape { shape: vec![size] }, &[value], origin)
            .ok()?;
        Some((reshaped, size))
    };
    let (kept_flat, kept_size) = flat(&mut body.graph, state_value)?;
    let (widened_flat, widened_size) = flat(&mut body.graph, widened_step)?;
    let origin = body.graph.node(widened_step).origin.clone();
    let joined = body
        .graph
        .add(
            PrimOp::Concat { axis: 0 },
            &[kept_flat, widened_flat],
            origin,
        )
        .ok()?;
    body.graph.outputs[state_count].1 = joined;
    Some((body, kept_size, widened_size))
}

/// Replaces both scans by the merged one and slices of its result.
fn merge(
    graph: &mut PrimGraph,
    kept: PrimNodeId,
    widened: PrimNodeId,
    (body, kept_size, widened_size): (ScanBody, usize, usize),
) -> Result<(), FuseError> {
    let PrimOp::Scan { reverse, .. } = graph.node(kept).op else {
        return Err(FuseError::Internal("a merged scan is not a scan".into()));
    };
    let operands = graph.operands(kept);
    let origin = graph.node(kept).origin.clone();
    let merged_op = PrimOp::Scan {
        body: Box::new(body),
        axis: 0,
        reverse,
    };
    let merged = graph.add(merged_op, &operands, origin.clone())?;
    let pieces = [
        (kept, 0, kept_size),
        (widened, kept_size, kept_size + widened_size),
    ];
    for (scan, start, end) in pieces {
        let shape = graph.node(scan).ty.shape.clone();
        let slice = PrimOp::Slice {
            axis: 1,
            start,
            end,
        };
        let sliced = graph.add(slice, &[merged], origin.clone())?;
        let reshaped = graph.add(PrimOp::Reshape { shape }, &[sliced], origin.clone())?;
        replace_uses(graph, scan, reshaped);
        graph.petgraph_mut().remove_node(scan.0);
    }
    Ok(())
}

/// Each node's canonical key: equal keys (from one `interner`) compute equal values.
fn canonical_keys(
    graph: &PrimGraph,
    interner: &mut HashMap<String, usize>,
) -> HashMap<PrimNodeId, usize> {
    let mut keys: HashMap<PrimNodeId, usize> = HashMap::new();
    for id in graph.topological_order() {
        let operand_keys: Vec<usize> = graph
            .operands(id)
            .iter()
            .map(|operand| keys[operand])
            .collect();
        let text = format!("{:?} {operand_keys:?}", graph.node(id).op);
        let next = interner.len();
        let key = *interner.entry(text).or_insert(next);
        keys.insert(id, key);
    }
    keys
}
