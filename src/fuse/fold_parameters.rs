//! Parameter folding: a value that depends only on parameters and constants is the same on
//! every run, so it is computed once, when parameters are bound, instead of on every call.
//! Parameters that the graph itself updates (a training step's weights) change on every run
//! and are not folded from ([`parameter_only`]).
//!
//! The pass finds the *frontier* of the parameter-only part of the run graph: parameter-only
//! nodes that are not themselves a parameter or constant and that a run-time node (or an
//! output) reads. Each frontier node's subgraph is copied into the bind graph, whose output
//! named `fold%<id>` is the value, and the node itself becomes `Parameter { name: "fold%<id>" }`
//! in place (so its id, and every reader, stay the same). What only the frontier read becomes
//! dead and is removed.
//!
//! The pass can run again after other passes built new parameter-only nodes on top of folded
//! ones (batch norm folding multiplies a convolution weight by a folded scale): a `fold%` leaf
//! of a new subgraph is wired to the bind node that defines it, so the bind graph computes the
//! whole chain. Bind outputs that the run graph no longer reads are dropped first, which also
//! frees their names for reuse (petgraph reuses the ids of removed nodes).

use std::collections::HashMap;

use super::graph_edit::{make_parameter, parameter_only, remove_dead_nodes, schedule};
use super::{eliminate_dead_nodes, FuseError, FuseState};
use crate::prim::{PrimGraph, PrimNodeId, PrimOp};

/// The prefix of folded parameters' names; `%` appears in no PyTorch state_dict key.
pub const FOLDED_PREFIX: &str = "fold%";

/// Whether a parameter name is a folded value rather than one of the user's tensors.
pub fn is_folded(name: &str) -> bool {
    name.starts_with(FOLDED_PREFIX)
}

pub fn run(state: &mut FuseState) -> Result<bool, FuseError> {
    eliminate_dead_nodes::prune_bind_outputs(state);
    let foldable = parameter_only(&state.graph);
    let frontier: Vec<PrimNodeId> = schedule(&state.graph)
        .into_iter()
        .filter(|id| foldable.contains(id) && is_frontier(&state.graph, *id, &foldable))
        .collect();
    if frontier.is_empty() {
        return Ok(false);
    }
    let mut copier = BindCopier::new(&state.bind);
    for id in &frontier {
        let bind_id = copier.copy(&state.graph, &mut state.bind, *id)?;
        let name = format!("{FOLDED_PREFIX}{}", id.index());
        state.bind.outputs.push((name.clone(), bind_id));
        make_parameter(&mut state.graph, *id, name);
    }
    remove_dead_nodes(&mut state.graph);
    Ok(true)
}

/// A computed parameter-only node that run-time code reads.
fn is_frontier(
    graph: &PrimGraph,
    id: PrimNodeId,
    foldable: &std::collections::HashSet<PrimNodeId>,
) -> bool {
    if matches!(
        graph.node(id).op,
        PrimOp::Parameter { .. } | PrimOp::Constant(_)
    ) {
        return false;
    }
    let is_output = graph.outputs.iter().any(|(_, output)| *output == id);
    is_output || graph.users(id).iter().any(|user| !foldable.contains(user))
}

/// Copies parameter-only subgraphs of the run graph into the bind graph, sharing what was
/// already copied: each user parameter appears once, and a folded parameter is the bind node
/// that defines it.
struct BindCopier {
    copied: HashMap<PrimNodeId, PrimNodeId>,
    parameters: HashMap<String, PrimNodeId>,
}

impl BindCopier {
    fn new(bind: &PrimGraph) -> BindCopier {
        let mut parameters: HashMap<String, PrimNodeId> = bind.outputs.iter().cloned().collect();
        for id in bind.node_ids() {
            if let PrimOp::Parameter { name, .. } = &bind.node(id).op {
                parameters.insert(name.clone(), id);
            }
        }
        BindCopier {
            copied: HashMap::new(),
            parameters,
        }
    }

    /// The bind node computing run node `id`, copying its operands first (iteratively, as
    /// subgraphs can be deep).
    fn copy(
        &mut self,
        graph: &PrimGraph,
        bind: &mut PrimGraph,
        id: PrimNodeId,
    ) -> Result<PrimNodeId, FuseError> {
        let mut stack = vec![id];
        while let Some(&top) = stack.last() {
            if self.copied.contains_key(&top) {
                stack.pop();
                continue;
            }
            let operands = graph.operands(top);
            let missing: Vec<PrimNodeId> = operands
                .iter()
                .filter(|operand| !self.copied.contains_key(operand))
                .copied()
                .collect();
            if !missing.is_empty() {
                stack.extend(missing);
                continue;
            }
            stack.pop();
            let node = graph.node(top);
            let bind_id = match &node.op {
                PrimOp::Parameter { name, .. } => match self.parameters.get(name) {
                    Some(existing) => *existing,
                    None => {
                        let new = bind.add(node.op.clone(), &[], node.origin.clone())?;
                        self.parameters.insert(name.clone(), new);
                        new
                    }
                },
                _ => {
                    let bind_operands: Vec<PrimNodeId> = operands
                        .iter()
                        .map(|operand| self.copied[operand])
                        .collect();
                    bind.add(node.op.clone(), &bind_operands, node.origin.clone())?
                }
            };
            self.copied.insert(top, bind_id);
        }
        Ok(self.copied[&id])
    }
}
