//! Shape rules of sliding windows: convolution, transposed convolution and pooling, with the
//! output-size formula and its rule for inexact division.

use super::rules::{float, param, RuleContext, RuleResult};
use super::{ShapeError, TensorInfo};
use crate::ir::*;

/// Output size of a convolution or pooling window along one axis, with the rule for inexact
/// division: PyTorch floors, which silently drops the last input rows. Dropping rows of padding,
/// or no more rows than the stride skips between windows anyway, is how ResNet's stride-2 layers
/// work and is accepted; dropping real input beyond that is an error showing the formula.
pub fn conv_output_size(
    input: u64,
    pad: u64,
    kernel: u64,
    stride: u64,
    dilation: u64,
    ceil_mode: bool,
) -> Result<u64, (String, String, bool)> {
    // Saturating: a huge window is reported as larger than the input, not overflowed.
    let effective = dilation.saturating_mul(kernel - 1).saturating_add(1);
    let dilation_text = if dilation == 1 {
        String::new()
    } else {
        format!("{dilation}*")
    };
    let kernel_text = if dilation == 1 {
        kernel.to_string()
    } else {
        format!("({kernel}-1) - 1")
    };
    let formula_head = format!("({input} + 2*{pad} - {dilation_text}{kernel_text})/{stride} + 1");
    let padded = input + 2 * pad;
    // Ceil mode, as PyTorch's pooling_output_shape: round up, but the last window must start
    // inside the input or the left padding. It may be larger than the padded input.
    if ceil_mode && padded + stride > effective {
        let mut size = (padded + stride - 1 - effective) / stride + 1;
        if (size - 1) * stride >= input + pad {
            size -= 1;
        }
        if size >= 1 {
            return Ok(size);
        }
    }
    if padded < effective {
        let hint = format!("the window ({effective}) is larger than the padded input ({padded}); use a smaller kernel or more padding");
        return Err((
            format!(
                "{formula_head} = {}",
                (padded as f64 - effective as f64) / stride as f64 + 1.0
            ),
            hint,
            false,
        ));
    }
    let span = padded - effective;
    let remainder = span % stride;
    if remainder == 0 {
        return Ok(span / stride + 1);
    }
    let dropped_real_rows = remainder.saturating_sub(pad);
    let stride_gap = stride.saturating_sub(effective);
    if dropped_real_rows > stride_gap {
        let exact = span as f64 / stride as f64 + 1.0;
        let hint = format!(
            "the last {dropped_real_rows} input row(s) would never be read; change padding, kernel or stride so that every input row is read"
        );
        return Err((format!("{formula_head} = {exact}"), hint, true));
    }
    Ok(span / stride + 1)
}

/// Pooling uses the same formula; kept as its own name for the reports and docs.
pub fn pool_output_size(
    input: u64,
    pad: u64,
    kernel: u64,
    stride: u64,
    dilation: u64,
    ceil_mode: bool,
) -> Result<u64, (String, String, bool)> {
    conv_output_size(input, pad, kernel, stride, dilation, ceil_mode)
}

fn window_error(
    context: &RuleContext,
    (formula, hint, non_integer): (String, String, bool),
    axis: usize,
) -> ShapeError {
    let axis_name = if axis == 0 {
        "output height"
    } else {
        "output width"
    };
    let formula = format!("{axis_name}: {formula}");
    if non_integer {
        ShapeError::NonIntegerOutput {
            path: context.path.clone(),
            span: context.span,
            formula,
            hint,
        }
    } else {
        ShapeError::EmptyOutput {
            path: context.path.clone(),
            span: context.span,
            formula,
            hint,
        }
    }
}

fn spatial(shape: &[Dim], op: &str, context: &RuleContext) -> Result<(u64, [u64; 2]), ShapeError> {
    if shape.len() != 4 {
        return Err(context.rank(op, "[N, C, H, W]", shape));
    }
    let channels = context.known(shape[1], op, "the channel dim")?;
    let height = context.known(shape[2], op, "the height")?;
    let width = context.known(shape[3], op, "the width")?;
    Ok((channels, [height, width]))
}

pub(super) fn conv2d(
    attrs: &Conv2dAttrs,
    input: &TensorInfo,
    context: &RuleContext,
    transposed: bool,
) -> RuleResult {
    let op = if transposed {
        "conv_transpose2d"
    } else {
        "conv2d"
    };
    let (channels, size) = spatial(&input.shape, op, context)?;
    for (count, what) in [
        (channels, "input channels"),
        (attrs.out_channels, "output channels"),
    ] {
        if count % attrs.groups != 0 {
            return Err(context.mismatch(
                format!(
                    "{what} ({count}) are not divisible by groups ({})",
                    attrs.groups
                ),
                Some("groups must divide both the input and the output channels"),
            ));
        }
    }
    let mut out = [0u64; 2];
    for axis in 0..2 {
        let (kernel, stride, dilation) =
            (attrs.kernel[axis], attrs.stride[axis], attrs.dilation[axis]);
        out[axis] = if transposed {
            let Padding::Explicit(pad) = attrs.padding else {
                unreachable!("elaboration rejects same padding here")
            };
            // Saturating: an absurd size fails the output-size check instead of wrapping.
            let grown = (size[axis] - 1)
                .saturating_mul(stride)
                .saturating_add(dilation.saturating_mul(kernel - 1))
                .saturating_add(attrs.output_padding[axis] + 1);
            if grown <= 2 * pad[axis] {
                let formula = format!(
                    "({} - 1)*{stride} - 2*{} + {dilation}*({kernel} - 1) + {} + 1 = {}",
                    size[axis],
                    pad[axis],
                    attrs.output_padding[axis],
                    grown as i64 - 2 * pad[axis] as i64
                );
                let hint = "reduce the padding".to_string();
                return Err(window_error(context, (formula, hint, false), axis));
            }
            grown - 2 * pad[axis]
        } else {
            match attrs.padding {
                Padding::Same => size[axis].div_ceil(stride),
                Padding::Explicit(pad) => {
                    conv_output_size(size[axis], pad[axis], kernel, stride, dilation, false)
                        .map_err(|(formula, mut hint, non_integer)| {
                            let fix = (pad[axis] + 1..=pad[axis] + stride.min(64)).find(|pad| {
                                conv_output_size(size[axis], *pad, kernel, stride, dilation, false)
                                    .is_ok()
                            });
                            if let (true, Some(fix)) = (non_integer, fix) {
                                hint.push_str(&format!(" (pad = {fix} does)"));
                            }
                            window_error(context, (formula, hint, non_integer), axis)
                        })?
                }
            }
        };
    }
    let weight = if transposed {
        vec![
            channels,
            attrs.out_channels / attrs.groups,
            attrs.kernel[0],
            attrs.kernel[1],
        ]
    } else {
        vec![
            attrs.out_channels,
            channels / attrs.groups,
            attrs.kernel[0],
            attrs.kernel[1],
        ]
    };
    let mut params = vec![param("weight", weight)];
    if attrs.bias {
        params.push(param("bias", vec![attrs.out_channels]));
    }
    let shape = vec![
        input.shape[0],
        Dim::Known(attrs.out_channels),
        Dim::Known(out[0]),
        Dim::Known(out[1]),
    ];
    Ok((float(shape), params))
}

pub(super) fn pool2d(
    op: &str,
    attrs: &Pool2dAttrs,
    input: &TensorInfo,
    context: &RuleContext,
) -> RuleResult {
    let (_, size) = spatial(&input.shape, op, context)?;
    let mut out = [0u64; 2];
    for axis in 0..2 {
        out[axis] = pool_output_size(
            size[axis],
            attrs.padding[axis],
            attrs.kernel[axis],
            attrs.stride[axis],
            attrs.dilation[axis],
            attrs.ceil_mode,
        )
        .map_err(|(formula, mut hint, non_integer)| {
            if non_integer {
                hint.push_str(", or use ceil = true");
            }
            window_error(context, (formula, hint, non_integer), axis)
        })?;
    }
    let shape = input.shape[..2]
        .iter()
        .copied()
        .chain(out.map(Dim::Known))
        .collect();
    Ok((float(shape), vec![]))
}
