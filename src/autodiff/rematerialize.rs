//! Keep or recompute: which forward values the backward pass reads from memory, and which it
//! recomputes from those, in a gradient graph (after [`super::simplify`], which would merge the
//! recomputed copies back into the originals).
//!
//! Every forward value the backward part reads stays alive from the forward pass to its last
//! backward use, so the values kept across the turn from forward to backward set the peak of a
//! training step. Cheap elementwise values (a relu output, batch norm's normalized value) can be
//! recomputed next to their backward use from values that are kept anyway; products (matmul,
//! convolution), pooling, reductions, gathers and scans are always kept when needed. Choosing
//! the kept set of least bytes from which every value the backward part reads can be recomputed
//! is a minimum cut (the partitioner of PyTorch's AOTAutograd does the same):
//! - each forward value `v` is an edge `v_in -> v_out` costing its bytes to cut (to keep);
//!   graph outputs cost 0 (alive to the end anyway) and reshapes never get cut (they alias
//!   their operand, which is kept instead);
//! - an operand edge `u_out -> v_in` and the edge from a value the backward reads to the sink
//!   are infinite; so is the edge from the source to each value that must not be recomputed;
//! - inputs, parameters and constants are free to read and stay out of the network.
//!
//! Among the minimum cuts the one closest to the backward pass is taken, so the fewest nodes are
//! recomputed. The recomputed values are copies of the forward nodes, placed just before the
//! first backward node that reads them (the runtime schedules by node order).

use std::collections::{HashMap, HashSet};

use super::min_cut::{FlowNetwork, INFINITE};
use super::training_graph::forward_nodes;
use crate::prim::*;

/// What happened to one forward value the backward part needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SavedChoice {
    Kept,
    Recomputed,
}

/// One row of the keep-or-recompute table.
#[derive(Clone, Debug)]
pub struct SavedValue {
    /// The forward node (in the graph given to [`rematerialize`]).
    pub node: PrimNodeId,
    pub op: &'static str,
    pub path: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
    pub choice: SavedChoice,
    pub reason: String,
}

/// The keep-or-recompute decision for a gradient graph.
#[derive(Clone, Debug, Default)]
pub struct RecomputePlan {
    /// Forward values the backward part reads, or that a recomputation reads, in graph order
    /// (reshapes left out: they are their operand's memory).
    pub values: Vec<SavedValue>,
}

impl RecomputePlan {
    /// Bytes of the values kept from the forward pass for the backward one.
    pub fn kept_bytes(&self) -> u64 {
        self.bytes_where(SavedChoice::Kept)
    }

    /// Bytes the recomputed values would have kept.
    pub fn recomputed_bytes(&self) -> u64 {
        self.bytes_where(SavedChoice::Recomputed)
    }

    /// `--emit recompute`: one line per value (node, op, path, shape, bytes, choice, why),
    /// then the totals.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<8} {:<12} {:<28} {:<20} {:>12}  {:<10} why\n",
            "node", "op", "path", "shape", "bytes", "choice"
        );
        for value in &self.values {
            let choice = match value.choice {
                SavedChoice::Kept => "kept",
                SavedChoice::Recomputed => "recomputed",
            };
            out.push_str(&format!(
                "{:<8} {:<12} {:<28} {:<20} {:>12}  {:<10} {}\n",
                format!("%{}", value.node.index()),
                value.op,
                value.path,
                format!("{:?}", value.shape),
                value.bytes,
                choice,
                value.reason
            ));
        }
        let recomputed = self
            .values
            .iter()
            .filter(|value| value.choice == SavedChoice::Recomputed)
            .count();
        out.push_str(&format!(
            "kept {} bytes for the backward pass; recomputed {recomputed} values ({} bytes) instead of keeping them\n",
            self.kept_bytes(),
            self.recomputed_bytes()
        ));
        out
    }

    fn bytes_where(&self, choice: SavedChoice) -> u64 {
        self.values
            .iter()
            .filter(|value| value.choice == choice)
            .map(|value| value.bytes)
            .sum()
    }
}

/// The gradient graph with the chosen values recomputed in the backward part, and the table of
/// choices. Inputs and outputs are unchanged.
pub fn rematerialize(graph: &PrimGraph) -> (PrimGraph, RecomputePlan) {
    let forward = forward_nodes(graph);
    let read_by_backward = read_by_backward(graph, &forward);
    let kept = kept_values(graph, &forward, &read_by_backward);
    let mut recomputed: HashSet<PrimNodeId> = HashSet::new();
    let mut pending: Vec<PrimNodeId> = read_by_backward.iter().copied().collect();
    while let Some(id) = pending.pop() {
        if kept.contains(&id) || is_free_leaf(&graph.node(id).op) || !recomputed.insert(id) {
            continue;
        }
        pending.extend(graph.operands(id));
    }
    let plan = describe(graph, &read_by_backward, &kept, &recomputed);
    (with_recomputation(graph, &forward, &recomputed), plan)
}

/// The forward values (not free leaves) that some backward node reads.
fn read_by_backward(graph: &PrimGraph, forward: &HashSet<PrimNodeId>) -> HashSet<PrimNodeId> {
    graph
        .node_ids()
        .filter(|id| !forward.contains(id))
        .flat_map(|id| graph.operands(id))
        .filter(|operand| forward.contains(operand) && !is_free_leaf(&graph.node(*operand).op))
        .collect()
}

/// The minimum-cut choice of kept values (see the module doc).
fn kept_values(
    graph: &PrimGraph,
    forward: &HashSet<PrimNodeId>,
    read_by_backward: &HashSet<PrimNodeId>,
) -> HashSet<PrimNodeId> {
    let mut candidates: Vec<PrimNodeId> = forward
        .iter()
        .copied()
        .filter(|id| !is_free_leaf(&graph.node(*id).op))
        .collect();
    candidates.sort();
    let vertex: HashMap<PrimNodeId, usize> = candidates
        .iter()
        .enumerate()
        .map(|(index, id)| (*id, index))
        .collect();
    let (source, sink) = (2 * candidates.len(), 2 * candidates.len() + 1);
    let (value_in, value_out) = (|index: usize| 2 * index, |index: usize| 2 * index + 1);
    let outputs: HashSet<PrimNodeId> = graph.outputs.iter().map(|(_, id)| *id).collect();
    let mut network = FlowNetwork::new(2 * candidates.len() + 2);
    for (index, id) in candidates.iter().enumerate() {
        let node = graph.node(*id);
        let cost = if outputs.contains(id) {
            0
        } else if matches!(node.op, PrimOp::Reshape { .. }) {
            INFINITE
        } else {
            bytes(&node.ty)
        };
        network.add_edge(value_in(index), value_out(index), cost);
        if !is_recomputable(&node.op) {
            network.add_edge(source, value_in(index), INFINITE);
        }
        for operand in graph.operands(*id) {
            if let Some(operand_index) = vertex.get(&operand) {
                network.add_edge(value_out(*operand_index), value_in(index), INFINITE);
            }
        }
        if read_by_backward.contains(id) {
            network.add_edge(value_out(index), sink, INFINITE);
        }
    }
    let sink_side = network.sink_side_of_min_cut(source, sink);
    candidates
        .iter()
        .enumerate()
        .filter(|(index, _)| !sink_side[value_in(*index)] && sink_side[value_out(*index)])
        .map(|(_, id)| *id)
        .collect()
}

/// Ops whose values cost nothing to read again: no arena memory, no computation.
fn is_free_leaf(op: &PrimOp) -> bool {
    matches!(
        op,
        PrimOp::Input { .. } | PrimOp::Parameter { .. } | PrimOp::Constant(_)
    )
}

/// Ops cheap enough to run again in the backward pass: elementwise arithmetic, reshapes (an
/// alias) and random numbers (a pure function of seed, run key and element index, so a copy
/// draws the very same numbers).
fn is_recomputable(op: &PrimOp) -> bool {
    matches!(
        op,
        PrimOp::Unary(_)
            | PrimOp::Binary(_)
            | PrimOp::Reshape { .. }
            | PrimOp::RandomNormal { .. }
            | PrimOp::RandomUniform { .. }
    )
}

fn bytes(ty: &TensorType) -> u64 {
    4 * ty.element_count() as u64
}

/// The table rows, in graph order.
fn describe(
    graph: &PrimGraph,
    read_by_backward: &HashSet<PrimNodeId>,
    kept: &HashSet<PrimNodeId>,
    recomputed: &HashSet<PrimNodeId>,
) -> RecomputePlan {
    let outputs: HashSet<PrimNodeId> = graph.outputs.iter().map(|(_, id)| *id).collect();
    let mut ids: Vec<PrimNodeId> = kept.union(recomputed).copied().collect();
    ids.sort();
    let values = ids
        .into_iter()
        .filter(|id| !matches!(graph.node(*id).op, PrimOp::Reshape { .. }))
        .map(|id| {
            let node = graph.node(id);
            let read = read_by_backward.contains(&id);
            let (choice, reason) = if recomputed.contains(&id) {
                let sources = recompute_sources(graph, id, kept);
                let role = if read { "" } else { "an intermediate, " };
                let reason = format!("{role}recomputed from {sources}");
                (SavedChoice::Recomputed, reason)
            } else {
                let reason = if outputs.contains(&id) {
                    "a graph output, alive to the end anyway".to_string()
                } else if !is_recomputable(&node.op) {
                    format!("{} output: not recomputed", node.op.name())
                } else if read {
                    "cheaper to keep than the values it is computed from".to_string()
                } else {
                    "kept to recompute others from".to_string()
                };
                (SavedChoice::Kept, reason)
            };
            SavedValue {
                node: id,
                op: node.op.name(),
                path: node.origin.path.to_string(),
                shape: node.ty.shape.clone(),
                bytes: bytes(&node.ty),
                choice,
                reason,
            }
        })
        .collect();
    RecomputePlan { values }
}

/// `%12, %14 and parameters`: the kept values and leaves a recomputed value is computed from.
fn recompute_sources(graph: &PrimGraph, id: PrimNodeId, kept: &HashSet<PrimNodeId>) -> String {
    let mut sources: Vec<PrimNodeId> = Vec::new();
    let mut leaves: Vec<&'static str> = Vec::new();
    let mut seen: HashSet<PrimNodeId> = HashSet::new();
    let mut pending = graph.operands(id);
    while let Some(operand) = pending.pop() {
        if !seen.insert(operand) {
            continue;
        }
        let op = &graph.node(operand).op;
        if kept.contains(&operand) {
            sources.push(operand);
        } else if is_free_leaf(op) {
            leaves.push(match op {
                PrimOp::Input { .. } => "inputs",
                PrimOp::Parameter { .. } => "parameters",
                _ => "constants",
            });
        } else {
            pending.extend(graph.operands(operand));
        }
    }
    sources.sort();
    leaves.sort();
    leaves.dedup();
    let mut parts: Vec<String> = sources
        .iter()
        .map(|id| format!("%{}", id.index()))
        .collect();
    parts.extend(leaves.iter().map(|leaf| leaf.to_string()));
    match parts.len() {
        0 => "nothing (no operands)".to_string(),
        _ => parts.join(", "),
    }
}

/// A copy of `graph` where backward nodes read copies of the `recomputed` forward values,
/// each built just before the first backward node that needs it.
fn with_recomputation(
    graph: &PrimGraph,
    forward: &HashSet<PrimNodeId>,
    recomputed: &HashSet<PrimNodeId>,
) -> PrimGraph {
    let mut copy = Copy {
        source: graph,
        out: PrimGraph::default(),
        mapped: HashMap::new(),
        recomputed_copy: HashMap::new(),
        recomputed,
    };
    for (name, id) in &graph.inputs {
        let node = graph.node(*id);
        let new_id = copy
            .out
            .add_input(name, node.ty.clone(), node.origin.clone());
        copy.mapped.insert(*id, new_id);
    }
    for id in graph.topological_order() {
        if copy.mapped.contains_key(&id) {
            continue;
        }
        let operands: Vec<PrimNodeId> = graph
            .operands(id)
            .into_iter()
            .map(|operand| match forward.contains(&id) {
                true => copy.mapped[&operand],
                false => copy.backward_value(operand),
            })
            .collect();
        let new_id = copy.add(id, &operands);
        copy.mapped.insert(id, new_id);
    }
    copy.out.outputs = graph
        .outputs
        .iter()
        .map(|(name, id)| (name.clone(), copy.mapped[id]))
        .collect();
    copy.out
}

struct Copy<'a> {
    source: &'a PrimGraph,
    out: PrimGraph,
    mapped: HashMap<PrimNodeId, PrimNodeId>,
    recomputed_copy: HashMap<PrimNodeId, PrimNodeId>,
    recomputed: &'a HashSet<PrimNodeId>,
}

impl Copy<'_> {
    /// The value the backward part reads for source node `id`: its recomputed copy (built now
    /// if this is the first backward use), or the node itself.
    fn backward_value(&mut self, id: PrimNodeId) -> PrimNodeId {
        if !self.recomputed.contains(&id) {
            return self.mapped[&id];
        }
        if let Some(copy) = self.recomputed_copy.get(&id) {
            return *copy;
        }
        let operands: Vec<PrimNodeId> = self
            .source
            .operands(id)
            .into_iter()
            .map(|operand| self.backward_value(operand))
            .collect();
        let copy = self.add(id, &operands);
        self.recomputed_copy.insert(id, copy);
        copy
    }

    fn add(&mut self, id: PrimNodeId, operands: &[PrimNodeId]) -> PrimNodeId {
        let node = self.source.node(id);
        self.out
            .add(node.op.clone(), operands, node.origin.clone())
            .expect("internal error (a bug in nnc): copying a checked node failed its shape rule")
    }
}
