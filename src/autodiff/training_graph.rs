//! The gradient graph of a spec: training-mode lowering with the spec's loss, reverse-mode
//! differentiation of the loss with respect to every trainable parameter, then [`simplify`].
//! `nnc build --emit grad` prints it, the build report counts and plans it, the training step
//! builds on it.
//!
//! Its outputs, found by name and never by position: the network's outputs, the loss (named by
//! the spec's `loss` statement), `buffer_update.<name>` per batch-norm buffer, then
//! `grad.<name>` per trainable parameter in state_dict-name order.

use std::collections::{BTreeSet, HashSet};

use super::{gradient_of_parameters, simplify, AutodiffError};
use crate::lower::{lower_with, LowerError, LowerMode, LowerOptions, SymbolValues};
use crate::prim::{PrimGraph, PrimNodeId};
use crate::Compilation;

/// The prefix of the gradient outputs of a gradient graph.
pub const GRADIENT_PREFIX: &str = "grad.";
/// The prefix of the updated buffers of a training-mode graph.
pub const BUFFER_UPDATE_PREFIX: &str = "buffer_update.";
/// The prefix of an optimizer's outputs in a training step graph (`src/train`): new values of
/// parameters and optimizer state, computed from the gradients.
pub const OPTIMIZER_UPDATE_PREFIX: &str = "update.";

#[derive(Debug, thiserror::Error)]
pub enum TrainingGraphError {
    #[error("the spec declares no loss; add `loss ...` (for example `loss cross_entropy(logits, label)`)")]
    NoLoss,
    #[error(transparent)]
    Lower(#[from] LowerError),
    #[error(transparent)]
    Autodiff(#[from] AutodiffError),
}

/// A spec's simplified gradient graph and the position of its loss among the outputs.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    pub graph: PrimGraph,
    pub loss_output: usize,
}

impl TrainingGraph {
    pub fn loss_name(&self) -> &str {
        &self.graph.outputs[self.loss_output].0
    }
}

/// The state_dict names of the parameters a training step updates (not the buffers).
pub fn trainable_parameters(compilation: &Compilation) -> BTreeSet<String> {
    compilation
        .shapes
        .params
        .state_dict_entries()
        .into_iter()
        .filter(|(_, _, trainable)| *trainable)
        .map(|(name, _, _)| name)
        .collect()
}

/// The network lowered in training mode with its loss, and the loss's output position;
/// [`TrainingGraphError::NoLoss`] when the spec has no `loss` statement.
pub fn lower_training(
    compilation: &Compilation,
    symbols: &SymbolValues,
) -> Result<(PrimGraph, usize), TrainingGraphError> {
    let options = LowerOptions {
        mode: LowerMode::Training,
        losses: true,
    };
    let graph = lower_with(compilation, symbols, &options)?;
    // The lowering contract: the network's outputs, then the loss (when there is one), then
    // the buffer updates.
    let loss_output = compilation.network.outputs.len();
    match graph.outputs.get(loss_output) {
        Some((name, _)) if !name.starts_with(BUFFER_UPDATE_PREFIX) => Ok((graph, loss_output)),
        _ => Err(TrainingGraphError::NoLoss),
    }
}

/// The simplified gradient graph of the spec's loss at `symbols`.
pub fn training_gradient(
    compilation: &Compilation,
    symbols: &SymbolValues,
) -> Result<TrainingGraph, TrainingGraphError> {
    let (forward, loss_output) = lower_training(compilation, symbols)?;
    let trainable = trainable_parameters(compilation);
    let graph =
        gradient_of_parameters(&forward, loss_output, &[], &|name| trainable.contains(name))?;
    Ok(TrainingGraph {
        graph: simplify(&graph),
        loss_output,
    })
}

/// The forward part of a gradient graph: the nodes some output other than a gradient (or an
/// optimizer's update, in a training step graph) depends on: the network's outputs, the loss,
/// the buffer updates. Everything else is the backward part, recomputed values included.
pub fn forward_nodes(graph: &PrimGraph) -> HashSet<PrimNodeId> {
    let mut forward: HashSet<PrimNodeId> = HashSet::new();
    let mut pending: Vec<PrimNodeId> = graph
        .outputs
        .iter()
        .filter(|(name, _)| {
            !name.starts_with(GRADIENT_PREFIX) && !name.starts_with(OPTIMIZER_UPDATE_PREFIX)
        })
        .map(|(_, id)| *id)
        .collect();
    while let Some(id) = pending.pop() {
        if forward.insert(id) {
            pending.extend(graph.operands(id));
        }
    }
    forward
}
