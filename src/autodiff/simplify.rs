//! Simplification of gradient graphs: common-subexpression elimination, zero/one propagation and
//! dead-code elimination, keeping every input and output (names and order).
//!
//! The vector-Jacobian rules are written one op at a time, so the graph they build is full of
//! waste that only shows across rules: the same scalar constant emitted by every rule, a
//! `reshape` of a `reshape`, a splat one broadcast by adding zeros and then reshaped, gradients
//! added to zero, the seed `1` multiplied through. [`simplify`] rebuilds the graph node by node
//! in topological order; each node, once its operands are final, first goes through the
//! peephole rules (`simplify_rules.rs`: identities, folding of splat constants, layout chains,
//! broadcasts an elementwise user does itself) and then through a table of the nodes built so
//! far (CSE). Since every node sees its operands' final form, one pass reaches a fixpoint of the
//! local rules; a second pass copies only the nodes an output depends on. Two rewrites need to
//! know a node's users and are decided on the source graph first (`simplify_single_use.rs`): a
//! convolution only cropped computes the crop, and a transposed product becomes the product of
//! transposes. Scan bodies are simplified as graphs of their own, keeping their interface.
//!
//! Every rule is exact in IEEE arithmetic, both in the f64 reference interpreter and in the f32
//! runtime, with one stated exception: `x + 0 -> x`, `0 - x -> -x`, `f(x + zeros, y) -> f(x, y)`
//! and a sum over axes of size one may turn a `+0` result into `-0` (`-0 + 0 = +0`). The two
//! compare equal, and no primitive tells them apart except a division by zero, which gradient
//! graphs do not do with gradients. Rules that are not exact are left out on purpose:
//! `x * 0 -> 0` (NaN and infinity times zero are NaN, and a NaN gradient must stay visible),
//! folding transcendental functions of constants (the runtime's f32 polynomials do not round
//! like f64 `exp`), folding arithmetic on constants that are not f32 numbers (`fold_binary`),
//! and sums of splats that are not exact in every order (`exact_multiple`).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use super::simplify_rules::{rewrite, Rewrite};
use super::simplify_single_use::{Crop, SingleUseRewrites};
use crate::prim::*;

/// The graph with the same inputs and outputs, computing the same values with fewer nodes.
pub fn simplify(graph: &PrimGraph) -> PrimGraph {
    let rebuilt = Rebuild::run(graph);
    keep_live_nodes(&rebuilt)
}

/// Builds the simplified graph: source node ids map to ids of `out`.
struct Rebuild<'source> {
    source: &'source PrimGraph,
    out: PrimGraph,
    mapped: HashMap<PrimNodeId, PrimNodeId>,
    /// The nodes built so far by their structural key, for CSE.
    built: HashMap<String, Vec<PrimNodeId>>,
}

impl<'source> Rebuild<'source> {
    fn run(source: &'source PrimGraph) -> PrimGraph {
        let single_use = SingleUseRewrites::find(source);
        let mut rebuild = Rebuild {
            source,
            out: PrimGraph::default(),
            mapped: HashMap::new(),
            built: HashMap::new(),
        };
        // Inputs first, in index order, so that each keeps its index.
        for (name, id) in &source.inputs {
            let node = source.node(*id);
            let new_id = rebuild
                .out
                .add_input(name, node.ty.clone(), node.origin.clone());
            rebuild.mapped.insert(*id, new_id);
        }
        for id in source.topological_order() {
            if rebuild.mapped.contains_key(&id) {
                continue;
            }
            let new_id = if let Some(crop) = single_use.crops.get(&id) {
                rebuild.emit_cropped_convolution(id, crop)
            } else if let Some(conv) = single_use.cropped_by.get(&id) {
                // The cropped convolution already has this slice's value.
                rebuild.mapped[conv]
            } else if single_use.transposed_products.contains(&id) {
                rebuild.emit_transposed_product(id)
            } else {
                rebuild.emit_source_node(id)
            };
            rebuild.mapped.insert(id, new_id);
        }
        rebuild.out.outputs = source
            .outputs
            .iter()
            .map(|(name, id)| (name.clone(), rebuild.mapped[id]))
            .collect();
        rebuild.out
    }

    fn emit_source_node(&mut self, id: PrimNodeId) -> PrimNodeId {
        let node = self.source.node(id);
        let operands: Vec<PrimNodeId> = self
            .source
            .operands(id)
            .iter()
            .map(|operand| self.mapped[operand])
            .collect();
        let op = match &node.op {
            // A scan's body is a graph of its own: simplified with its interface kept.
            PrimOp::Scan {
                body,
                axis,
                reverse,
            } => PrimOp::Scan {
                body: Box::new(ScanBody {
                    graph: simplify(&body.graph),
                    sequence_count: body.sequence_count,
                    state_count: body.state_count,
                }),
                axis: *axis,
                reverse: *reverse,
            },
            op => op.clone(),
        };
        self.emit(op, operands, &node.ty, &node.origin)
    }

    /// The convolution of `crop`, computing only the rows and columns its slices keep.
    fn emit_cropped_convolution(&mut self, id: PrimNodeId, crop: &Crop) -> PrimNodeId {
        let node = self.source.node(id);
        let operands: Vec<PrimNodeId> = self
            .source
            .operands(id)
            .iter()
            .map(|operand| self.mapped[operand])
            .collect();
        let mut operands = operands;
        for (axis, rows) in &crop.input_rows {
            let slice = PrimOp::Slice {
                axis: *axis,
                start: 0,
                end: *rows,
            };
            let input_type = &self.out.node(operands[0]).ty;
            let ty = infer_type(&slice, &[input_type])
                .expect("internal error (a bug in nnc): a cropped input does not type-check");
            operands[0] = self.emit(slice, vec![operands[0]], &ty, &node.origin);
        }
        let op = PrimOp::Conv2d(crop.params.clone());
        let types: Vec<&TensorType> = operands.iter().map(|id| &self.out.node(*id).ty).collect();
        let ty = infer_type(&op, &types)
            .expect("internal error (a bug in nnc): a cropped convolution does not type-check");
        self.emit(op, operands, &ty, &node.origin)
    }

    /// `transpose(a @ b)` (of the last two axes) as `transpose(b) @ transpose(a)`: the same
    /// products summed over the same axis in the same order, without the product's copy.
    fn emit_transposed_product(&mut self, id: PrimNodeId) -> PrimNodeId {
        let node = self.source.node(id);
        let product = self.source.operands(id)[0];
        let factors = self.source.operands(product);
        let transposed: Vec<PrimNodeId> = factors
            .iter()
            .rev()
            .map(|factor| {
                let factor = self.mapped[factor];
                let rank = self.out.node(factor).ty.shape.len();
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(rank - 2, rank - 1);
                let op = PrimOp::Transpose { perm };
                let ty = infer_type(&op, &[&self.out.node(factor).ty]).expect(
                    "internal error (a bug in nnc): a matrix transpose does not type-check",
                );
                self.emit(op, vec![factor], &ty, &node.origin)
            })
            .collect();
        self.emit(PrimOp::MatMul, transposed, &node.ty, &node.origin)
    }

    /// Adds `op(operands)` of type `ty` after the rewrite rules and CSE. A rewrite that would
    /// change the node's type is a bug in a rule; it is ignored rather than trusted.
    fn emit(
        &mut self,
        mut op: PrimOp,
        mut operands: Vec<PrimNodeId>,
        ty: &TensorType,
        origin: &Origin,
    ) -> PrimNodeId {
        let original = (op.clone(), operands.clone());
        // Each replacement is a simpler op, so this ends; the bound is a guard against a cycle
        // of rules.
        for _ in 0..16 {
            match rewrite(&self.out, &op, &operands, ty) {
                Rewrite::Keep => break,
                Rewrite::Value(existing) if self.out.node(existing).ty == *ty => return existing,
                Rewrite::Value(_) => break,
                Rewrite::Replace(new_op, new_operands) => {
                    op = new_op;
                    operands = new_operands;
                }
                Rewrite::Then(inner_op, inner_operands, outer_op) => {
                    let inner_types: Vec<&TensorType> = inner_operands
                        .iter()
                        .map(|operand| &self.out.node(*operand).ty)
                        .collect();
                    let Ok(inner_ty) = infer_type(&inner_op, &inner_types) else {
                        break;
                    };
                    let inner = self.emit(inner_op, inner_operands, &inner_ty, origin);
                    op = outer_op;
                    operands = vec![inner];
                }
            }
        }
        match self.add_shared(op, &operands, ty, origin) {
            Some(id) => id,
            None => {
                let (op, operands) = original;
                self.add_shared(op, &operands, ty, origin)
                    .expect("internal error (a bug in nnc): a verified node no longer type-checks")
            }
        }
    }

    /// The existing node computing `op(operands)`, or a new one; `None` if the node would not
    /// have type `ty`.
    fn add_shared(
        &mut self,
        op: PrimOp,
        operands: &[PrimNodeId],
        ty: &TensorType,
        origin: &Origin,
    ) -> Option<PrimNodeId> {
        let key = structural_key(&op, operands);
        if let Some(key) = &key {
            let candidates = self.built.get(key).into_iter().flatten();
            for candidate in candidates {
                if same_constant_data(&self.out.node(*candidate).op, &op) {
                    return Some(*candidate);
                }
            }
        }
        let id = self.out.add(op, operands, origin.clone()).ok()?;
        if self.out.node(id).ty != *ty {
            return None;
        }
        if let Some(key) = key {
            self.built.entry(key).or_default().push(id);
        }
        Some(id)
    }
}

/// A text that two nodes share exactly when they compute the same value: the op with its
/// attributes (Rust's `Debug` prints every field, and floats so that they read back exactly)
/// and the operands, in a canonical order for commutative functions. Dense constants key by a
/// hash of their data (checked element by element on a hit). Inputs are never merged, and
/// scans are not compared (their bodies are whole graphs).
fn structural_key(op: &PrimOp, operands: &[PrimNodeId]) -> Option<String> {
    let attributes = match op {
        PrimOp::Input { .. } | PrimOp::Scan { .. } => return None,
        PrimOp::Constant(Constant::Dense(tensor)) => {
            let mut hasher = DefaultHasher::new();
            tensor.shape.hash(&mut hasher);
            for value in &tensor.data {
                value.to_bits().hash(&mut hasher);
            }
            format!("dense{:?}#{:x}", tensor.shape, hasher.finish())
        }
        op => format!("{op:?}"),
    };
    let mut operands = operands.to_vec();
    // a + b, a * b, max(a, b) and a == b are the same bits either way round.
    if let PrimOp::Binary(BinaryFn::Add | BinaryFn::Mul | BinaryFn::Max | BinaryFn::Equal) = op {
        operands.sort();
    }
    let operands: Vec<usize> = operands.iter().map(|id| id.index()).collect();
    Some(format!("{attributes}{operands:?}"))
}

/// Whether a node found under the same key really is the same: always, except for dense
/// constants, whose key is only a hash of the data.
fn same_constant_data(existing: &PrimOp, new: &PrimOp) -> bool {
    match (existing, new) {
        (PrimOp::Constant(Constant::Dense(a)), PrimOp::Constant(Constant::Dense(b))) => {
            a.shape == b.shape
                && a.data.len() == b.data.len()
                && a.data
                    .iter()
                    .zip(&b.data)
                    .all(|(x, y)| x.to_bits() == y.to_bits())
        }
        _ => true,
    }
}

/// Dead-code elimination: a copy of `graph` with the nodes some output depends on, plus every
/// input (the graph's interface), in the same order.
fn keep_live_nodes(graph: &PrimGraph) -> PrimGraph {
    let mut live: HashSet<PrimNodeId> = HashSet::new();
    let mut pending: Vec<PrimNodeId> = graph.outputs.iter().map(|(_, id)| *id).collect();
    while let Some(id) = pending.pop() {
        if live.insert(id) {
            pending.extend(graph.operands(id));
        }
    }
    let mut out = PrimGraph::default();
    let mut mapped: HashMap<PrimNodeId, PrimNodeId> = HashMap::new();
    for (name, id) in &graph.inputs {
        let node = graph.node(*id);
        mapped.insert(
            *id,
            out.add_input(name, node.ty.clone(), node.origin.clone()),
        );
    }
    for id in graph.topological_order() {
        if mapped.contains_key(&id) || !live.contains(&id) {
            continue;
        }
        let node = graph.node(id);
        let operands: Vec<PrimNodeId> = graph
            .operands(id)
            .iter()
            .map(|operand| mapped[operand])
            .collect();
        let new_id = out
            .add(node.op.clone(), &operands, node.origin.clone())
            .expect("internal error (a bug in nnc): copying a checked node failed its shape rule");
        mapped.insert(id, new_id);
    }
    out.outputs = graph
        .outputs
        .iter()
        .map(|(name, id)| (name.clone(), mapped[id]))
        .collect();
    out
}
