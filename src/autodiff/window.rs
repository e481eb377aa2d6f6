//! Gradient rules of the windowed ops. Most are another convolution: the input gradient of
//! a convolution is the transposed convolution with the same weight, and a weight gradient is a
//! convolution of the (re-laid-out) input with the output gradient as its weight, the roles of
//! stride and dilation swapped. Groups are handled by folding the batch into the channels so
//! that one grouped convolution computes every group's weight gradient at once. Average
//! pooling's gradient is a transposed convolution by ones too; max pooling's scatters the
//! output gradient to the indices of the windows' maxima (`max_pool2d_argmax`).

use super::builder::GradientBuilder;
use super::rules::{not_differentiable, ForwardNode, OperandGradients};
use super::AutodiffError;
use crate::prim::*;
use crate::tensor::Tensor;

/// `y = conv2d(x, w)`: `dx = conv_transpose2d(g, w)` (the adjoint scatters each output back
/// to the rows it read) and `dw[o, c, ky, kx] = sum_{n, oy, ox} g[n, o, oy, ox] *
/// x[n, c, oy*S - P + ky*D, ...]`, a convolution of `x` laid out `[C/G, G*N, H, W]` with `g`
/// laid out `[O, N, OH, OW]` as its weight, stride `D`, dilation `S`, groups `G`.
pub(crate) fn conv2d_rule(
    b: &mut GradientBuilder,
    params: &Conv2dParams,
    node: &ForwardNode,
    g: PrimNodeId,
) -> Result<OperandGradients, AutodiffError> {
    let (x, w) = (node.operands[0], node.operands[1]);
    let [_, _, h, width] = rank4(&b.shape(x));
    let [o, c_per_group, kh, kw] = rank4(&b.shape(w));
    let groups = params.groups;
    let mut result = vec![None, None];
    if node.needs[0] {
        let transposed = ConvTranspose2dParams {
            stride: params.stride,
            padding: [params.padding[0][0], params.padding[1][0]],
            dilation: params.dilation,
            groups,
            output_size: [h, width],
        };
        result[0] = Some(b.add(PrimOp::ConvTranspose2d(transposed), &[g, w])?);
    }
    if node.needs[1] {
        let weight_gradient = Conv2dWeightGradientParams {
            conv: params.clone(),
            kernel: [kh, kw],
        };
        let grad = b.add(PrimOp::Conv2dWeightGradient(weight_gradient), &[x, g])?;
        debug_assert_eq!(b.shape(grad), vec![o, c_per_group, kh, kw]);
        result[1] = Some(grad);
    }
    Ok(result)
}

/// `dw = conv2d_weight_gradient(x, g)` is bilinear: `<h, dw> = <conv2d(x, h), g> =
/// <x, conv_transpose2d(g, h)>` for the gradient `h` of `dw`, so `dx = conv_transpose2d(g, h)`
/// and `dg = conv2d(x, h)` with the convolution's parameters (`h` plays the weight).
pub(crate) fn conv2d_weight_gradient_rule(
    b: &mut GradientBuilder,
    params: &Conv2dWeightGradientParams,
    node: &ForwardNode,
    h: PrimNodeId,
) -> Result<OperandGradients, AutodiffError> {
    let (x, g) = (node.operands[0], node.operands[1]);
    let [_, _, height, width] = rank4(&b.shape(x));
    let conv = &params.conv;
    let mut result = vec![None, None];
    if node.needs[0] {
        let [[top, bottom], [left, right]] = conv.padding;
        if top != bottom || left != right {
            return Err(not_differentiable(
                node.op,
                "the input gradient of a weight gradient with uneven padding is not supported",
            ));
        }
        let transposed = ConvTranspose2dParams {
            stride: conv.stride,
            padding: [top, left],
            dilation: conv.dilation,
            groups: conv.groups,
            output_size: [height, width],
        };
        result[0] = Some(b.add(PrimOp::ConvTranspose2d(transposed), &[g, h])?);
    }
    if node.needs[1] {
        result[1] = Some(b.add(PrimOp::Conv2d(conv.clone()), &[x, h])?);
    }
    Ok(result)
}

/// `y = conv_transpose2d(x, w)` is the adjoint of a convolution, so `dx = conv2d(g, w)` with
/// the same stride, dilation and groups, and
/// `dw[c, o, ky, kx] = sum_{n, iy, ix} x[n, c, iy, ix] * g[n, o, iy*S - P + ky*D, ...]`, a convolution of `g` laid out `[O/G, G*N, OH, OW]` with
/// `x` laid out `[C, N, H, W]` as its weight, stride `D`, dilation `S`. `g` is cropped or
/// padded at the end so that each convolution's output has exactly the wanted size.
pub(crate) fn conv_transpose2d_rule(
    b: &mut GradientBuilder,
    params: &ConvTranspose2dParams,
    node: &ForwardNode,
    g: PrimNodeId,
) -> Result<OperandGradients, AutodiffError> {
    let (x, w) = (node.operands[0], node.operands[1]);
    let [n, c, h, width] = rank4(&b.shape(x));
    let [_, o_per_group, kh, kw] = rank4(&b.shape(w));
    let groups = params.groups;
    let mut result = vec![None, None];
    if node.needs[0] {
        // The convolution must read padded rows 0..(H-1)S + D(KH-1) + 1 (and likewise columns).
        let needed = [
            (h - 1) * params.stride[0] + params.dilation[0] * (kh - 1) + 1,
            (width - 1) * params.stride[1] + params.dilation[1] * (kw - 1) + 1,
        ];
        let (fitted, padding) = fit_to_padded_length(b, node, g, params.padding, needed)?;
        let conv = Conv2dParams {
            stride: params.stride,
            padding,
            dilation: params.dilation,
            groups,
        };
        result[0] = Some(b.add(PrimOp::Conv2d(conv), &[fitted, w])?);
    }
    if node.needs[1] {
        let needed = [
            (h - 1) * params.stride[0] + params.dilation[0] * (kh - 1) + 1,
            (width - 1) * params.stride[1] + params.dilation[1] * (kw - 1) + 1,
        ];
        let (fitted, padding) = fit_to_padded_length(b, node, g, params.padding, needed)?;
        let [_, _, oh, ow] = rank4(&b.shape(fitted));
        let split = b.reshape(fitted, &[n, groups, o_per_group, oh, ow])?;
        let moved = b.transpose(split, &[2, 1, 0, 3, 4])?;
        let folded_grad = b.reshape(moved, &[o_per_group, groups * n, oh, ow])?;
        let folded_input = b.transpose(x, &[1, 0, 2, 3])?;
        let swapped = Conv2dParams {
            stride: params.dilation,
            padding,
            dilation: params.stride,
            groups,
        };
        let full = b.add(PrimOp::Conv2d(swapped), &[folded_grad, folded_input])?;
        let grad = b.transpose(full, &[1, 0, 2, 3])?;
        debug_assert_eq!(b.shape(grad), vec![c, o_per_group, kh, kw]);
        result[1] = Some(grad);
    }
    Ok(result)
}

/// Crops or zero-pads the end of `g`'s spatial axes so that, with `start` rows of padding in
/// front, it spans exactly `needed` rows (columns); returns it and the convolution padding.
fn fit_to_padded_length(
    b: &mut GradientBuilder,
    node: &ForwardNode,
    g: PrimNodeId,
    start: [usize; 2],
    needed: [usize; 2],
) -> Result<(PrimNodeId, [[usize; 2]; 2]), AutodiffError> {
    let mut fitted = g;
    let mut padding = [[start[0], 0], [start[1], 0]];
    for axis in 0..2 {
        let have = b.shape(fitted)[axis + 2];
        if needed[axis] <= start[axis] {
            return Err(not_differentiable(
                node.op,
                "its cropping removes every scattered position, so the gradient is zero",
            ));
        }
        let wanted_rows = needed[axis] - start[axis];
        if have > wanted_rows {
            fitted = b.slice(fitted, axis + 2, 0, wanted_rows)?;
        } else {
            padding[axis][1] = wanted_rows - have;
        }
    }
    Ok((fitted, padding))
}

/// `y = avg_pool(x)`: `dx = conv_transpose2d(g / divisor, ones)`, one channel per group, where
/// the divisor of each window (taps inside the padded or the real input) is a constant.
/// `y = max_pool(x)`: see [`max_pool_rule`].
pub(crate) fn pool2d_rule(
    b: &mut GradientBuilder,
    params: &Pool2dParams,
    node: &ForwardNode,
    g: PrimNodeId,
) -> Result<OperandGradients, AutodiffError> {
    let x = node.operands[0];
    let [_, c, h, width] = rank4(&b.shape(x));
    let [_, _, oh, ow] = rank4(&b.shape(g));
    let count_include_pad = match params.kind {
        PoolKind::Average { count_include_pad } => count_include_pad,
        PoolKind::Max => return max_pool_rule(b, params, node, g),
    };
    let mut divisors = Vec::with_capacity(oh * ow);
    for oy in 0..oh {
        for ox in 0..ow {
            let rows = taps(params, 0, oy, h, count_include_pad);
            let columns = taps(params, 1, ox, width, count_include_pad);
            divisors.push((rows * columns).max(1) as f64);
        }
    }
    let divisor_tensor = Tensor {
        shape: vec![oh, ow],
        data: divisors,
    };
    let divisor = b.add(PrimOp::Constant(Constant::Dense(divisor_tensor)), &[])?;
    let averaged = b.div(g, divisor)?;
    let ones = b.splat(&[c, 1, params.kernel[0], params.kernel[1]], 1.0)?;
    let scatter = ConvTranspose2dParams {
        stride: params.stride,
        padding: params.padding,
        dilation: params.dilation,
        groups: c,
        output_size: [h, width],
    };
    Ok(vec![Some(b.add(
        PrimOp::ConvTranspose2d(scatter),
        &[averaged, ones],
    )?)])
}

/// `y = max_pool(x)`: each window's gradient goes to the tap PyTorch's kernel picks (the first
/// maximum in row-major window order, padding never): `max_pool2d_argmax` gives its flat index
/// into the input, and `scatter_add` adds every window's `g` at its index, as PyTorch's
/// `max_pool2d_with_indices_backward` does. The only saved intermediate is one index per
/// output element, where unfolding the windows costs `K` values per output element.
///
/// Int64 tensors travel as f32 in the runtime, exact below 2^24, so an input with more
/// elements is split into groups of whole `[H, W]` planes, each scattered on its own.
fn max_pool_rule(
    b: &mut GradientBuilder,
    params: &Pool2dParams,
    node: &ForwardNode,
    g: PrimNodeId,
) -> Result<OperandGradients, AutodiffError> {
    let x = node.operands[0];
    let [n, c, h, width] = rank4(&b.shape(x));
    let [_, _, oh, ow] = rank4(&b.shape(g));
    let (planes, plane_len) = (n * c, h * width);
    let planes_per_group = (EXACT_INDICES / plane_len.max(1)).max(1);
    if planes <= planes_per_group {
        return Ok(vec![Some(scatter_to_argmax(b, params, x, g)?)]);
    }
    if plane_len > EXACT_INDICES {
        return Err(not_differentiable(
            node.op,
            "one input plane has more than 2^24 elements, beyond exact run-time indices",
        ));
    }
    let x_planes = b.reshape(x, &[planes, 1, h, width])?;
    let g_planes = b.reshape(g, &[planes, 1, oh, ow])?;
    let mut parts = Vec::new();
    for start in (0..planes).step_by(planes_per_group) {
        let end = (start + planes_per_group).min(planes);
        let x_part = b.slice(x_planes, 0, start, end)?;
        let g_part = b.slice(g_planes, 0, start, end)?;
        parts.push(scatter_to_argmax(b, params, x_part, g_part)?);
    }
    let joined = b.add(PrimOp::Concat { axis: 0 }, &parts)?;
    Ok(vec![Some(b.reshape(joined, &[n, c, h, width])?)])
}

/// The most elements whose flat indices f32 holds exactly.
const EXACT_INDICES: usize = 1 << 24;

/// `scatter_add(g, argmax(x))` into zeros shaped like `x`.
fn scatter_to_argmax(
    b: &mut GradientBuilder,
    params: &Pool2dParams,
    x: PrimNodeId,
    g: PrimNodeId,
) -> Result<PrimNodeId, AutodiffError> {
    let x_shape = b.shape(x);
    let argmax = b.add(PrimOp::MaxPool2dArgmax(params.clone()), &[x])?;
    let outputs: usize = b.shape(g).iter().product();
    let indices = b.reshape(argmax, &[outputs])?;
    let updates = b.reshape(g, &[outputs])?;
    let rows = x_shape.iter().product();
    let scattered = b.add(PrimOp::ScatterAdd { rows }, &[updates, indices])?;
    b.reshape(scattered, &x_shape)
}

/// How many taps of the window at `out` along `axis` fall inside the input (or inside the
/// padded input, whose right padding counts), as the interpreter counts them.
fn taps(params: &Pool2dParams, axis: usize, out: usize, size: usize, padded: bool) -> usize {
    let pad = params.padding[axis] as isize;
    let start = (out * params.stride[axis]) as isize - pad;
    (0..params.kernel[axis])
        .map(|tap| start + (tap * params.dilation[axis]) as isize)
        .filter(|at| {
            if padded {
                *at < size as isize + pad
            } else {
                *at >= 0 && *at < size as isize
            }
        })
        .count()
}

fn rank4(shape: &[usize]) -> [usize; 4] {
    <[usize; 4]>::try_from(shape)
        .expect("internal error (a bug in nnc): a windowed op has rank-4 operands")
}
