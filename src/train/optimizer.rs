//! Optimizers as graph builders: an [`Optimizer`] appends, for each trainable parameter, the
//! primitive nodes that compute its new value from its gradient, so the update runs inside the
//! same executable as the forward and backward passes (fused into its JIT kernels like any
//! elementwise chain) instead of as a separate loop over the weights.
//!
//! Hyperparameters (the learning rate, weight decay, momentum) are scalar graph *inputs*, not
//! constants, so a learning-rate schedule changes them from step to step without recompiling.
//! State an optimizer keeps between steps (momentum buffers, Adam's moments) is declared through
//! [`UpdateGraph::state`]: each state tensor becomes a parameter of the step graph, read like a
//! weight, and its new value an output that the runtime writes back into the state tensor's own
//! buffer, exactly as parameters are updated. The trainer owns the state tensors
//! ([`super::OptimizerState`]).

use std::collections::BTreeMap;
use std::fmt::Debug;

use super::TrainError;
use crate::prim::{BinaryFn, Constant, Origin, PrimGraph, PrimNodeId, PrimOp, UnaryFn};

/// The separator between a parameter's name and the kind of an optimizer state tensor:
/// `fc1.weight%momentum_buffer`. No state_dict key contains `%`.
pub const STATE_SEPARATOR: char = '%';

/// One trainable parameter as the step graph sees it.
#[derive(Clone, Debug)]
pub struct ParameterToUpdate {
    /// The state_dict name (`fc1.weight`).
    pub name: String,
    /// The `Parameter` node holding its current value.
    pub value: PrimNodeId,
    /// The node holding the gradient of the loss with respect to it (same shape).
    pub gradient: PrimNodeId,
    pub shape: Vec<usize>,
}

/// An optimizer state tensor a step graph reads and updates, zero before the first step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateTensor {
    /// `<parameter>%<kind>`, for example `fc1.weight%momentum_buffer`.
    pub name: String,
    pub shape: Vec<usize>,
}

/// A tensor whose new value the step graph computes: the output's name and the parameter or
/// state tensor it replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatedTensor {
    pub output: String,
    pub target: String,
    pub value: PrimNodeId,
}

/// How a training step updates parameters from their gradients. Implementations append nodes
/// through an [`UpdateGraph`]; they must set every parameter they are handed (and every state
/// tensor they declare) exactly once.
pub trait Optimizer: Debug + Send + Sync {
    /// PyTorch's name for it (`sgd`), for reports.
    fn name(&self) -> &'static str;

    /// The scalar hyperparameters the update reads, as graph inputs in this order.
    fn hyperparameter_names(&self) -> Vec<&'static str>;

    /// Their values at step `step` (0 for the first), in [`Optimizer::hyperparameter_names`]
    /// order. Taking the step number lets an optimizer compute per-step factors (Adam's bias
    /// corrections, a schedule) on the host.
    fn hyperparameter_values(&self, step: u64) -> Vec<f32>;

    /// Appends the update of one parameter.
    fn append_update(
        &self,
        graph: &mut UpdateGraph<'_>,
        parameter: &ParameterToUpdate,
    ) -> Result<(), TrainError>;

    fn learning_rate(&self) -> f32;

    fn set_learning_rate(&mut self, learning_rate: f32);
}

/// The step graph while optimizers append to it: hyperparameter inputs by name, the state
/// tensors declared so far and the updates set so far.
pub struct UpdateGraph<'g> {
    graph: &'g mut PrimGraph,
    hyperparameters: &'g BTreeMap<String, PrimNodeId>,
    state: Vec<StateTensor>,
    updates: Vec<UpdatedTensor>,
    origin: Origin,
}

impl<'g> UpdateGraph<'g> {
    pub(super) fn new(
        graph: &'g mut PrimGraph,
        hyperparameters: &'g BTreeMap<String, PrimNodeId>,
        origin: Origin,
    ) -> UpdateGraph<'g> {
        UpdateGraph {
            graph,
            hyperparameters,
            state: Vec::new(),
            updates: Vec::new(),
            origin,
        }
    }

    /// Appended nodes carry the origin (instance path, span) of the parameter's first reader,
    /// so `--emit` dumps show which layer an update belongs to.
    pub(super) fn set_origin(&mut self, origin: Origin) {
        self.origin = origin;
    }

    pub(super) fn finish(self) -> (Vec<StateTensor>, Vec<UpdatedTensor>) {
        (self.state, self.updates)
    }

    /// The scalar input holding hyperparameter `name` (one of the optimizer's names).
    pub fn hyperparameter(&self, name: &str) -> Result<PrimNodeId, TrainError> {
        self.hyperparameters.get(name).copied().ok_or_else(|| {
            TrainError::Internal(format!(
                "the optimizer reads hyperparameter `{name}`, which it did not declare"
            ))
        })
    }

    /// Declares a state tensor of `parameter`'s shape, zero before the first step, and returns
    /// the node holding its current value. `kind` names it as PyTorch's optimizer state does
    /// (`momentum_buffer`, `exp_avg`).
    pub fn state(
        &mut self,
        parameter: &ParameterToUpdate,
        kind: &str,
    ) -> Result<PrimNodeId, TrainError> {
        let name = format!("{}{STATE_SEPARATOR}{kind}", parameter.name);
        if self.state.iter().any(|state| state.name == name) {
            return Err(TrainError::Internal(format!(
                "optimizer state `{name}` is declared twice"
            )));
        }
        self.state.push(StateTensor {
            name: name.clone(),
            shape: parameter.shape.clone(),
        });
        self.add(
            PrimOp::Parameter {
                name,
                shape: parameter.shape.clone(),
            },
            &[],
        )
    }

    /// Makes `value` the parameter's value after the step.
    pub fn set_parameter(
        &mut self,
        parameter: &ParameterToUpdate,
        value: PrimNodeId,
    ) -> Result<(), TrainError> {
        self.set(&parameter.name, &parameter.shape, value)
    }

    /// Makes `value` the value of state tensor `parameter%kind` after the step.
    pub fn set_state(
        &mut self,
        parameter: &ParameterToUpdate,
        kind: &str,
        value: PrimNodeId,
    ) -> Result<(), TrainError> {
        let name = format!("{}{STATE_SEPARATOR}{kind}", parameter.name);
        if !self.state.iter().any(|state| state.name == name) {
            return Err(TrainError::Internal(format!(
                "optimizer state `{name}` is set but was never declared"
            )));
        }
        self.set(&name, &parameter.shape, value)
    }

    pub fn scalar(&mut self, value: f64) -> Result<PrimNodeId, TrainError> {
        self.add(PrimOp::Constant(Constant::scalar(value)), &[])
    }

    pub fn binary(
        &mut self,
        function: BinaryFn,
        a: PrimNodeId,
        b: PrimNodeId,
    ) -> Result<PrimNodeId, TrainError> {
        self.add(PrimOp::Binary(function), &[a, b])
    }

    pub fn unary(&mut self, function: UnaryFn, x: PrimNodeId) -> Result<PrimNodeId, TrainError> {
        self.add(PrimOp::Unary(function), &[x])
    }

    pub fn add_values(&mut self, a: PrimNodeId, b: PrimNodeId) -> Result<PrimNodeId, TrainError> {
        self.binary(BinaryFn::Add, a, b)
    }

    pub fn sub(&mut self, a: PrimNodeId, b: PrimNodeId) -> Result<PrimNodeId, TrainError> {
        self.binary(BinaryFn::Sub, a, b)
    }

    pub fn mul(&mut self, a: PrimNodeId, b: PrimNodeId) -> Result<PrimNodeId, TrainError> {
        self.binary(BinaryFn::Mul, a, b)
    }

    pub fn div(&mut self, a: PrimNodeId, b: PrimNodeId) -> Result<PrimNodeId, TrainError> {
        self.binary(BinaryFn::Div, a, b)
    }

    pub fn shape(&self, id: PrimNodeId) -> &[usize] {
        &self.graph.node(id).ty.shape
    }

    fn set(&mut self, target: &str, shape: &[usize], value: PrimNodeId) -> Result<(), TrainError> {
        if self.graph.node(value).ty.shape != shape {
            return Err(TrainError::Internal(format!(
                "the new value of `{target}` has shape {:?}, not {shape:?}",
                self.graph.node(value).ty.shape
            )));
        }
        if self.updates.iter().any(|update| update.target == target) {
            return Err(TrainError::Internal(format!(
                "the optimizer sets `{target}` twice"
            )));
        }
        self.updates.push(UpdatedTensor {
            output: format!("update.{target}"),
            target: target.to_string(),
            value,
        });
        Ok(())
    }

    fn add(&mut self, op: PrimOp, operands: &[PrimNodeId]) -> Result<PrimNodeId, TrainError> {
        let name = op.name();
        self.graph
            .add(op, operands, self.origin.clone())
            .map_err(|error| TrainError::Internal(format!("an optimizer `{name}` node: {error}")))
    }
}

/// Stochastic gradient descent as `torch.optim.SGD` computes it (without dampening or Nesterov):
/// `d = g + weight_decay * p`; with momentum `b = momentum * b + d` (the buffer starts at zero,
/// which gives PyTorch's `b = d` on the first step) and `d = b`; then `p = p - lr * d`.
///
/// Weight decay and momentum are part of the graph only when non-zero at construction (a zero
/// term costs a multiply-add per weight per step); their values, like the learning rate, are
/// inputs of the step.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    pub learning_rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

impl Sgd {
    /// Plain SGD: no momentum, no weight decay.
    pub fn new(learning_rate: f32) -> Sgd {
        Sgd {
            learning_rate,
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }

    pub fn weight_decay(mut self, weight_decay: f32) -> Sgd {
        self.weight_decay = weight_decay;
        self
    }

    pub fn momentum(mut self, momentum: f32) -> Sgd {
        self.momentum = momentum;
        self
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn hyperparameter_names(&self) -> Vec<&'static str> {
        let mut names = vec!["lr"];
        if self.weight_decay != 0.0 {
            names.push("weight_decay");
        }
        if self.momentum != 0.0 {
            names.push("momentum");
        }
        names
    }

    fn hyperparameter_values(&self, _step: u64) -> Vec<f32> {
        let mut values = vec![self.learning_rate];
        if self.weight_decay != 0.0 {
            values.push(self.weight_decay);
        }
        if self.momentum != 0.0 {
            values.push(self.momentum);
        }
        values
    }

    fn append_update(
        &self,
        graph: &mut UpdateGraph<'_>,
        parameter: &ParameterToUpdate,
    ) -> Result<(), TrainError> {
        let mut direction = parameter.gradient;
        if self.weight_decay != 0.0 {
            let weight_decay = graph.hyperparameter("weight_decay")?;
            let decay = graph.mul(weight_decay, parameter.value)?;
            direction = graph.add_values(direction, decay)?;
        }
        if self.momentum != 0.0 {
            let momentum = graph.hyperparameter("momentum")?;
            let buffer = graph.state(parameter, "momentum_buffer")?;
            let kept = graph.mul(momentum, buffer)?;
            direction = graph.add_values(kept, direction)?;
            graph.set_state(parameter, "momentum_buffer", direction)?;
        }
        let learning_rate = graph.hyperparameter("lr")?;
        let step = graph.mul(learning_rate, direction)?;
        let updated = graph.sub(parameter.value, step)?;
        graph.set_parameter(parameter, updated)
    }

    fn learning_rate(&self) -> f32 {
        self.learning_rate
    }

    fn set_learning_rate(&mut self, learning_rate: f32) {
        self.learning_rate = learning_rate;
    }
}
