//! Small analyses and edits the passes share: a deterministic schedule, the set of nodes that
//! depend only on parameters and constants, broadcast checks, and edge rewiring that keeps the
//! primitive graph's invariants (operand positions `0..arity`, outputs naming live nodes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::autodiff::{BUFFER_UPDATE_PREFIX, OPTIMIZER_UPDATE_PREFIX};
use crate::prim::{PrimGraph, PrimNodeId, PrimOp};

/// A topological order that is creation order wherever operands precede their users: among the
/// nodes whose operands are all scheduled, the lowest id goes first (Kahn's algorithm with a
/// min-heap). Unlike a depth-first order it stays readable after rewrites add nodes, and it
/// keeps the spec's order of layers, which is also what the memory plan was tuned on.
pub fn schedule(graph: &PrimGraph) -> Vec<PrimNodeId> {
    let mut pending: HashMap<PrimNodeId, usize> = HashMap::new();
    let mut ready = BinaryHeap::new();
    for id in graph.node_ids() {
        let operand_count = graph.operands(id).len();
        pending.insert(id, operand_count);
        if operand_count == 0 {
            ready.push(Reverse(id));
        }
    }
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some(Reverse(id)) = ready.pop() {
        order.push(id);
        let edges = graph.petgraph().edges_directed(id.0, Direction::Outgoing);
        for edge in edges {
            let user = PrimNodeId(edge.target());
            let count = pending.get_mut(&user).expect("every node was counted");
            *count -= 1;
            if *count == 0 {
                ready.push(Reverse(user));
            }
        }
    }
    order
}

/// The nodes whose value depends only on parameters and constants, so it can be computed once
/// per bound parameter set. Inputs, random noise and scans are never in the set, and neither
/// is a parameter the graph itself computes a new value of (`updated_parameters`).
pub fn parameter_only(graph: &PrimGraph) -> HashSet<PrimNodeId> {
    let updated = updated_parameters(graph);
    let mut set = HashSet::new();
    for id in schedule(graph) {
        let foldable = match &graph.node(id).op {
            PrimOp::Parameter { name, .. } => !updated.contains(name.as_str()),
            PrimOp::Constant(_) => true,
            PrimOp::Input { .. }
            | PrimOp::RandomNormal { .. }
            | PrimOp::RandomUniform { .. }
            | PrimOp::Scan { .. } => false,
            _ => graph
                .operands(id)
                .iter()
                .all(|operand| set.contains(operand)),
        };
        if foldable {
            set.insert(id);
        }
    }
    set
}

/// The parameters a training step graph writes back (its `update.<name>` and
/// `buffer_update.<name>` outputs, `autodiff::training_graph`). They change on every run, so a
/// value folded from them would be recomputed (and copied out of the bind program) on every
/// run anyway; left in the run graph instead, a transposed weight costs nothing, as the matmul
/// that reads it reads the weight through a strided view (`matmul_operand_views`).
fn updated_parameters(graph: &PrimGraph) -> HashSet<&str> {
    graph
        .outputs
        .iter()
        .filter_map(|(name, _)| {
            name.strip_prefix(OPTIMIZER_UPDATE_PREFIX)
                .or_else(|| name.strip_prefix(BUFFER_UPDATE_PREFIX))
        })
        .collect()
}

/// Whether a value of `shape`, broadcast to `output` (NumPy rules), varies at most along
/// `axis` of `output`: every other dim is 1 once right-aligned, and the dim at `axis` is 1 or
/// `output[axis]`.
pub(super) fn varies_only_along(shape: &[usize], output: &[usize], axis: usize) -> bool {
    if shape.len() > output.len() {
        return false;
    }
    let offset = output.len() - shape.len();
    shape.iter().enumerate().all(|(position, size)| {
        let output_axis = position + offset;
        *size == 1 || (output_axis == axis && *size == output[axis])
    })
}

/// The node's only user when it has exactly one and is not a graph output.
pub(super) fn sole_user(graph: &PrimGraph, id: PrimNodeId) -> Option<PrimNodeId> {
    let users = graph.users(id);
    let is_output = graph.outputs.iter().any(|(_, output)| *output == id);
    match users.as_slice() {
        [user] if !is_output => Some(*user),
        _ => None,
    }
}

/// Makes `user` read `operand` at `position` instead of what it read there.
pub(super) fn replace_operand(
    graph: &mut PrimGraph,
    user: PrimNodeId,
    position: usize,
    operand: PrimNodeId,
) {
    let petgraph = graph.petgraph_mut();
    let old_edges: Vec<_> = petgraph
        .edges_directed(user.0, Direction::Incoming)
        .filter(|edge| *edge.weight() == position)
        .map(|edge| edge.id())
        .collect();
    for edge in old_edges {
        petgraph.remove_edge(edge);
    }
    petgraph.add_edge(operand.0, user.0, position);
}

/// Makes every user of `old` (and every output naming it) read `new` instead.
pub(super) fn replace_uses(graph: &mut PrimGraph, old: PrimNodeId, new: PrimNodeId) {
    let uses: Vec<(PrimNodeId, usize)> = graph
        .petgraph()
        .edges_directed(old.0, Direction::Outgoing)
        .map(|edge| (PrimNodeId(edge.target()), *edge.weight()))
        .collect();
    for (user, position) in uses {
        replace_operand(graph, user, position, new);
    }
    for (_, output) in graph.outputs.iter_mut() {
        if *output == old {
            *output = new;
        }
    }
}

/// Turns the node into a `Parameter` of its own type, cutting it from its operands.
pub(super) fn make_parameter(graph: &mut PrimGraph, id: PrimNodeId, name: String) {
    let petgraph = graph.petgraph_mut();
    let incoming: Vec<_> = petgraph
        .edges_directed(id.0, Direction::Incoming)
        .map(|edge| edge.id())
        .collect();
    for edge in incoming {
        petgraph.remove_edge(edge);
    }
    let node = &mut petgraph[id.0];
    node.op = PrimOp::Parameter {
        name,
        shape: node.ty.shape.clone(),
    };
}

/// Removes every node that no output depends on, except inputs (their indices are part of the
/// graph's signature). Returns whether anything was removed.
pub(super) fn remove_dead_nodes(graph: &mut PrimGraph) -> bool {
    let mut live: HashSet<PrimNodeId> = HashSet::new();
    let mut stack: Vec<PrimNodeId> = graph.outputs.iter().map(|(_, id)| *id).collect();
    stack.extend(graph.inputs.iter().map(|(_, id)| *id));
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(graph.operands(id));
        }
    }
    let dead: Vec<PrimNodeId> = graph.node_ids().filter(|id| !live.contains(id)).collect();
    for id in &dead {
        graph.petgraph_mut().remove_node(id.0);
    }
    !dead.is_empty()
}
