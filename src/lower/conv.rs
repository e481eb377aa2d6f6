//! Lowering of convolutions and pooling. Biases become broadcast adds of `[O, 1, 1]` after the
//! bias-free convolution primitive.

use super::{GraphLowering, LowerError};
use crate::ir::{Conv2dAttrs, Padding, Pool2dAttrs};
use crate::prim::*;

fn usize_pair(values: [u64; 2]) -> [usize; 2] {
    values.map(|value| value as usize)
}

/// `conv2d`; "same" padding splits as TensorFlow and PyTorch do, the odd row at the end.
pub(super) fn conv2d(
    cx: &mut GraphLowering,
    attrs: &Conv2dAttrs,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(x);
    let stride = usize_pair(attrs.stride);
    let dilation = usize_pair(attrs.dilation);
    let kernel = usize_pair(attrs.kernel);
    let padding = match attrs.padding {
        Padding::Explicit(pad) => usize_pair(pad).map(|pad| [pad, pad]),
        Padding::Same => [0, 1].map(|axis| {
            let size = shape[2 + axis];
            let window = dilation[axis] * (kernel[axis] - 1) + 1;
            let needed = (size.div_ceil(stride[axis]) - 1) * stride[axis] + window;
            let total = needed.saturating_sub(size);
            [total / 2, total - total / 2]
        }),
    };
    let params = Conv2dParams {
        stride,
        padding,
        dilation,
        groups: attrs.groups as usize,
    };
    let weight = cx.parameter("weight")?;
    let convolved = cx.out.emit(PrimOp::Conv2d(params), &[x, weight])?;
    add_channel_bias(cx, attrs, convolved)
}

/// `conv_transpose2d` with PyTorch's output size `(H-1)S - 2P + D(K-1) + output_padding + 1`.
pub(super) fn conv_transpose2d(
    cx: &mut GraphLowering,
    attrs: &Conv2dAttrs,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let shape = cx.out.shape(x);
    let Padding::Explicit(padding) = attrs.padding else {
        let message = "a transposed convolution with \"same\" padding reached lowering";
        return Err(LowerError::Internal {
            path: cx.out.origin.path.to_string(),
            span: cx.out.origin.span,
            message: message.into(),
        });
    };
    let (stride, dilation) = (usize_pair(attrs.stride), usize_pair(attrs.dilation));
    let (kernel, padding) = (usize_pair(attrs.kernel), usize_pair(padding));
    let output_padding = usize_pair(attrs.output_padding);
    let output_size = [0, 1].map(|axis| {
        (shape[2 + axis] - 1) * stride[axis]
            + dilation[axis] * (kernel[axis] - 1)
            + output_padding[axis]
            + 1
            - 2 * padding[axis]
    });
    let params = ConvTranspose2dParams {
        stride,
        padding,
        dilation,
        groups: attrs.groups as usize,
        output_size,
    };
    let weight = cx.parameter("weight")?;
    let convolved = cx.out.emit(PrimOp::ConvTranspose2d(params), &[x, weight])?;
    add_channel_bias(cx, attrs, convolved)
}

fn add_channel_bias(
    cx: &mut GraphLowering,
    attrs: &Conv2dAttrs,
    convolved: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    if !attrs.bias {
        return Ok(convolved);
    }
    let bias = cx.parameter("bias")?;
    let channels = cx.out.shape(bias)[0];
    let bias = cx.out.reshape(bias, vec![channels, 1, 1])?;
    cx.out.binary(BinaryFn::Add, convolved, bias)
}

pub(super) fn pool2d(
    cx: &mut GraphLowering,
    attrs: &Pool2dAttrs,
    kind: PoolKind,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let params = Pool2dParams {
        kind,
        kernel: usize_pair(attrs.kernel),
        stride: usize_pair(attrs.stride),
        padding: usize_pair(attrs.padding),
        dilation: usize_pair(attrs.dilation),
        ceil_mode: attrs.ceil_mode,
    };
    cx.out.emit(PrimOp::Pool2d(params), &[x])
}

/// `adaptive_avg_pool2d`, one spatial axis at a time (averaging a rectangle is averaging its
/// rows, then its columns). An axis whose size the output divides becomes a reshape that splits
/// it into `[out, size/out]` and a mean over the second; otherwise each output cell averages the
/// slice `floor(i*size/out)..ceil((i+1)*size/out)`, as PyTorch does, and the cells are joined.
pub(super) fn adaptive_avg_pool2d(
    cx: &mut GraphLowering,
    output: [u64; 2],
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let mut pooled = x;
    for axis in [2, 3] {
        let shape = cx.out.shape(pooled);
        let (size, out) = (shape[axis], output[axis - 2] as usize);
        if size == out {
            continue;
        }
        pooled = if size % out == 0 {
            let mut split = shape.clone();
            split.splice(axis..=axis, [out, size / out]);
            let reshaped = cx.out.reshape(pooled, split)?;
            cx.out
                .reduce(ReduceFn::Mean, reshaped, vec![axis + 1], false)?
        } else {
            let mut cells = Vec::with_capacity(out);
            for cell in 0..out {
                let (start, end) = (cell * size / out, ((cell + 1) * size).div_ceil(out));
                let window = cx.out.slice(pooled, axis, start, end)?;
                cells.push(cx.out.reduce(ReduceFn::Mean, window, vec![axis], true)?);
            }
            cx.out.concat(&cells, axis)?
        };
    }
    Ok(pooled)
}
