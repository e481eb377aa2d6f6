//! Training through the library API: [`Model::trainer`] compiles one training step (forward,
//! loss, backward and optimizer update as one executable) for a batch size, and
//! [`Trainer::step`] runs it on a batch, updating the parameters in place and returning the
//! loss. The trainer keeps the optimizer's state and counts steps; the step number is the run
//! key of random ops, so every step draws fresh dropout masks and a run can be replayed.
//!
//! ```no_run
//! use nnc::api::{Model, ModelOptions};
//! use nnc::train::Sgd;
//!
//! let model = Model::compile_file("specs/mlp.nn", &ModelOptions::new())?;
//! let mut params = model.init_params(0);
//! let mut trainer = model.trainer(64, Sgd::new(0.05))?;
//! let batch = trainer.random_inputs(1); // image [64, 784], label [64] (ids below 10)
//! for _ in 0..10 {
//!     let loss = trainer.step(&mut params, &batch)?;
//!     println!("loss {loss}");
//! }
//! # Ok::<(), nnc::api::ApiError>(())
//! ```

use std::time::{Duration, Instant};

use super::{signature, ApiError, InputSignature, Model, SignatureDim};
use crate::ir::{Dim, ElementType, Op};
use crate::lower::SymbolValues;
use crate::tensor::Tensor;
use crate::train::{
    data_inputs, random_data, training_graph_for_spec, DataInput, Optimizer, OptimizerState,
    TrainingStep,
};
use crate::weights::ParamStore;

/// A compiled training step with its optimizer and the optimizer's state.
pub struct Trainer {
    step: TrainingStep,
    optimizer: Box<dyn Optimizer>,
    state: OptimizerState,
    inputs: Vec<DataInput>,
    symbols: SymbolValues,
    steps_taken: u64,
    check_nan: bool,
    compile_time: Duration,
}

impl Model {
    /// A training step at batch size `batch` (other symbolic dims at their defaults) with
    /// `optimizer`; the spec must declare a `loss`.
    pub fn trainer(
        &self,
        batch: usize,
        optimizer: impl Optimizer + 'static,
    ) -> Result<Trainer, ApiError> {
        self.trainer_for(&self.symbols_for_batch(batch)?, Box::new(optimizer))
    }

    /// A training step specialized to `symbols`.
    pub fn trainer_for(
        &self,
        symbols: &SymbolValues,
        optimizer: Box<dyn Optimizer>,
    ) -> Result<Trainer, ApiError> {
        let started = Instant::now();
        let training = training_graph_for_spec(&self.compilation, symbols, optimizer.as_ref())?;
        let inputs = data_inputs(
            &training.graph,
            training.data_input_count,
            &self.compilation,
        );
        let step = TrainingStep::compile(training, self.threads)?;
        Ok(Trainer {
            state: step.initial_state(),
            step,
            optimizer,
            inputs,
            symbols: symbols.clone(),
            steps_taken: 0,
            check_nan: self.check_nan,
            compile_time: started.elapsed(),
        })
    }
}

impl Model {
    /// Every input a training step reads, in order: the network's and those only the loss reads
    /// (labels, targets), which the forward pass's [`Model::inputs`] leaves out.
    pub fn training_inputs(&self) -> Vec<InputSignature> {
        let network = &self.compilation.network;
        let mut signatures = Vec::new();
        for &id in &network.inputs {
            let Op::Input { name, .. } = &network.graph.node(id).op else {
                continue;
            };
            let info = self.compilation.shapes.table.info(id);
            let dims = info
                .shape
                .iter()
                .map(|dim| match dim {
                    Dim::Known(size) => SignatureDim::Fixed(*size as usize),
                    Dim::Symbolic(symbol) => {
                        SignatureDim::Symbol(network.symbol(*symbol).name.clone())
                    }
                })
                .collect();
            signatures.push(InputSignature {
                name: name.clone(),
                dims,
                integer: info.element_type == ElementType::Int64,
            });
        }
        signatures
    }

    /// The symbol values that these shapes of the [`Model::training_inputs`] imply.
    pub fn training_symbols_for_shapes(
        &self,
        shapes: &[&[usize]],
    ) -> Result<SymbolValues, ApiError> {
        signature::bind_symbols(&self.training_inputs(), shapes, self.default_symbols())
    }
}

impl Trainer {
    /// One step on a batch (tensors in [`Trainer::inputs`] order, labels included): updates
    /// `params` in place and returns the loss of the batch before the update.
    pub fn step(
        &mut self,
        params: &mut ParamStore,
        inputs: &[Tensor<f32>],
    ) -> Result<f32, ApiError> {
        self.check_inputs(inputs)?;
        let hyperparameters = self.optimizer.hyperparameter_values(self.steps_taken);
        let loss = self.step.run(
            params,
            &mut self.state,
            inputs,
            &hyperparameters,
            self.steps_taken,
        )?;
        self.steps_taken += 1;
        Ok(loss)
    }

    /// [`Trainer::step`] on flat row-major slices, one per input, each of exactly its compiled
    /// element count.
    pub fn step_slices(
        &mut self,
        params: &mut ParamStore,
        inputs: &[&[f32]],
    ) -> Result<f32, ApiError> {
        self.check_count(inputs.len())?;
        let mut tensors = Vec::with_capacity(inputs.len());
        for (input, data) in self.inputs.iter().zip(inputs) {
            let expected: usize = input.shape.iter().product();
            if data.len() != expected {
                return Err(ApiError::InputLength {
                    name: input.name.clone(),
                    shape: input.shape.clone(),
                    expected,
                    found: data.len(),
                });
            }
            tensors.push(Tensor {
                shape: input.shape.clone(),
                data: data.to_vec(),
            });
        }
        self.step(params, &tensors)
    }

    /// The data a step takes: the network's inputs and the loss's labels, with shapes.
    pub fn inputs(&self) -> &[DataInput] {
        &self.inputs
    }

    /// Seeded random data of the inputs' shapes: floats in [-1, 1), valid ids (class labels
    /// below the class count).
    pub fn random_inputs(&self, seed: u64) -> Vec<Tensor<f32>> {
        random_data(&self.inputs, seed)
    }

    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    pub fn learning_rate(&self) -> f32 {
        self.optimizer.learning_rate()
    }

    /// Takes effect from the next step, without recompiling (the rate is a graph input).
    pub fn set_learning_rate(&mut self, learning_rate: f32) {
        self.optimizer.set_learning_rate(learning_rate);
    }

    pub fn optimizer(&self) -> &dyn Optimizer {
        self.optimizer.as_ref()
    }

    /// The optimizer's state tensors (empty for plain SGD).
    pub fn optimizer_state(&self) -> &OptimizerState {
        &self.state
    }

    pub fn symbols(&self) -> &SymbolValues {
        &self.symbols
    }

    /// The compiled step: its executable, loss name and updated parameters.
    pub fn training_step(&self) -> &TrainingStep {
        &self.step
    }

    /// Building the step graph (lowering, gradient, optimizer) plus the runtime's compilation.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    fn check_count(&self, found: usize) -> Result<(), ApiError> {
        if found == self.inputs.len() {
            return Ok(());
        }
        let names: Vec<String> = self
            .inputs
            .iter()
            .map(|input| format!("{}: {:?}", input.name, input.shape))
            .collect();
        Err(ApiError::InputCount {
            expected: self.inputs.len(),
            found,
            names: names.join(", "),
        })
    }

    fn check_inputs(&self, inputs: &[Tensor<f32>]) -> Result<(), ApiError> {
        self.check_count(inputs.len())?;
        for (input, tensor) in self.inputs.iter().zip(inputs) {
            if tensor.shape != input.shape {
                return Err(ApiError::InputShape {
                    name: input.name.clone(),
                    expected: format!("{:?}", input.shape),
                    found: tensor.shape.clone(),
                });
            }
            let expected: usize = input.shape.iter().product();
            if tensor.data.len() != expected {
                return Err(ApiError::InputLength {
                    name: input.name.clone(),
                    shape: input.shape.clone(),
                    expected,
                    found: tensor.data.len(),
                });
            }
            if self.check_nan {
                if let Some(index) = tensor.data.iter().position(|value| value.is_nan()) {
                    return Err(ApiError::NanInput {
                        name: input.name.clone(),
                        index,
                        shape: input.shape.clone(),
                    });
                }
            }
            if input.integer {
                check_ids(input, &tensor.data)?;
            }
        }
        Ok(())
    }
}

/// Ids are whole numbers below the input's limit (the class count of a label).
fn check_ids(input: &DataInput, data: &[f32]) -> Result<(), ApiError> {
    let whole = |value: f32| value.is_finite() && value.fract() == 0.0;
    if let Some(index) = data.iter().position(|value| !whole(*value)) {
        return Err(ApiError::NotAnInteger {
            name: input.name.clone(),
            index,
            value: data[index],
        });
    }
    let rows = input.id_limit.unwrap_or(usize::MAX);
    let outside = |value: f32| value < 0.0 || value as usize >= rows;
    match data.iter().position(|value| outside(*value)) {
        None => Ok(()),
        Some(index) => Err(ApiError::IdOutOfRange {
            name: input.name.clone(),
            index,
            value: data[index],
            rows,
        }),
    }
}
