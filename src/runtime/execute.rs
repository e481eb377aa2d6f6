//! Executes one primitive node in f32: the kernels of `src/kernels` for matmul, convolution and
//! pooling (optionally adding a per-channel bias, with scratch from the memory plan), the loops
//! of `elementwise.rs` and `layout.rs` for the rest. Scans are in `scan.rs`.

use super::convolution;
use super::elementwise;
use super::layout;
use super::RuntimeError;
use crate::interpret;
use crate::kernels::gemm::{GemmPost, GemmStart, PackedB};
use crate::kernels::pool::{avg_pool2d, max_pool2d, Pool2dGeometry};
use crate::prim::{PoolKind, PrimNode, PrimOp};

/// One operand: its elements and shape.
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub shape: &'a [usize],
    /// `Some((offset, strides))` when the operand is read through a strided view of `data`
    /// (a matmul operand whose slices and transposes no kernel computed, one stride per dim of
    /// `shape`); `None` when `data` holds it row-major.
    pub view: Option<(usize, &'a [usize])>,
}

/// Computes `node` (not a source, a scan or a matmul/convolution) from `operands` into `output`
/// (sized for the node's type); random ops draw from the stream of `run_key`.
pub fn execute_node(
    node: &PrimNode,
    operands: &[Operand<'_>],
    output: &mut [f32],
    threads: usize,
    run_key: u64,
) -> Result<(), RuntimeError> {
    let output_shape = &node.ty.shape;
    match &node.op {
        PrimOp::Input { .. } | PrimOp::Parameter { .. } | PrimOp::Constant(_) => {
            return Err(RuntimeError::internal("source nodes are not executed"));
        }
        PrimOp::Scan { .. } => {
            return Err(RuntimeError::internal(
                "a scan reached the per-node executor",
            ))
        }
        PrimOp::MatMul
        | PrimOp::Conv2d(_)
        | PrimOp::Conv2dWeightGradient(_)
        | PrimOp::ConvTranspose2d(_) => {
            execute_producer(
                node,
                operands,
                None,
                GemmPost::default(),
                None,
                None,
                output,
                &mut [],
                threads,
            )?;
        }
        // The interpreter's own functions, so both draw the same numbers (uniform ones
        // bit for bit: they are multiples of 2^-24).
        PrimOp::RandomNormal { seed, .. } => {
            let seed = interpret::seed_for_run(*seed, run_key);
            for (index, value) in output.iter_mut().enumerate() {
                *value = interpret::standard_normal(seed, index as u64) as f32;
            }
        }
        PrimOp::RandomUniform { seed, .. } => {
            super::random_fill::fill_uniform(*seed, run_key, output)
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
                PoolKind::Average { count_include_pad } => avg_pool2d(
                    &geometry,
                    count_include_pad,
                    None,
                    input.data,
                    output,
                    threads,
                )?,
            }
        }
        PrimOp::MaxPool2dArgmax(params) => super::pool_argmax::max_pool2d_argmax(
            params,
            operands[0].data,
            operands[0].shape,
            output,
            output_shape,
            threads,
        )?,
        PrimOp::Reduce { op, axes, .. } => {
            super::reduce::reduce(*op, operands[0].data, operands[0].shape, axes, output)
        }
        PrimOp::Reshape { .. } => output.copy_from_slice(operands[0].data),
        PrimOp::Transpose { perm } => {
            super::transpose::transpose(operands[0].data, operands[0].shape, perm, output)
        }
        PrimOp::Slice { axis, start, end } => layout::slice(
            operands[0].data,
            operands[0].shape,
            *axis,
            *start,
            *end,
            output,
        ),
        PrimOp::Concat { axis } => {
            let parts: Vec<(&[f32], &[usize])> = operands
                .iter()
                .map(|operand| (operand.data, operand.shape))
                .collect();
            layout::concat(&parts, *axis, output, output_shape);
        }
        PrimOp::Gather => layout::gather(
            operands[0].data,
            operands[0].shape[0],
            operands[1].data,
            output,
        )?,
        PrimOp::ScatterAdd { rows } => {
            layout::scatter_add(operands[0].data, operands[1].data, *rows, output)?
        }
    }
    Ok(())
}

/// A matmul or convolution into `output`, starting from `bias` (one value per output channel:
/// the last dim of a matmul, dim 1 of a convolution) when given. `scratch` has at least
/// [`producer_scratch_len`] floats for the same thread count; without enough, a convolution
/// allocates its own. A matmul whose B was packed ahead of time (`prepack.rs`) gets it in
/// `packed_b`. A matmul applies `post` (a residual add, a ReLU) as it writes its tiles, and
/// with `accumulate_scaled = Some(alpha)` (no bias) adds `alpha` times its product to what
/// `output` holds (a plain SGD update into the weight); other producers take neither.
#[allow(clippy::too_many_arguments)]
pub fn execute_producer(
    node: &PrimNode,
    operands: &[Operand<'_>],
    bias: Option<&[f32]>,
    post: GemmPost<'_>,
    accumulate_scaled: Option<f32>,
    packed_b: Option<&PackedB>,
    output: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<(), RuntimeError> {
    if output.is_empty() {
        // A batch of zero (or any empty result): nothing to compute, and the kernels' geometry
        // checks would reject the zero size.
        return Ok(());
    }
    let (input, weight) = (&operands[0], &operands[1]);
    let matmul_only = post.residual.is_some() || post.relu || accumulate_scaled.is_some();
    if matmul_only && !matches!(node.op, PrimOp::MatMul) {
        return Err(RuntimeError::internal(
            "post-operations or a scaled accumulation given to a producer that is not a matmul",
        ));
    }
    match &node.op {
        // Row-major operands are views with row-major strides (`strided_matmul.rs`).
        PrimOp::MatMul => super::strided_matmul::strided_matmul(
            input,
            weight,
            packed_b,
            match (bias, accumulate_scaled) {
                (Some(_), Some(_)) => {
                    return Err(RuntimeError::internal(
                        "a matmul given both a bias and a scaled accumulation",
                    ))
                }
                (Some(bias), None) => GemmStart::ColumnBias(bias),
                (None, Some(alpha)) => GemmStart::AccumulateScaled(alpha),
                (None, None) => GemmStart::Zero,
            },
            post,
            output,
            &node.ty.shape,
            threads,
        ),
        PrimOp::Conv2d(_) | PrimOp::ConvTranspose2d(_) => {
            convolution::run(node, input, weight, bias, output, scratch, threads)
        }
        PrimOp::Conv2dWeightGradient(params) => {
            if bias.is_some() {
                return Err(RuntimeError::internal(
                    "a weight gradient was given a bias to add",
                ));
            }
            convolution::run_weight_gradient(params, input, weight, output, scratch, threads)
        }
        _ => Err(RuntimeError::internal(
            "a producer kernel whose node is not a matmul or convolution",
        )),
    }
}

/// The scratch floats [`execute_producer`] uses for `node` with operands of these shapes.
pub fn producer_scratch_len(
    node: &PrimNode,
    input_shape: &[usize],
    weight_shape: &[usize],
    threads: usize,
) -> Result<usize, RuntimeError> {
    match &node.op {
        PrimOp::Conv2d(_) | PrimOp::ConvTranspose2d(_) if node.ty.element_count() > 0 => {
            convolution::scratch_len(node, input_shape, weight_shape, threads)
        }
        PrimOp::Conv2dWeightGradient(params) => {
            convolution::weight_gradient_scratch_len(params, input_shape, weight_shape)
        }
        _ => Ok(0),
    }
}
