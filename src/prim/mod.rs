//! The primitive graph: the IR after lowering, which autodiff, fusion, the reference interpreter
//! and code generation read.
//!
//! A [`PrimGraph`] is a petgraph `StableDiGraph` of [`PrimNode`]s. Each node is one [`PrimOp`]
//! from a small closed set (matmul, convolution, elementwise, reductions, layout ops, gather,
//! scan), the concrete [`TensorType`] of its value, and the [`Origin`] (instance path and span)
//! of the layer it came from. Edges run from producer to consumer and carry the operand position.
//!
//! What holds true of a `PrimGraph`:
//! - shapes are concrete numbers: lowering specialized every symbolic dim (`N`, `T`);
//! - every node's type is what its op's shape rule (`shape.rs`) gives for its operands' types:
//!   [`PrimGraph::add`] runs the rule, and [`verify`] re-checks a whole graph;
//! - it is acyclic, and a node's operand positions are exactly `0..arity`;
//! - `inputs` lists the `Input` nodes in index order; `outputs` names the results;
//! - node ids are stable: passes that remove nodes keep the other ids (`StableDiGraph`).

pub mod cost;
mod op;
pub mod print;
mod shape;

pub use op::*;
pub use shape::{infer_type, PrimShapeError};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::ir::{ElementType, InstancePath};
use crate::syntax::Span;

/// A node of a [`PrimGraph`]; a typed wrapper over petgraph's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrimNodeId(pub NodeIndex);

impl PrimNodeId {
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// The type of a node's value: a concrete shape and an element type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    pub shape: Vec<usize>,
    pub element_type: ElementType,
}

impl TensorType {
    pub fn float(shape: Vec<usize>) -> TensorType {
        TensorType {
            shape,
            element_type: ElementType::Float32,
        }
    }

    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Where a primitive node came from: the layer's instance path and its span in the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub path: InstancePath,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct PrimNode {
    pub op: PrimOp,
    pub ty: TensorType,
    pub origin: Origin,
}

/// A dataflow graph of primitive ops with concrete shapes.
#[derive(Clone, Debug, Default)]
pub struct PrimGraph {
    graph: StableDiGraph<PrimNode, usize>,
    /// The `Input` nodes by name, in index order.
    pub inputs: Vec<(String, PrimNodeId)>,
    /// The graph's results by name.
    pub outputs: Vec<(String, PrimNodeId)>,
}

impl PrimGraph {
    /// Adds a node after checking its operands with the op's shape rule.
    pub fn add(
        &mut self,
        op: PrimOp,
        operands: &[PrimNodeId],
        origin: Origin,
    ) -> Result<PrimNodeId, PrimShapeError> {
        let operand_types: Vec<&TensorType> = operands
            .iter()
            .map(|operand| &self.node(*operand).ty)
            .collect();
        let ty = infer_type(&op, &operand_types)?;
        let id = PrimNodeId(self.graph.add_node(PrimNode { op, ty, origin }));
        for (position, operand) in operands.iter().enumerate() {
            self.graph.add_edge(operand.0, id.0, position);
        }
        Ok(id)
    }

    /// Adds the next graph input (an `Input` node whose index is its position in `inputs`).
    pub fn add_input(&mut self, name: &str, ty: TensorType, origin: Origin) -> PrimNodeId {
        let op = PrimOp::Input {
            index: self.inputs.len(),
            shape: ty.shape,
            element_type: ty.element_type,
        };
        let id = self
            .add(op, &[], origin)
            .expect("an input has no operands to mismatch");
        self.inputs.push((name.to_string(), id));
        id
    }

    pub fn node(&self, id: PrimNodeId) -> &PrimNode {
        &self.graph[id.0]
    }

    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = PrimNodeId> + '_ {
        self.graph.node_indices().map(PrimNodeId)
    }

    /// The node's operands, in operand order.
    pub fn operands(&self, id: PrimNodeId) -> Vec<PrimNodeId> {
        let mut edges: Vec<(usize, PrimNodeId)> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|edge| (*edge.weight(), PrimNodeId(edge.source())))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, operand)| operand).collect()
    }

    /// The nodes that read this node's value.
    pub fn users(&self, id: PrimNodeId) -> Vec<PrimNodeId> {
        let mut users: Vec<PrimNodeId> = self
            .graph
            .neighbors_directed(id.0, Direction::Outgoing)
            .map(PrimNodeId)
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// A topological order: creation order when operands precede their users (always true of
    /// a graph built only with [`PrimGraph::add`], and it reads like the spec), else petgraph's.
    pub fn topological_order(&self) -> Vec<PrimNodeId> {
        let creation: Vec<PrimNodeId> = self.node_ids().collect();
        let operands_first = creation.iter().all(|id| {
            self.operands(*id)
                .iter()
                .all(|operand| operand.index() < id.index())
        });
        if operands_first {
            return creation;
        }
        petgraph::algo::toposort(&self.graph, None)
            .expect("internal error (a bug in nnc): the primitive graph has a cycle")
            .into_iter()
            .map(PrimNodeId)
            .collect()
    }

    pub fn petgraph(&self) -> &StableDiGraph<PrimNode, usize> {
        &self.graph
    }

    /// For rewriting passes: the graph itself (keep the invariants above; run [`verify`]).
    pub fn petgraph_mut(&mut self) -> &mut StableDiGraph<PrimNode, usize> {
        &mut self.graph
    }
}

/// A broken invariant of a primitive graph: always a bug in the pass that built it.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("internal error (a bug in nnc): node %{node} ({op}) at `{path}`: {message}")]
    Node {
        node: usize,
        op: &'static str,
        path: String,
        message: String,
    },
    #[error("internal error (a bug in nnc): {0}")]
    Graph(String),
}

/// Checks every invariant listed in the module doc, recursing into scan bodies.
pub fn verify(graph: &PrimGraph) -> Result<(), VerifyError> {
    if petgraph::algo::is_cyclic_directed(&graph.graph) {
        return Err(VerifyError::Graph("the primitive graph has a cycle".into()));
    }
    for id in graph.node_ids() {
        let node = graph.node(id);
        let fail = |message: String| VerifyError::Node {
            node: id.index(),
            op: node.op.name(),
            path: node.origin.path.to_string(),
            message,
        };
        let mut positions: Vec<usize> = graph
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|edge| *edge.weight())
            .collect();
        positions.sort();
        if positions
            .iter()
            .enumerate()
            .any(|(index, position)| index != *position)
        {
            return Err(fail(format!(
                "operand positions {positions:?} are not 0..n"
            )));
        }
        let operand_types: Vec<&TensorType> = graph
            .operands(id)
            .iter()
            .map(|operand| &graph.node(*operand).ty)
            .collect();
        let ty = infer_type(&node.op, &operand_types).map_err(|error| fail(error.to_string()))?;
        if ty != node.ty {
            return Err(fail(format!(
                "stored type {:?} differs from its rule's {:?}",
                node.ty, ty
            )));
        }
        if let PrimOp::Input { index, .. } = &node.op {
            if graph.inputs.get(*index).map(|(_, input)| *input) != Some(id) {
                return Err(fail(format!(
                    "input {index} is not listed at that position"
                )));
            }
        }
        if let PrimOp::Scan { body, .. } = &node.op {
            verify(&body.graph)?;
        }
    }
    for (name, id) in graph.inputs.iter().chain(&graph.outputs) {
        if graph.graph.node_weight(id.0).is_none() {
            return Err(VerifyError::Graph(format!("`{name}` names a removed node")));
        }
    }
    Ok(())
}
