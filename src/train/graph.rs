//! Building the training step graph: the network lowered in training mode with its loss, the
//! gradient nodes of that loss (`autodiff::gradient`, then simplified), and the optimizer's
//! update nodes, all in one [`PrimGraph`] whose outputs are the loss and the new values of
//! every updated tensor. One graph means one executable: forward, backward and update are
//! fused, planned and JIT-compiled together, and the gradients never leave the arena.

use std::collections::BTreeMap;

use super::optimizer::{Optimizer, ParameterToUpdate, StateTensor, UpdateGraph};
use super::TrainError;
use crate::autodiff::{self, TrainingGraphError, GRADIENT_PREFIX};
use crate::lower::SymbolValues;
use crate::prim::{Origin, PrimGraph, PrimNodeId, PrimOp, TensorType};
use crate::runtime::ParameterUpdate;
use crate::Compilation;

pub use crate::autodiff::BUFFER_UPDATE_PREFIX;

/// The prefix of the graph inputs holding the optimizer's hyperparameters (`optimizer.lr`).
/// Spec input names are identifiers, so none contains the dot.
pub const HYPERPARAMETER_PREFIX: &str = "optimizer.";

/// A training step as one primitive graph, with what running it needs to know.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// Inputs: the network's (labels included), then one scalar per hyperparameter. Outputs:
    /// the loss first, then one per updated tensor.
    pub graph: PrimGraph,
    pub loss: String,
    /// How many leading graph inputs are data (the rest are hyperparameters).
    pub data_input_count: usize,
    /// Hyperparameter names in input order (without the prefix).
    pub hyperparameters: Vec<String>,
    /// Which output replaces which parameter, buffer or optimizer state tensor.
    pub updates: Vec<ParameterUpdate>,
    /// The optimizer's state tensors, zero before the first step.
    pub state: Vec<StateTensor>,
    /// The trainable parameters the optimizer updates, in name order.
    pub updated_parameters: Vec<String>,
}

/// Lowers the network in training mode with its loss; returns the graph and the loss's output
/// name. A spec without a `loss` statement cannot be trained.
pub fn lower_for_training(
    compilation: &Compilation,
    symbols: &SymbolValues,
) -> Result<(PrimGraph, String), TrainError> {
    let (graph, loss_output) =
        autodiff::lower_training(compilation, symbols).map_err(|error| match error {
            TrainingGraphError::NoLoss => TrainError::NoLoss,
            TrainingGraphError::Lower(error) => TrainError::Lower(error),
            TrainingGraphError::Autodiff(error) => TrainError::Autodiff(error),
        })?;
    let loss = graph.outputs[loss_output].0.clone();
    Ok((graph, loss))
}

/// The forward graph plus the gradient of output `loss` with respect to every parameter that
/// `is_trainable` accepts (outputs `grad.<name>` after the forward outputs), simplified.
pub fn gradient_graph(
    forward: &PrimGraph,
    loss: &str,
    is_trainable: &dyn Fn(&str) -> bool,
) -> Result<PrimGraph, TrainError> {
    let position = forward
        .outputs
        .iter()
        .position(|(name, _)| name == loss)
        .ok_or_else(|| TrainError::Internal(format!("the graph has no loss output `{loss}`")))?;
    let graph = autodiff::gradient_of_parameters(forward, position, &[], is_trainable)?;
    Ok(autodiff::simplify(&graph))
}

/// Appends `optimizer`'s updates to the gradient of `loss` in `forward` (a graph lowered in
/// training mode with the loss as an output). Parameters for which `is_trainable` is false
/// (batch norm's running statistics) get no optimizer update; their `buffer_update.*` outputs,
/// if any, replace them instead.
pub fn build_training_graph(
    forward: &PrimGraph,
    loss: &str,
    is_trainable: &dyn Fn(&str) -> bool,
    optimizer: &dyn Optimizer,
) -> Result<TrainingGraph, TrainError> {
    let data_input_count = forward.inputs.len();
    let mut graph = gradient_graph(forward, loss, is_trainable)?;
    let outputs: BTreeMap<String, PrimNodeId> = graph.outputs.iter().cloned().collect();
    let loss_node = outputs[loss];
    let origin = graph.node(loss_node).origin.clone();
    let hyperparameters: Vec<String> = optimizer
        .hyperparameter_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut hyperparameter_inputs = BTreeMap::new();
    for name in &hyperparameters {
        let input_name = format!("{HYPERPARAMETER_PREFIX}{name}");
        let scalar = TensorType::float(Vec::new());
        let id = graph.add_input(&input_name, scalar, origin.clone());
        hyperparameter_inputs.insert(name.clone(), id);
    }
    let parameters = trainable_parameters(&graph, &outputs, is_trainable);
    let mut update_graph = UpdateGraph::new(&mut graph, &hyperparameter_inputs, origin);
    for parameter in &parameters {
        update_graph.set_origin(parameter_origin(forward, parameter.value));
        optimizer.append_update(&mut update_graph, parameter)?;
    }
    let (state, optimizer_updates) = update_graph.finish();
    for parameter in &parameters {
        if !optimizer_updates
            .iter()
            .any(|update| update.target == parameter.name)
        {
            return Err(TrainError::Internal(format!(
                "the optimizer `{}` left parameter `{}` without an update",
                optimizer.name(),
                parameter.name
            )));
        }
    }
    let mut new_outputs = vec![(loss.to_string(), loss_node)];
    let mut updates = Vec::new();
    for (name, id) in &outputs {
        if let Some(buffer) = name.strip_prefix(BUFFER_UPDATE_PREFIX) {
            new_outputs.push((name.clone(), *id));
            updates.push(ParameterUpdate {
                output: name.clone(),
                parameter: buffer.to_string(),
            });
        }
    }
    for update in optimizer_updates {
        new_outputs.push((update.output.clone(), update.value));
        updates.push(ParameterUpdate {
            output: update.output,
            parameter: update.target,
        });
    }
    graph.outputs = new_outputs;
    // Drops what only the network's outputs needed, and merges the optimizer's constants.
    let graph = autodiff::simplify(&graph);
    if cfg!(debug_assertions) {
        crate::prim::verify(&graph).map_err(|error| TrainError::Internal(error.to_string()))?;
    }
    Ok(TrainingGraph {
        graph,
        loss: loss.to_string(),
        data_input_count,
        hyperparameters,
        updates,
        state,
        updated_parameters: parameters.into_iter().map(|p| p.name).collect(),
    })
}

/// The whole pipeline from a checked spec: training-mode lowering with the loss, gradient,
/// simplification, the optimizer's updates.
pub fn training_graph_for_spec(
    compilation: &Compilation,
    symbols: &SymbolValues,
    optimizer: &dyn Optimizer,
) -> Result<TrainingGraph, TrainError> {
    let (forward, loss) = lower_for_training(compilation, symbols)?;
    let trainable = autodiff::trainable_parameters(compilation);
    let is_trainable = |name: &str| trainable.contains(name);
    build_training_graph(&forward, &loss, &is_trainable, optimizer)
}

/// Every trainable parameter the graph reads, with its gradient output, in name order. A
/// parameter read by several nodes (a shared layer) has one `Parameter` node per name in the
/// lowered graph; should there be several, the update reads the first (they hold one value).
fn trainable_parameters(
    graph: &PrimGraph,
    outputs: &BTreeMap<String, PrimNodeId>,
    is_trainable: &dyn Fn(&str) -> bool,
) -> Vec<ParameterToUpdate> {
    let mut nodes: BTreeMap<String, PrimNodeId> = BTreeMap::new();
    for id in graph.topological_order() {
        if let PrimOp::Parameter { name, .. } = &graph.node(id).op {
            nodes.entry(name.clone()).or_insert(id);
        }
    }
    nodes
        .into_iter()
        .filter(|(name, _)| is_trainable(name))
        .filter_map(|(name, value)| {
            let gradient = *outputs.get(&format!("{GRADIENT_PREFIX}{name}"))?;
            Some(ParameterToUpdate {
                shape: graph.node(value).ty.shape.clone(),
                name,
                value,
                gradient,
            })
        })
        .collect()
}

/// The origin of the first node that reads a parameter (the layer it belongs to), or the
/// parameter's own.
fn parameter_origin(graph: &PrimGraph, parameter: PrimNodeId) -> Origin {
    let reader = graph.users(parameter).into_iter().next();
    graph.node(reader.unwrap_or(parameter)).origin.clone()
}
