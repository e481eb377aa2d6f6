//! The layer graph: the IR that elaboration produces and every later stage reads.
//!
//! A [`Network`] is a petgraph `DiGraph` of [`Node`]s. Each node is one layer application: an
//! [`Op`] with its attributes, the [`InstancePath`] that names it (`layer2.0.conv1`, matching
//! PyTorch's `state_dict` prefixes for the reference specs) and the source [`Span`] that produced
//! it. Edges run from producer to consumer and carry the operand position, so a node's inputs
//! are ordered.
//!
//! What holds true of a `Network` built by `elaborate`:
//! - it is acyclic: every node's inputs were created before it, so creation order is a
//!   topological order, and every node's operand positions are exactly `0..arity`;
//! - every node has a span into the spec or the prelude and a non-empty instance path;
//! - nodes that share an instance path share their parameters (weight sharing), and only
//!   applications of one `layer` value share a path;
//! - shapes are *not* stored here: the shape pass returns them as a side table keyed by node.

mod op;
pub mod print;

pub use op::*;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::syntax::Span;

/// A node of a [`Graph`]; a typed wrapper over petgraph's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub NodeIndex);

impl NodeId {
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// A dotted instance name such as `layer2.0.conv1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstancePath(pub Vec<String>);

impl InstancePath {
    pub fn child(&self, segment: impl Into<String>) -> InstancePath {
        let mut segments = self.0.clone();
        segments.push(segment.into());
        InstancePath(segments)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn depth(&self) -> usize {
        self.0.len()
    }

    /// The first `depth` segments.
    pub fn prefix(&self, depth: usize) -> InstancePath {
        InstancePath(self.0[..depth.min(self.0.len())].to_vec())
    }
}

impl std::fmt::Display for InstancePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub path: InstancePath,
    pub span: Span,
}

/// A dataflow graph of layer applications.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    graph: DiGraph<Node, usize>,
}

impl Graph {
    pub fn add_node(&mut self, node: Node, inputs: &[NodeId]) -> NodeId {
        let id = NodeId(self.graph.add_node(node));
        for (operand, input) in inputs.iter().enumerate() {
            self.graph.add_edge(input.0, id.0, operand);
        }
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id.0]
    }

    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices().map(NodeId)
    }

    /// The node's operands, in operand order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|edge| (*edge.weight(), NodeId(edge.source())))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, input)| input).collect()
    }

    /// The nodes that read this node's value.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self
            .graph
            .neighbors_directed(id.0, Direction::Outgoing)
            .map(NodeId)
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// Nodes in creation order. [`Graph::add_node`] only accepts inputs that already exist, so
    /// this is a topological order, and it follows the spec's order, which makes reports and
    /// dumps read like the source.
    pub fn creation_order(&self) -> Vec<NodeId> {
        debug_assert!(
            self.inputs_precede_users(),
            "internal error (a bug in nnc): a node precedes its input"
        );
        self.node_ids().collect()
    }

    /// Whether each node (by index) is one of `roots` or an input of one, directly or not.
    pub fn reached_from(&self, roots: &[NodeId]) -> Vec<bool> {
        let mut reached = vec![false; self.node_count()];
        let mut stack = roots.to_vec();
        while let Some(node) = stack.pop() {
            if !std::mem::replace(&mut reached[node.index()], true) {
                stack.extend(self.inputs(node));
            }
        }
        reached
    }

    fn inputs_precede_users(&self) -> bool {
        self.node_ids().all(|id| {
            self.inputs(id)
                .iter()
                .all(|input| input.index() < id.index())
        })
    }

    pub fn petgraph(&self) -> &DiGraph<Node, usize> {
        &self.graph
    }
}

/// A named dimension such as the batch size `N` or a sequence length `T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SymbolId(pub usize);

#[derive(Clone, Debug)]
pub struct Symbol {
    pub name: String,
    /// The value reports use for cost figures (`N` is 1: costs are per example).
    pub report_value: u64,
    pub span: Span,
}

/// One dimension of a shape: a number, or a symbol that passes through layers unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(u64),
    Symbolic(SymbolId),
}

pub type Shape = Vec<Dim>;

/// A spec after elaboration: the graph, its named inputs and outputs, and its symbols.
#[derive(Clone, Debug, Default)]
pub struct Network {
    pub graph: Graph,
    pub inputs: Vec<NodeId>,
    pub outputs: Vec<(String, NodeId)>,
    pub symbols: Vec<Symbol>,
    /// Each block application: its instance path and the block's name (for reports).
    pub block_instances: Vec<(InstancePath, String)>,
    /// The `loss` statement's name (`loss` unless it says `loss name = ...`) and scalar value.
    /// Lowered as one extra output only when asked (`LowerOptions::losses`).
    pub loss: Option<(String, NodeId)>,
    /// Where the `loss` statement is, for the error when its value is not a scalar.
    pub loss_span: Option<Span>,
}

impl Network {
    /// Whether each node (by index) is needed to compute the outputs; nodes that only the loss
    /// needs (label inputs, the loss itself) are not.
    pub fn needed_by_outputs(&self) -> Vec<bool> {
        let roots: Vec<NodeId> = self.outputs.iter().map(|(_, node)| *node).collect();
        self.graph.reached_from(&roots)
    }

    /// The inputs of the forward pass, in declaration order: those some output reads. Inputs
    /// that only the loss reads (labels, targets) are left out, so inference takes an image
    /// alone; the graph lowered with losses takes every input.
    pub fn forward_inputs(&self) -> Vec<NodeId> {
        let needed = self.needed_by_outputs();
        let inputs = self.inputs.iter().copied();
        inputs.filter(|input| needed[input.index()]).collect()
    }

    pub fn symbol(&self, id: SymbolId) -> &Symbol {
        &self.symbols[id.0]
    }

    /// The dimension's value for reports: a number, or its symbol's report value.
    pub fn report_size(&self, dim: Dim) -> u64 {
        match dim {
            Dim::Known(size) => size,
            Dim::Symbolic(symbol) => self.symbol(symbol).report_value,
        }
    }

    pub fn format_shape(&self, shape: &[Dim]) -> String {
        let dims: Vec<String> = shape.iter().map(|dim| self.format_dim(*dim)).collect();
        format!("[{}]", dims.join(", "))
    }

    pub fn format_dim(&self, dim: Dim) -> String {
        match dim {
            Dim::Known(size) => size.to_string(),
            Dim::Symbolic(symbol) => self.symbol(symbol).name.clone(),
        }
    }
}
