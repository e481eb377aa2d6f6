//! Dead-node elimination in both graphs: run-graph nodes that no output depends on (rewrites
//! leave them behind, such as a batch norm's scale once it is folded into a weight), and bind
//! outputs the run graph no longer reads, with the bind nodes only they needed.

use std::collections::HashSet;

use super::graph_edit::remove_dead_nodes;
use super::{FuseError, FuseState};
use crate::prim::PrimOp;

pub fn run(state: &mut FuseState) -> Result<bool, FuseError> {
    let run_changed = remove_dead_nodes(&mut state.graph);
    let bind_changed = prune_bind_outputs(state);
    Ok(run_changed || bind_changed)
}

/// Drops the bind outputs that no run-graph parameter names, then the bind nodes left dead.
pub(super) fn prune_bind_outputs(state: &mut FuseState) -> bool {
    let read: HashSet<&str> = state
        .graph
        .node_ids()
        .filter_map(|id| match &state.graph.node(id).op {
            PrimOp::Parameter { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let before = state.bind.outputs.len();
    state
        .bind
        .outputs
        .retain(|(name, _)| read.contains(name.as_str()));
    let outputs_dropped = state.bind.outputs.len() != before;
    let nodes_dropped = remove_dead_nodes(&mut state.bind);
    outputs_dropped || nodes_dropped
}
