//! The reference interpreter: runs a primitive graph in `f64` with plain loops, one obviously
//! correct case per [`PrimOp`]. It is the oracle that every generated kernel is tested against,
//! so it is written to be read, never to be fast: no blocking, no vectorization, no reuse of
//! buffers. `elementwise.rs` has the elementwise ops, reductions and constants, `window.rs`
//! matmul, convolutions and pooling, `layout.rs` reshapes, slices, gathers, scatters and the
//! scan helpers, `random.rs` the counter-based noise.

mod elementwise;
mod layout;
mod random;
mod window;

use std::collections::{BTreeMap, HashMap};

pub use random::{seed_for_run, standard_normal, uniform};

use crate::ir::ElementType;
use crate::prim::*;
use crate::tensor::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum InterpretError {
    #[error("the network takes {expected} inputs ({names}), but {found} were given")]
    InputCount {
        expected: usize,
        found: usize,
        names: String,
    },
    #[error("input `{name}` must have shape {expected:?}, but has shape {found:?}")]
    InputShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("input `{name}` holds integer ids, but its element {position} is {value}")]
    NotAnInteger {
        name: String,
        position: usize,
        value: f64,
    },
    #[error("missing parameters: {names}")]
    MissingParameters { names: String },
    #[error("parameter `{name}` must have shape {expected:?}, but has shape {found:?}")]
    ParameterShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("`{path}`: index {index} is outside the table of {rows} rows")]
    IndexOutOfRange {
        path: String,
        index: f64,
        rows: usize,
    },
    #[error("internal error (a bug in nnc): node %{node} ({op}) at `{path}`: {message}")]
    Internal {
        node: usize,
        op: &'static str,
        path: String,
        message: String,
    },
}

/// Runs `graph` on `inputs` (in the order of `graph.inputs`; integer ids as whole numbers) with
/// parameters by `state_dict` name; returns the outputs in the order of `graph.outputs`.
/// Random ops draw with run key 0, as inference does.
pub fn interpret(
    graph: &PrimGraph,
    inputs: &[Tensor<f64>],
    params: &BTreeMap<String, Tensor<f64>>,
) -> Result<Vec<Tensor<f64>>, InterpretError> {
    interpret_with_key(graph, inputs, params, 0)
}

/// [`interpret`] with random ops drawing from the stream of `run_key` (a training loop passes
/// the step number, so every step gets fresh dropout masks that can be reproduced).
pub fn interpret_with_key(
    graph: &PrimGraph,
    inputs: &[Tensor<f64>],
    params: &BTreeMap<String, Tensor<f64>>,
    run_key: u64,
) -> Result<Vec<Tensor<f64>>, InterpretError> {
    check_inputs(graph, inputs)?;
    check_parameters(graph, params)?;
    let inputs: Vec<&Tensor<f64>> = inputs.iter().collect();
    let run = Run { params, run_key };
    let values = evaluate_graph(graph, &inputs, &run)?;
    Ok(graph
        .outputs
        .iter()
        .map(|(_, id)| values[id].clone())
        .collect())
}

fn check_inputs(graph: &PrimGraph, inputs: &[Tensor<f64>]) -> Result<(), InterpretError> {
    if inputs.len() != graph.inputs.len() {
        let names: Vec<&str> = graph.inputs.iter().map(|(name, _)| name.as_str()).collect();
        return Err(InterpretError::InputCount {
            expected: graph.inputs.len(),
            found: inputs.len(),
            names: names.join(", "),
        });
    }
    for ((name, id), input) in graph.inputs.iter().zip(inputs) {
        let ty = &graph.node(*id).ty;
        if input.shape != ty.shape || input.data.len() != ty.element_count() {
            return Err(InterpretError::InputShape {
                name: name.clone(),
                expected: ty.shape.clone(),
                found: input.shape.clone(),
            });
        }
        if ty.element_type == ElementType::Int64 {
            if let Some(position) = input.data.iter().position(|value| value.fract() != 0.0) {
                return Err(InterpretError::NotAnInteger {
                    name: name.clone(),
                    position,
                    value: input.data[position],
                });
            }
        }
    }
    Ok(())
}

/// Every parameter the graph (or a scan body) reads is given with its shape.
fn check_parameters(
    graph: &PrimGraph,
    params: &BTreeMap<String, Tensor<f64>>,
) -> Result<(), InterpretError> {
    let mut missing = Vec::new();
    for id in graph.node_ids() {
        let op = &graph.node(id).op;
        if let PrimOp::Scan { body, .. } = op {
            check_parameters(&body.graph, params)?;
        }
        let PrimOp::Parameter { name, shape } = op else {
            continue;
        };
        match params.get(name) {
            None => missing.push(name.clone()),
            Some(tensor)
                if tensor.shape != *shape
                    || tensor.data.len() != shape.iter().product::<usize>() =>
            {
                return Err(InterpretError::ParameterShape {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: tensor.shape.clone(),
                });
            }
            Some(_) => {}
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(InterpretError::MissingParameters {
        names: missing.join(", "),
    })
}

/// What every node of one run shares: the parameters and the run key.
struct Run<'a> {
    params: &'a BTreeMap<String, Tensor<f64>>,
    run_key: u64,
}

/// Evaluates every node of `graph` in topological order; returns all values by node.
fn evaluate_graph(
    graph: &PrimGraph,
    inputs: &[&Tensor<f64>],
    run: &Run,
) -> Result<HashMap<PrimNodeId, Tensor<f64>>, InterpretError> {
    let mut values: HashMap<PrimNodeId, Tensor<f64>> = HashMap::new();
    for id in graph.topological_order() {
        let node = graph.node(id);
        let operands: Vec<&Tensor<f64>> = graph
            .operands(id)
            .iter()
            .map(|operand| &values[operand])
            .collect();
        let value = evaluate(node, &operands, inputs, run)
            .map_err(|failure| failure.into_error(id, node))?;
        if value.shape != node.ty.shape || value.data.len() != node.ty.element_count() {
            let message = format!(
                "computed shape {:?}, expected {:?}",
                value.shape, node.ty.shape
            );
            return Err(Failure::Internal(message).into_error(id, node));
        }
        values.insert(id, value);
    }
    Ok(values)
}

/// Why one node failed; the driver adds which node.
enum Failure {
    IndexOutOfRange { index: f64, rows: usize },
    Error(InterpretError),
    Internal(String),
}

impl Failure {
    fn into_error(self, id: PrimNodeId, node: &PrimNode) -> InterpretError {
        match self {
            Failure::IndexOutOfRange { index, rows } => InterpretError::IndexOutOfRange {
                path: node.origin.path.to_string(),
                index,
                rows,
            },
            Failure::Error(error) => error,
            Failure::Internal(message) => InterpretError::Internal {
                node: id.index(),
                op: node.op.name(),
                path: node.origin.path.to_string(),
                message,
            },
        }
    }
}

/// One node's value from its operands' values.
fn evaluate(
    node: &PrimNode,
    operands: &[&Tensor<f64>],
    inputs: &[&Tensor<f64>],
    run: &Run,
) -> Result<Tensor<f64>, Failure> {
    let shape = &node.ty.shape;
    Ok(match &node.op {
        PrimOp::Input { index, .. } => (*inputs
            .get(*index)
            .ok_or_else(|| Failure::Internal(format!("no input {index}")))?)
        .clone(),
        PrimOp::Parameter { name, .. } => run
            .params
            .get(name)
            .cloned()
            .ok_or_else(|| Failure::Internal(format!("parameter `{name}` vanished")))?,
        PrimOp::Constant(constant) => elementwise::constant(constant),
        PrimOp::RandomNormal { seed, shape } => random::random_normal(*seed, run.run_key, shape),
        PrimOp::RandomUniform { seed, shape } => random::random_uniform(*seed, run.run_key, shape),
        PrimOp::Unary(function) => elementwise::unary(*function, operands[0]),
        PrimOp::Binary(function) => elementwise::binary(*function, operands[0], operands[1], shape),
        PrimOp::MatMul => window::matmul(operands[0], operands[1], shape),
        PrimOp::Conv2d(params) => window::conv2d(params, operands[0], operands[1], shape),
        PrimOp::Conv2dWeightGradient(params) => {
            window::conv2d_weight_gradient(params, operands[0], operands[1], shape)
        }
        PrimOp::ConvTranspose2d(params) => {
            window::conv_transpose2d(params, operands[0], operands[1], shape)
        }
        PrimOp::Pool2d(params) => window::pool2d(params, operands[0], shape),
        PrimOp::MaxPool2dArgmax(params) => window::max_pool2d_argmax(params, operands[0], shape),
        PrimOp::Reduce { op, axes, .. } => elementwise::reduce(*op, axes, operands[0], shape),
        PrimOp::Reshape { shape } => layout::reshape(operands[0], shape),
        PrimOp::Transpose { perm } => layout::transpose(operands[0], perm),
        PrimOp::Slice { axis, start, end } => layout::slice(operands[0], *axis, *start, *end),
        PrimOp::Concat { axis } => layout::concat(operands, *axis),
        PrimOp::Gather => layout::gather(operands[0], operands[1])
            .map_err(|(index, rows)| Failure::IndexOutOfRange { index, rows })?,
        PrimOp::ScatterAdd { rows } => layout::scatter_add(operands[0], operands[1], *rows)
            .map_err(|(index, rows)| Failure::IndexOutOfRange { index, rows })?,
        PrimOp::Scan {
            body,
            axis,
            reverse,
        } => scan(body, *axis, *reverse, operands, run)?,
    })
}

/// Runs the body once per step of `axis`, carrying the states, and stacks the step outputs at
/// their positions along `axis`.
fn scan(
    body: &ScanBody,
    axis: usize,
    reverse: bool,
    operands: &[&Tensor<f64>],
    run: &Run,
) -> Result<Tensor<f64>, Failure> {
    let (sequences, rest) = operands.split_at(body.sequence_count);
    let (initial_states, invariants) = rest.split_at(body.state_count);
    let mut states: Vec<Tensor<f64>> = initial_states
        .iter()
        .map(|state| (*state).clone())
        .collect();
    let steps = sequences[0].shape[axis];
    let mut step_outputs: Vec<Option<Tensor<f64>>> = vec![None; steps];
    let order: Vec<usize> = if reverse {
        (0..steps).rev().collect()
    } else {
        (0..steps).collect()
    };
    for step in order {
        let slices: Vec<Tensor<f64>> = sequences
            .iter()
            .map(|sequence| layout::select(sequence, axis, step))
            .collect();
        let mut body_inputs: Vec<&Tensor<f64>> = slices.iter().collect();
        body_inputs.extend(states.iter());
        body_inputs.extend(invariants.iter().copied());
        let values = evaluate_graph(&body.graph, &body_inputs, run).map_err(Failure::Error)?;
        let mut outputs: Vec<Tensor<f64>> = body
            .graph
            .outputs
            .iter()
            .map(|(_, id)| values[id].clone())
            .collect();
        step_outputs[step] = outputs.pop();
        states = outputs;
    }
    let step_outputs: Vec<Tensor<f64>> = step_outputs.into_iter().flatten().collect();
    Ok(layout::stack(&step_outputs, axis))
}
