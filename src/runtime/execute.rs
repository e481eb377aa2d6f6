//! Executes one primitive node in f32: the kernels of `src/kernels` for matmul, convolution and
//! pooling, the loops of `elementwise.rs` and `layout.rs` for the rest, and a loop over time for
//! `Scan`, which runs its body's own [`Executable`].

use super::elementwise;
use super::layout;
use super::{Executable, RuntimeError};
use crate::kernels::conv::{conv2d, Conv2dGeometry, ConvTranspose2dGeometry};
use crate::kernels::gemm::{sgemm_threaded, MatrixMut, MatrixRef};
use crate::kernels::pool::{avg_pool2d, max_pool2d, Pool2dGeometry};
use crate::prim::{PoolKind, PrimNode, PrimOp};
use crate::tensor::Tensor;

/// One operand: its elements and shape.
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub shape: &'a [usize],
}

/// Computes `node` from `operands` into `output` (sized for the node's type).
pub fn execute_node(
    node: &PrimNode,
    operands: &[Operand<'_>],
    output: &mut [f32],
    scan_body: Option<&Executable>,
    threads: usize,
) -> Result<(), RuntimeError> {
    let output_shape = &node.ty.shape;
    match &node.op {
        PrimOp::Input { .. } | PrimOp::Parameter { .. } | PrimOp::Constant(_) => {
            return Err(RuntimeError::internal("source nodes are not executed"));
        }
        PrimOp::RandomNormal { seed, .. } => {
            for (index, value) in output.iter_mut().enumerate() {
                *value = crate::interpret::standard_normal(*seed, index as u64) as f32;
            }
        }
        PrimOp::Unary(function) => elementwise::unary(*function, operands[0].data, output),
        PrimOp::Binary(function) => elementwise::binary(
            *function,
            operands[0].data,
            operands[0].shape,
            operands[1].data,
            operands[1].shape,
            output,
            output_shape,
        ),
        PrimOp::MatMul => matmul(&operands[0], &operands[1], output, output_shape, threads)?,
        PrimOp::Conv2d(params) => {
            let (input, weight) = (&operands[0], &operands[1]);
            let [[top, bottom], [left, right]] = params.padding;
            let geometry = |in_size: [usize; 2], padding: [usize; 2]| Conv2dGeometry {
                batch: input.shape[0],
                in_channels: input.shape[1],
                out_channels: weight.shape[0],
                in_size,
                kernel: [weight.shape[2], weight.shape[3]],
                stride: params.stride,
                padding,
                dilation: params.dilation,
                groups: params.groups,
            };
            if top == bottom && left == right {
                conv2d(&geometry([input.shape[2], input.shape[3]], [top, left]), input.data, weight.data, None, output, threads)?;
            } else {
                // Uneven ("same") padding: pad explicitly, then convolve without padding.
                let padded_shape = [input.shape[0], input.shape[1], input.shape[2] + top + bottom, input.shape[3] + left + right];
                let padded = pad_spatial(input, &padded_shape, top, left);
                conv2d(&geometry([padded_shape[2], padded_shape[3]], [0, 0]), &padded, weight.data, None, output, threads)?;
            }
        }
        PrimOp::ConvTranspose2d(params) => {
            let (input, weight) = (&operands[0], &operands[1]);
            let mut output_padding = [0; 2];
            for axis in 0..2 {
                let base = (input.shape[2 + axis] - 1) * params.stride[axis] + params.dilation[axis] * (weight.shape[2 + axis] - 1) + 1;
                let produced = base.checked_sub(2 * params.padding[axis]).unwrap_or(0);
                output_padding[axis] = params.output_size[axis].checked_sub(produced).ok_or_else(|| RuntimeError::Unsupported {
                    what: "a transposed convolution that crops its output".into(),
                })?;
            }
            let geometry = ConvTranspose2dGeometry {
                batch: input.shape[0],
                in_channels: input.shape[1],
                out_channels: output_shape[1],
                in_size: [input.shape[2], input.shape[3]],
                kernel: [weight.shape[2], weight.shape[3]],
                stride: params.stride,
                padding: params.padding,
                output_padding,
                dilation: params.dilation,
                groups: params.groups,
            };
            crate::kernels::conv::conv_transpose2d(&geometry, input.data, weight.data, None, output, threads)?;
        }
        PrimOp::Pool2d(params) => {
            let input = &operands[0];
            let geometry = Pool2dGeometry {
                batch: input.shape[0],
                channels: input.shape[1],
                in_size: [input.shape[2], input.shape[3]],
                kernel: params.kernel,
                stride: params.stride,
                padding: params.padding,
                dilation: params.dilation,
                ceil_mode: params.ceil_mode,
            };
            match params.kind {
                PoolKind::Max => max_pool2d(&geometry, input.data, output, threads)?,
                PoolKind::Average { count_include_pad } => avg_pool2d(&geometry, count_include_pad, None, input.data, output, threads)?,
            }
        }
        PrimOp::Reduce { op, axes, .. } => layout::reduce(*op, operands[0].data, operands[0].shape, axes, output),
        PrimOp::Reshape { .. } => output.copy_from_slice(operands[0].data),
        PrimOp::Transpose { perm } => layout::transpose(operands[0].data, operands[0].shape, perm, output),
        PrimOp::Slice { axis, start, end } => layout::slice(operands[0].data, operands[0].shape, *axis, *start, *end, output),
        PrimOp::Concat { axis } => {
            let parts: Vec<(&[f32], &[usize])> = operands.iter().map(|operand| (operand.data, operand.shape)).collect();
            layout::concat(&parts, *axis, output, output_shape);
        }
        PrimOp::Gather => layout::gather(operands[0].data, operands[0].shape[0], operands[1].data, output)?,
        PrimOp::Scan { body, axis, reverse } => {
            let body_executable = scan_body.ok_or_else(|| RuntimeError::internal("a scan without its compiled body"))?;
            run_scan(body_executable, body.sequence_count, body.state_count, *axis, *reverse, operands, output, output_shape)?;
        }
    }
    Ok(())
}

fn pad_spatial(input: &Operand<'_>, padded_shape: &[usize; 4], top: usize, left: usize) -> Vec<f32> {
    let [batch, channels, height, width] = [input.shape[0], input.shape[1], input.shape[2], input.shape[3]];
    let mut padded = vec![0.0; padded_shape.iter().product()];
    for plane in 0..batch * channels {
        for row in 0..height {
            let from = (plane * height + row) * width;
            let to = (plane * padded_shape[2] + row + top) * padded_shape[3] + left;
            padded[to..to + width].copy_from_slice(&input.data[from..from + width]);
        }
    }
    padded
}

/// Batched `[..., M, K] x [..., K, P]` with broadcast batch dims: one GEMM per output batch.
fn matmul(a: &Operand<'_>, b: &Operand<'_>, output: &mut [f32], output_shape: &[usize], threads: usize) -> Result<(), RuntimeError> {
    let rank = output_shape.len();
    let (m, p) = (output_shape[rank - 2], output_shape[rank - 1]);
    let k = a.shape[a.shape.len() - 1];
    let batch_shape = &output_shape[..rank - 2];
    let a_batch = elementwise::broadcast_strides(&a.shape[..a.shape.len() - 2], batch_shape);
    let b_batch = elementwise::broadcast_strides(&b.shape[..b.shape.len() - 2], batch_shape);
    let batches: usize = batch_shape.iter().product();
    for batch in 0..batches {
        let (mut a_offset, mut b_offset, mut rest) = (0, 0, batch);
        for axis in (0..batch_shape.len()).rev() {
            let index = rest % batch_shape[axis];
            rest /= batch_shape[axis];
            a_offset += index * a_batch[axis];
            b_offset += index * b_batch[axis];
        }
        let a_matrix = MatrixRef::row_major(&a.data[a_offset * m * k..(a_offset + 1) * m * k], k);
        let b_matrix = MatrixRef::row_major(&b.data[b_offset * k * p..(b_offset + 1) * k * p], p);
        let c_matrix = MatrixMut::row_major(&mut output[batch * m * p..(batch + 1) * m * p], p);
        sgemm_threaded(threads, m, p, k, a_matrix, b_matrix, c_matrix, false)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_scan(
    body: &Executable,
    sequence_count: usize,
    state_count: usize,
    axis: usize,
    reverse: bool,
    operands: &[Operand<'_>],
    output: &mut [f32],
    output_shape: &[usize],
) -> Result<(), RuntimeError> {
    let steps = operands[0].shape[axis];
    let mut states: Vec<Vec<f32>> = operands[sequence_count..sequence_count + state_count].iter().map(|state| state.data.to_vec()).collect();
    let invariants = &operands[sequence_count + state_count..];
    let mut step_inputs: Vec<Vec<f32>> = operands[..sequence_count]
        .iter()
        .map(|sequence| vec![0.0; sequence.data.len() / steps])
        .collect();
    let (outer, inner): (usize, usize) = (output_shape[..axis].iter().product(), output_shape[axis + 1..].iter().product());
    for position in 0..steps {
        let step = if reverse { steps - 1 - position } else { position };
        for (sequence, buffer) in operands[..sequence_count].iter().zip(&mut step_inputs) {
            layout::slice(sequence.data, sequence.shape, axis, step, step + 1, buffer);
        }
        let mut inputs: Vec<&[f32]> = step_inputs.iter().map(Vec::as_slice).collect();
        inputs.extend(states.iter().map(Vec::as_slice));
        inputs.extend(invariants.iter().map(|invariant| invariant.data));
        let mut results: Vec<Tensor<f32>> = body.run_slices(&[], &inputs)?;
        let step_output = results.pop().ok_or_else(|| RuntimeError::internal("a scan body without a step output"))?;
        for (state, next) in states.iter_mut().zip(results) {
            state.copy_from_slice(&next.data);
        }
        for row in 0..outer {
            let to = (row * steps + step) * inner;
            output[to..to + inner].copy_from_slice(&step_output.data[row * inner..(row + 1) * inner]);
        }
    }
    Ok(())
}
