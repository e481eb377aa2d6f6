//! Running a primitive graph in f32: the memory plan ([`plan`]), per-op execution
//! ([`execute`]) and the checks at the API boundary. Every buffer handed to a kernel has been
//! checked against the compiled shapes first: inputs and parameters here, arena ranges by the
//! plan.
//!
//! An [`Executable`] is compiled once per shape specialization (batch size and other symbolic
//! dims) and can run any number of times with any bound parameters.

mod elementwise;
mod execute;
mod layout;
pub mod plan;

use std::collections::HashMap;

use crate::kernels::gemm::GemmError;
use crate::kernels::KernelError;
use crate::prim::{PrimGraph, PrimNodeId, PrimOp};
use crate::tensor::Tensor;
use crate::weights::ParamStore;
use execute::{execute_node, Operand};
use plan::{plan_memory, Location, MemoryPlan};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the network takes {expected} input(s) ({names}), but {found} were given")]
    InputCount { expected: usize, found: usize, names: String },
    #[error("input `{name}` should have shape {expected:?} ({expected_len} elements), but has {found_len} elements")]
    InputShape { name: String, expected: Vec<usize>, expected_len: usize, found_len: usize },
    #[error("input `{name}` contains NaN at element {index}")]
    NanInput { name: String, index: usize },
    #[error("parameter `{name}` is missing from the bound weights")]
    MissingParameter { name: String },
    #[error("parameter `{name}` should have shape {expected:?}, but has shape {found:?}")]
    ParameterShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("index {index} is not a row of a table with {rows} rows")]
    IndexOutOfRange { index: f64, rows: usize },
    #[error("not supported yet: {what}")]
    Unsupported { what: String },
    #[error("kernel error: {0}")]
    Kernel(#[from] KernelError),
    #[error("matmul error: {0}")]
    Gemm(#[from] GemmError),
    #[error("internal error (a bug in nnc): {0}")]
    Internal(String),
}

impl RuntimeError {
    pub fn internal(message: &str) -> RuntimeError {
        RuntimeError::Internal(message.to_string())
    }
}

/// A compiled primitive graph, ready to run.
pub struct Executable {
    graph: PrimGraph,
    plan: MemoryPlan,
    constants: Vec<Vec<f32>>,
    scan_bodies: HashMap<PrimNodeId, Executable>,
    threads: usize,
}

impl Executable {
    /// Plans memory and prepares constants; `threads` is used by the kernels (0: all cores).
    pub fn new(graph: PrimGraph, threads: usize) -> Result<Executable, RuntimeError> {
        let plan = plan_memory(&graph);
        let mut constants = Vec::new();
        for id in &plan.constants {
            let PrimOp::Constant(constant) = &graph.node(*id).op else {
                return Err(RuntimeError::internal("a planned constant is not a constant node"));
            };
            let values = match constant {
                crate::prim::Constant::Splat { shape, value } => vec![*value as f32; shape.iter().product()],
                crate::prim::Constant::Dense(tensor) => tensor.data.iter().map(|value| *value as f32).collect(),
            };
            constants.push(values);
        }
        let mut scan_bodies = HashMap::new();
        for id in graph.node_ids() {
            if let PrimOp::Scan { body, .. } = &graph.node(id).op {
                scan_bodies.insert(id, Executable::new(body.graph.clone(), threads)?);
            }
        }
        Ok(Executable { graph, plan, constants, scan_bodies, threads })
    }

    pub fn graph(&self) -> &PrimGraph {
        &self.graph
    }

    /// Floats of working memory one run needs (the planned peak of intermediate values).
    pub fn planned_arena_floats(&self) -> usize {
        self.plan.arena_len
    }

    /// Floats the intermediate values would need without reusing memory.
    pub fn unshared_floats(&self) -> usize {
        self.plan.unshared_len
    }

    /// Runs the graph on `inputs` (in the graph's input order) with parameters from `params`.
    pub fn run(&self, params: &ParamStore, inputs: &[Tensor<f32>]) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        let mut bound = Vec::new();
        for name in &self.plan.parameters {
            let tensor = params.get(name).ok_or_else(|| RuntimeError::MissingParameter { name: name.clone() })?;
            bound.push(tensor.data.as_slice());
        }
        self.check_parameter_shapes(params)?;
        if inputs.len() != self.graph.inputs.len() {
            return Err(self.input_count_error(inputs.len()));
        }
        for ((name, id), input) in self.graph.inputs.iter().zip(inputs) {
            let expected = &self.graph.node(*id).ty.shape;
            if &input.shape != expected {
                return Err(RuntimeError::InputShape {
                    name: name.clone(),
                    expected: expected.clone(),
                    expected_len: expected.iter().product(),
                    found_len: input.data.len(),
                });
            }
        }
        let input_slices: Vec<&[f32]> = inputs.iter().map(|input| input.data.as_slice()).collect();
        self.run_slices(&bound, &input_slices)
    }

    fn check_parameter_shapes(&self, params: &ParamStore) -> Result<(), RuntimeError> {
        for id in &self.plan.schedule {
            if let PrimOp::Parameter { name, shape } = &self.graph.node(*id).op {
                let tensor = params.get(name).ok_or_else(|| RuntimeError::MissingParameter { name: name.clone() })?;
                if &tensor.shape != shape || tensor.data.len() != shape.iter().product::<usize>() {
                    return Err(RuntimeError::ParameterShape { name: name.clone(), expected: shape.clone(), found: tensor.shape.clone() });
                }
            }
        }
        Ok(())
    }

    fn input_count_error(&self, found: usize) -> RuntimeError {
        let names: Vec<&str> = self.graph.inputs.iter().map(|(name, _)| name.as_str()).collect();
        RuntimeError::InputCount { expected: self.graph.inputs.len(), found, names: names.join(", ") }
    }

    /// Runs with parameters and inputs as slices whose lengths are checked here against the
    /// compiled shapes; shapes themselves were checked by the caller.
    pub(crate) fn run_slices(&self, params: &[&[f32]], inputs: &[&[f32]]) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        if inputs.len() != self.graph.inputs.len() {
            return Err(self.input_count_error(inputs.len()));
        }
        for ((name, id), input) in self.graph.inputs.iter().zip(inputs) {
            let expected = &self.graph.node(*id).ty.shape;
            if input.len() != expected.iter().product::<usize>() {
                return Err(RuntimeError::InputShape {
                    name: name.clone(),
                    expected: expected.clone(),
                    expected_len: expected.iter().product(),
                    found_len: input.len(),
                });
            }
        }
        if params.len() != self.plan.parameters.len() {
            return Err(RuntimeError::internal("parameter count differs from the plan"));
        }
        let mut arena = vec![0.0f32; self.plan.arena_len];
        for id in &self.plan.schedule {
            let node = self.graph.node(*id);
            let Some(Location::Arena { offset, len }) = self.plan.locations.get(id).copied() else { continue };
            let operand_ids = self.graph.operands(*id);
            // Operands are read from their locations; an arena operand never overlaps the
            // output range, because the plan never lets two live values share memory.
            let (before, rest) = arena.split_at_mut(offset);
            let (output, after) = rest.split_at_mut(len);
            let mut operands = Vec::with_capacity(operand_ids.len());
            for operand in &operand_ids {
                let shape = self.graph.node(*operand).ty.shape.as_slice();
                let data: &[f32] = match self.plan.locations[operand] {
                    Location::Input(index) => inputs[index],
                    Location::Parameter(index) => params[index],
                    Location::Constant(index) => &self.constants[index],
                    Location::Arena { offset: operand_offset, len: operand_len } => {
                        if operand_offset + operand_len <= offset {
                            &before[operand_offset..operand_offset + operand_len]
                        } else if operand_offset >= offset + len {
                            let start = operand_offset - offset - len;
                            &after[start..start + operand_len]
                        } else {
                            return Err(RuntimeError::internal("an operand overlaps its output in the memory plan"));
                        }
                    }
                };
                operands.push(Operand { data, shape });
            }
            execute_node(node, &operands, output, self.scan_bodies.get(id), self.threads)?;
        }
        let mut outputs = Vec::new();
        for (_, id) in &self.graph.outputs {
            let shape = self.graph.node(*id).ty.shape.clone();
            let data = match self.plan.locations[id] {
                Location::Input(index) => inputs[index].to_vec(),
                Location::Parameter(index) => params[index].to_vec(),
                Location::Constant(index) => self.constants[index].clone(),
                Location::Arena { offset, len } => arena[offset..offset + len].to_vec(),
            };
            outputs.push(Tensor { shape, data });
        }
        Ok(outputs)
    }
}
