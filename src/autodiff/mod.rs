//! Symbolic reverse-mode differentiation of a primitive graph.
//!
//! [`gradient`] returns a new [`PrimGraph`]: the forward graph (same node ids, same outputs)
//! followed by the nodes that compute the gradient of one scalar output with respect to every
//! parameter (outputs `grad.<state_dict name>`) and, on request, some inputs (outputs
//! `grad.<input name>`). The gradient nodes are ordinary primitive ops, so the gradient graph
//! goes through the same interpreter, fusion and code generation as any other.
//!
//! The driver is micrograd's `backward`: walk the forward nodes in reverse topological order,
//! hand each node's accumulated output gradient to its vector-Jacobian rule (`rules.rs`, one
//! per op), and add the contributions into the operands' gradients. Only nodes that depend on a
//! parameter or a requested input get gradients.

mod builder;
mod min_cut;
mod rematerialize;
mod rules;
mod scan;
mod simplify;
mod simplify_rules;
mod simplify_single_use;
mod training_graph;
mod window;

pub use rematerialize::{rematerialize, RecomputePlan, SavedChoice, SavedValue};
pub use simplify::simplify;
pub use training_graph::*;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::ir::ElementType;
use crate::prim::*;
use builder::GradientBuilder;
use rules::ForwardNode;

#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    #[error("the graph has {count} outputs, so there is no output {index} to differentiate")]
    NoSuchOutput { index: usize, count: usize },
    #[error("the loss `{name}` must be a scalar, but has shape {shape:?}")]
    LossNotScalar { name: String, shape: Vec<usize> },
    #[error("the graph has {count} inputs, so there is no input {index} to differentiate by")]
    NoSuchInput { index: usize, count: usize },
    #[error("input `{name}` holds integer ids, which have no gradient")]
    IntegerInput { name: String },
    #[error("`{op}` is not differentiable yet: {reason}")]
    NotDifferentiable { op: &'static str, reason: String },
    #[error("internal error (a bug in nnc): a `{op}` gradient node is ill-typed: {message}")]
    Internal { op: &'static str, message: String },
}

/// The forward graph plus the gradient of output `loss_output` (a scalar) with respect to
/// every parameter and to the inputs at positions `wrt_inputs` (of `graph.inputs`).
pub fn gradient(
    graph: &PrimGraph,
    loss_output: usize,
    wrt_inputs: &[usize],
) -> Result<PrimGraph, AutodiffError> {
    gradient_of_parameters(graph, loss_output, wrt_inputs, &|_| true)
}

/// [`gradient`] for the parameters whose name `trainable` accepts: the others (buffers such
/// as batch norm's running statistics) get no `grad.` output, and nothing is differentiated
/// only for their sake.
pub fn gradient_of_parameters(
    graph: &PrimGraph,
    loss_output: usize,
    wrt_inputs: &[usize],
    trainable: &dyn Fn(&str) -> bool,
) -> Result<PrimGraph, AutodiffError> {
    let (loss_name, loss) =
        graph
            .outputs
            .get(loss_output)
            .cloned()
            .ok_or(AutodiffError::NoSuchOutput {
                index: loss_output,
                count: graph.outputs.len(),
            })?;
    let loss_shape = graph.node(loss).ty.shape.clone();
    if loss_shape.iter().product::<usize>() != 1 {
        return Err(AutodiffError::LossNotScalar {
            name: loss_name,
            shape: loss_shape,
        });
    }
    let wrt_nodes = input_nodes(graph, wrt_inputs)?;
    let needs_gradient = nodes_depending_on(graph, &wrt_nodes, trainable);
    let mut out = graph.clone();
    let seed = GradientBuilder {
        graph: &mut out,
        origin: graph.node(loss).origin.clone(),
    }
    .splat(&loss_shape, 1.0)?;
    let adjoints = backpropagate(graph, &mut out, &|id| id, &[(loss, seed)], &needs_gradient)?;
    add_gradient_outputs(graph, &mut out, &adjoints, &wrt_nodes, trainable)?;
    Ok(out)
}

/// Reverse-mode differentiation of `source`, emitting into `out`, where the value of source
/// node `id` is `value_of(id)`: starting from the `seeds` (source node, its gradient in `out`),
/// walks `source` in reverse topological order and applies each node's rule. Returns each
/// source node's accumulated gradient (nodes in `needs_gradient` only).
pub(crate) fn backpropagate(
    source: &PrimGraph,
    out: &mut PrimGraph,
    value_of: &dyn Fn(PrimNodeId) -> PrimNodeId,
    seeds: &[(PrimNodeId, PrimNodeId)],
    needs_gradient: &HashSet<PrimNodeId>,
) -> Result<HashMap<PrimNodeId, PrimNodeId>, AutodiffError> {
    let mut adjoints: HashMap<PrimNodeId, PrimNodeId> = HashMap::new();
    for (node, seed) in seeds {
        let mut builder = GradientBuilder {
            graph: &mut *out,
            origin: source.node(*node).origin.clone(),
        };
        accumulate(&mut builder, &mut adjoints, *node, *seed)?;
    }
    for id in source.topological_order().into_iter().rev() {
        let Some(&g) = adjoints.get(&id) else {
            continue;
        };
        let node = source.node(id);
        let operands = source.operands(id);
        let needs: Vec<bool> = operands
            .iter()
            .map(|operand| needs_gradient.contains(operand))
            .collect();
        if !needs.contains(&true) {
            continue;
        }
        let mapped: Vec<PrimNodeId> = operands.iter().map(|operand| value_of(*operand)).collect();
        let mut builder = GradientBuilder {
            graph: &mut *out,
            origin: node.origin.clone(),
        };
        let forward = ForwardNode {
            op: &node.op,
            value: value_of(id),
            operands: &mapped,
            needs: &needs,
        };
        let contributions = rules::vector_jacobian(&mut builder, &forward, g)?;
        for ((operand, contribution), needed) in operands.iter().zip(contributions).zip(&needs) {
            let (Some(contribution), true) = (contribution, *needed) else {
                continue;
            };
            accumulate(&mut builder, &mut adjoints, *operand, contribution)?;
        }
    }
    Ok(adjoints)
}

/// Adds `contribution` into the gradient of `operand`.
fn accumulate(
    builder: &mut GradientBuilder,
    adjoints: &mut HashMap<PrimNodeId, PrimNodeId>,
    operand: PrimNodeId,
    contribution: PrimNodeId,
) -> Result<(), AutodiffError> {
    let total = match adjoints.get(&operand) {
        Some(previous) => builder.add_values(*previous, contribution)?,
        None => contribution,
    };
    adjoints.insert(operand, total);
    Ok(())
}

fn input_nodes(graph: &PrimGraph, wrt_inputs: &[usize]) -> Result<Vec<PrimNodeId>, AutodiffError> {
    wrt_inputs
        .iter()
        .map(|index| {
            let (name, id) = graph.inputs.get(*index).ok_or(AutodiffError::NoSuchInput {
                index: *index,
                count: graph.inputs.len(),
            })?;
            if graph.node(*id).ty.element_type != ElementType::Float32 {
                return Err(AutodiffError::IntegerInput { name: name.clone() });
            }
            Ok(*id)
        })
        .collect()
}

/// The float nodes whose value depends on one of `wrt_nodes` (or on a parameter, when
/// `from_parameters`).
pub(crate) fn nodes_needing_gradient(
    graph: &PrimGraph,
    wrt_nodes: &[PrimNodeId],
    from_parameters: bool,
) -> HashSet<PrimNodeId> {
    nodes_depending_on(graph, wrt_nodes, &|_| from_parameters)
}

/// The float nodes whose value depends on one of `wrt_nodes` or on a parameter whose name
/// `parameters` accepts.
fn nodes_depending_on(
    graph: &PrimGraph,
    wrt_nodes: &[PrimNodeId],
    parameters: &dyn Fn(&str) -> bool,
) -> HashSet<PrimNodeId> {
    let mut needing: HashSet<PrimNodeId> = HashSet::new();
    for id in graph.topological_order() {
        let node = graph.node(id);
        let is_parameter = matches!(&node.op, PrimOp::Parameter { name, .. } if parameters(name));
        let is_source = is_parameter || wrt_nodes.contains(&id);
        let float = node.ty.element_type == ElementType::Float32;
        let from_operand = graph
            .operands(id)
            .iter()
            .any(|operand| needing.contains(operand));
        if float && (is_source || from_operand) {
            needing.insert(id);
        }
    }
    needing
}

/// Names the gradients: one output per parameter name (a parameter read by several nodes sums
/// their gradients; one the loss does not depend on gets zeros), then one per requested input.
fn add_gradient_outputs(
    graph: &PrimGraph,
    out: &mut PrimGraph,
    adjoints: &HashMap<PrimNodeId, PrimNodeId>,
    wrt_nodes: &[PrimNodeId],
    trainable: &dyn Fn(&str) -> bool,
) -> Result<(), AutodiffError> {
    let mut parameters: BTreeMap<String, Vec<PrimNodeId>> = BTreeMap::new();
    for id in graph.topological_order() {
        if let PrimOp::Parameter { name, .. } = &graph.node(id).op {
            if !trainable(name) {
                continue;
            }
            parameters.entry(name.clone()).or_default().push(id);
        }
    }
    let mut named: Vec<(String, Vec<PrimNodeId>)> = parameters.into_iter().collect();
    for id in wrt_nodes {
        let name = graph
            .inputs
            .iter()
            .find(|(_, input)| input == id)
            .map(|(name, _)| name.clone())
            .expect("input nodes come from the input list");
        named.push((name, vec![*id]));
    }
    for (name, ids) in named {
        let mut builder = GradientBuilder {
            origin: graph.node(ids[0]).origin.clone(),
            graph: out,
        };
        let mut total = None;
        for id in &ids {
            let Some(&adjoint) = adjoints.get(id) else {
                continue;
            };
            total = Some(match total {
                Some(previous) => builder.add_values(previous, adjoint)?,
                None => adjoint,
            });
        }
        let total = match total {
            Some(total) => total,
            None => builder.splat(&graph.node(ids[0]).ty.shape, 0.0)?,
        };
        out.outputs.push((format!("grad.{name}"), total));
    }
    Ok(())
}
