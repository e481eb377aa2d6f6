//! Where the memory of a training step goes at its peak, from the static memory plan: the
//! parameters (outside the arena), and the arena at the step where the most of it is alive,
//! split into gradients (`grad.*` outputs, alive to the end), saved activations (forward values
//! still alive in the backward pass) and workspace (backward temporaries, kernel scratch, what
//! the placement of ranges leaves unused below the arena's end, and the values the bind step
//! folds from the parameters, such as transposed weights, which live outside the arena).

use std::collections::{BTreeMap, HashSet};

use super::Executable;
use crate::autodiff::{forward_nodes, GRADIENT_PREFIX};
use crate::prim::{PrimGraph, PrimNodeId, PrimOp};

/// Bytes of each part at the planned peak; [`PeakMemory::total`] is the step's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeakMemory {
    /// Parameters and buffers the step reads.
    pub parameters: u64,
    pub gradients: u64,
    pub saved_activations: u64,
    pub workspace: u64,
}

impl PeakMemory {
    pub fn total(&self) -> u64 {
        self.parameters + self.gradients + self.saved_activations + self.workspace
    }
}

const BYTES_PER_FLOAT: u64 = 4;

/// The peak of a compiled gradient graph (forward and backward with `grad.*` outputs, or a
/// training step graph whose forward part [`forward_nodes`] can tell apart).
pub fn training_peak(executable: &Executable) -> PeakMemory {
    let graph = &executable.fused().state.graph;
    let plan = executable.memory_plan();
    let forward = forward_nodes(graph);
    let gradients: HashSet<PrimNodeId> = graph
        .outputs
        .iter()
        .filter(|(name, _)| name.starts_with(GRADIENT_PREFIX))
        .map(|(_, id)| alias_root(graph, *id))
        .collect();
    let mut live_by_step: BTreeMap<usize, [u64; 3]> = BTreeMap::new();
    let step_count = plan.scratch.len();
    for step in 0..=step_count {
        let mut live = [0u64; 3];
        for (id, (first, last)) in &plan.lifetimes {
            if *first > step || *last < step {
                continue;
            }
            let bytes = graph.node(*id).ty.element_count() as u64 * BYTES_PER_FLOAT;
            let part = if gradients.contains(id) {
                0
            } else if forward.contains(id) {
                1
            } else {
                2
            };
            live[part] += bytes;
        }
        if let Some(Some((_, len))) = plan.scratch.get(step) {
            live[2] += *len as u64 * BYTES_PER_FLOAT;
        }
        live_by_step.insert(step, live);
    }
    let peak = live_by_step
        .values()
        .copied()
        .max_by_key(|live| live.iter().sum::<u64>())
        .unwrap_or_default();
    let arena = plan.arena_len as u64 * BYTES_PER_FLOAT;
    let unused = arena.saturating_sub(peak.iter().sum());
    PeakMemory {
        parameters: parameter_bytes(executable.graph()),
        gradients: peak[0],
        saved_activations: peak[1],
        workspace: peak[2] + unused + folded_bytes(executable),
    }
}

/// A reshape's value is its operand's memory: the value whose range it shares.
fn alias_root(graph: &PrimGraph, mut id: PrimNodeId) -> PrimNodeId {
    while let PrimOp::Reshape { .. } = graph.node(id).op {
        id = graph.operands(id)[0];
    }
    id
}

/// Each parameter the graph reads, once per name (scan bodies read theirs through operands).
fn parameter_bytes(graph: &PrimGraph) -> u64 {
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for id in graph.node_ids() {
        if let PrimOp::Parameter { name, .. } = &graph.node(id).op {
            let bytes = graph.node(id).ty.element_count() as u64 * BYTES_PER_FLOAT;
            seen.insert(name, bytes);
        }
    }
    seen.values().sum()
}

/// The values the bind step computes from the parameters (transposed weights, say).
fn folded_bytes(executable: &Executable) -> u64 {
    let bind = &executable.fused().state.bind;
    bind.outputs
        .iter()
        .map(|(_, id)| bind.node(*id).ty.element_count() as u64 * BYTES_PER_FLOAT)
        .sum()
}
