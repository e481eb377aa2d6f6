//! `Scan`: a loop over the scan axis that runs the body's own program once per step, carrying
//! the states and stacking the step outputs. The body reads the same bound parameters as the
//! graph around it.

use super::execute::Operand;
use super::layout;
use super::program::Program;
use super::{ParameterValues, RuntimeError};
use crate::prim::{PrimNode, PrimOp};

/// Runs the scan `node` with its compiled `body`; `context` is the bound parameters, the thread
/// count and the run key, which the body's random ops share with the graph around it.
pub(super) fn run_scan(
    body: &Program,
    node: &PrimNode,
    context: (&ParameterValues<'_>, usize, u64),
    operands: &[Operand<'_>],
    output: &mut [f32],
) -> Result<(), RuntimeError> {
    let (parameters, threads, run_key) = context;
    let PrimOp::Scan {
        body: scan_body,
        axis,
        reverse,
    } = &node.op
    else {
        return Err(RuntimeError::internal(
            "a scan step whose node is not a scan",
        ));
    };
    let (sequence_count, state_count, axis) =
        (scan_body.sequence_count, scan_body.state_count, *axis);
    let output_shape = &node.ty.shape;
    let steps = operands[0].shape[axis];
    let mut states: Vec<Vec<f32>> = operands[sequence_count..sequence_count + state_count]
        .iter()
        .map(|state| state.data.to_vec())
        .collect();
    let invariants = &operands[sequence_count + state_count..];
    let mut step_inputs: Vec<Vec<f32>> = operands[..sequence_count]
        .iter()
        .map(|sequence| vec![0.0; sequence.data.len() / steps])
        .collect();
    let (outer, inner): (usize, usize) = (
        output_shape[..axis].iter().product(),
        output_shape[axis + 1..].iter().product(),
    );
    for position in 0..steps {
        let step = if *reverse {
            steps - 1 - position
        } else {
            position
        };
        for (sequence, buffer) in operands[..sequence_count].iter().zip(&mut step_inputs) {
            layout::slice(sequence.data, sequence.shape, axis, step, step + 1, buffer);
        }
        let mut inputs: Vec<&[f32]> = step_inputs.iter().map(Vec::as_slice).collect();
        inputs.extend(states.iter().map(Vec::as_slice));
        inputs.extend(invariants.iter().map(|invariant| invariant.data));
        let mut results = body.run(parameters, &inputs, threads, run_key)?;
        let step_output = results
            .pop()
            .ok_or_else(|| RuntimeError::internal("a scan body without a step output"))?;
        for (state, next) in states.iter_mut().zip(results) {
            state.copy_from_slice(&next.data);
        }
        for row in 0..outer {
            let to = (row * steps + step) * inner;
            output[to..to + inner]
                .copy_from_slice(&step_output.data[row * inner..(row + 1) * inner]);
        }
    }
    Ok(())
}
