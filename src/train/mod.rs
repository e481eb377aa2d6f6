//! Training: one step of forward, loss, backward and optimizer update as a single executable.
//!
//! [`graph`] builds the step graph: the network lowered in training mode with its loss
//! (`lower_with(.., LowerMode::Training, losses: true)`), [`crate::autodiff::gradient`] of the
//! loss with respect to every parameter, simplified, then an [`Optimizer`] appends the update
//! nodes. [`TrainingStep`] compiles that graph with the runtime like any other (fusion, memory
//! plan, Cranelift), declaring each update output as the new value of a parameter: the runtime
//! writes it straight into the parameter's own buffer (`runtime::ParameterUpdate`), so weights
//! are never copied out and back, and gradients live only in the arena.
//!
//! Batch norm's running statistics (`buffer_update.*` outputs) are written back the same way,
//! and so is the optimizer's state ([`OptimizerState`], which the caller keeps next to the
//! parameters). Random ops (dropout) draw with the step number as the run key, so each step
//! gets a fresh mask and a step can be replayed.
//!
//! [`gradcheck`] compares the runtime's gradients with the reference interpreter's and with
//! central finite differences; `nnc gradcheck` prints its report.

pub mod gradcheck;
pub mod graph;
pub mod inputs;
pub mod optimizer;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use graph::{
    build_training_graph, gradient_graph, lower_for_training, training_graph_for_spec,
    TrainingGraph,
};
pub use inputs::{data_inputs, random_data, DataInput};
pub use optimizer::{Optimizer, ParameterToUpdate, Sgd, StateTensor, UpdateGraph};

use crate::autodiff::AutodiffError;
use crate::interpret::InterpretError;
use crate::lower::LowerError;
use crate::runtime::{Executable, ExecutableOptions, RuntimeError};
use crate::tensor::Tensor;
use crate::weights::ParamStore;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the spec declares no loss: add a `loss` statement, for example `loss cross_entropy(logits, label)`")]
    NoLoss,
    #[error("{0}")]
    Lower(#[from] LowerError),
    #[error("{0}")]
    Autodiff(#[from] AutodiffError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Interpret(#[from] InterpretError),
    #[error("the optimizer takes {expected} hyperparameter(s) ({names}), but {found} were given")]
    HyperparameterCount {
        expected: usize,
        found: usize,
        names: String,
    },
    #[error("optimizer state `{name}` is missing or has the wrong shape (expected {expected:?})")]
    StateMismatch { name: String, expected: Vec<usize> },
    #[error("the loss is {value} (not finite) at step {step}")]
    NonFiniteLoss { value: f32, step: u64 },
    #[error("internal error (a bug in nnc): {0}")]
    Internal(String),
}

/// The optimizer's state tensors (momentum buffers and the like) by name, which a training step
/// reads and updates in place next to the parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerState {
    tensors: BTreeMap<String, Tensor<f32>>,
}

impl OptimizerState {
    /// Every declared state tensor, zero (the state before the first step).
    pub fn zeros(declared: &[StateTensor]) -> OptimizerState {
        let tensors = declared
            .iter()
            .map(|state| (state.name.clone(), Tensor::zeros(&state.shape)))
            .collect();
        OptimizerState { tensors }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor<f32>> {
        self.tensors.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<f32>)> {
        self.tensors
            .iter()
            .map(|(name, tensor)| (name.as_str(), tensor))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor<f32>)> {
        self.tensors
            .iter_mut()
            .map(|(name, tensor)| (name.as_str(), tensor))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// A compiled training step: run it on a batch to update parameters (and optimizer state) in
/// place and get the loss.
pub struct TrainingStep {
    executable: Executable,
    loss: String,
    data_input_count: usize,
    hyperparameters: Vec<String>,
    state: Vec<StateTensor>,
    updated_parameters: Vec<String>,
    /// The batch-norm buffers the step updates (running statistics).
    updated_buffers: Vec<String>,
    compile_time: Duration,
}

impl TrainingStep {
    /// Compiles the step graph; `threads` as for [`Executable::new`].
    pub fn compile(training: TrainingGraph, threads: usize) -> Result<TrainingStep, TrainError> {
        let started = Instant::now();
        let updated_buffers = training
            .updates
            .iter()
            .filter(|update| update.output.starts_with(graph::BUFFER_UPDATE_PREFIX))
            .map(|update| update.parameter.clone())
            .collect();
        let executable = Executable::with_parameter_updates(
            training.graph,
            threads,
            &ExecutableOptions::default(),
            &training.updates,
        )?;
        Ok(TrainingStep {
            executable,
            loss: training.loss,
            data_input_count: training.data_input_count,
            hyperparameters: training.hyperparameters,
            state: training.state,
            updated_parameters: training.updated_parameters,
            updated_buffers,
            compile_time: started.elapsed(),
        })
    }

    /// Fresh optimizer state: every state tensor zero.
    pub fn initial_state(&self) -> OptimizerState {
        OptimizerState::zeros(&self.state)
    }

    /// Runs one step on `data` (the data inputs in graph order): updates `params` and `state` in
    /// place and returns the loss, computed with the parameters from before the update. Random
    /// ops draw with `step` as their run key.
    pub fn run(
        &self,
        params: &mut ParamStore,
        state: &mut OptimizerState,
        data: &[Tensor<f32>],
        hyperparameters: &[f32],
        step: u64,
    ) -> Result<f32, TrainError> {
        if hyperparameters.len() != self.hyperparameters.len() {
            return Err(TrainError::HyperparameterCount {
                expected: self.hyperparameters.len(),
                found: hyperparameters.len(),
                names: self.hyperparameters.join(", "),
            });
        }
        for declared in &self.state {
            if state.get(&declared.name).map(|tensor| &tensor.shape) != Some(&declared.shape) {
                return Err(TrainError::StateMismatch {
                    name: declared.name.clone(),
                    expected: declared.shape.clone(),
                });
            }
        }
        let mut inputs: Vec<Tensor<f32>> = Vec::with_capacity(data.len() + hyperparameters.len());
        inputs.extend_from_slice(data);
        inputs.extend(hyperparameters.iter().map(|value| Tensor {
            shape: Vec::new(),
            data: vec![*value],
        }));
        let tensors = params.iter_mut().chain(state.iter_mut());
        let outputs = self.executable.run_in_place(tensors, &inputs, step)?;
        // Each batch norm that updated its running statistics saw one more batch.
        for buffer in &self.updated_buffers {
            params.track_batch(buffer);
        }
        let loss = outputs
            .first()
            .and_then(|loss| loss.data.first().copied())
            .ok_or_else(|| TrainError::Internal("the step returned no loss".into()))?;
        Ok(loss)
    }

    pub fn executable(&self) -> &Executable {
        &self.executable
    }

    /// The loss output's name (`loss` unless the spec names it).
    pub fn loss_name(&self) -> &str {
        &self.loss
    }

    /// The data inputs of the step graph (network inputs and labels) by name and shape.
    pub fn data_input_shapes(&self) -> Vec<(&str, &[usize])> {
        let graph = self.executable.graph();
        graph
            .inputs
            .iter()
            .take(self.data_input_count)
            .map(|(name, id)| (name.as_str(), graph.node(*id).ty.shape.as_slice()))
            .collect()
    }

    pub fn hyperparameter_names(&self) -> &[String] {
        &self.hyperparameters
    }

    pub fn updated_parameters(&self) -> &[String] {
        &self.updated_parameters
    }

    /// Fusion, planning and JIT compilation of the step graph.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }
}
