//! One shape rule per op: given the operands' types, the output type and the parameter tensors,
//! or an error that shows the formula with its numbers.

use super::{ParamTensor, ShapeError, TensorInfo};
use crate::ir::*;
use crate::syntax::Span;

pub(super) struct RuleContext<'a> {
    pub path: String,
    pub span: Span,
    pub network: &'a Network,
}

impl RuleContext<'_> {
    pub fn format(&self, shape: &[Dim]) -> String {
        self.network.format_shape(shape)
    }

    fn mismatch(&self, message: String, hint: Option<&str>) -> ShapeError {
        ShapeError::Mismatch {
            path: self.path.clone(),
            span: self.span,
            message,
            hint: hint.map(str::to_string),
        }
    }

    fn rank(&self, op: &str, expected: &str, shape: &[Dim]) -> ShapeError {
        ShapeError::Rank {
            path: self.path.clone(),
            span: self.span,
            op: op.to_string(),
            expected: expected.to_string(),
            found: self.format(shape),
        }
    }

    /// The size of a dim that must be known, or an error naming what it is.
    fn known(&self, dim: Dim, op: &str, what: &str) -> Result<u64, ShapeError> {
        match dim {
            Dim::Known(size) => Ok(size),
            Dim::Symbolic(symbol) => Err(ShapeError::Symbolic {
                path: self.path.clone(),
                span: self.span,
                op: op.to_string(),
                what: what.to_string(),
                symbol: self.network.symbol(symbol).name.clone(),
            }),
        }
    }

    /// A possibly negative dim index, checked against the rank.
    fn axis(&self, dim: i64, rank: usize, op: &str) -> Result<usize, ShapeError> {
        let resolved = if dim < 0 { dim + rank as i64 } else { dim };
        if resolved < 0 || resolved >= rank as i64 {
            return Err(self.mismatch(
                format!("`{op}` uses dim {dim}, but the input has only {rank} dims"),
                Some(&format!(
                    "valid dims are {} to {}",
                    -(rank as i64),
                    rank as i64 - 1
                )),
            ));
        }
        Ok(resolved as usize)
    }
}

type RuleResult = Result<(TensorInfo, Vec<ParamTensor>), ShapeError>;

fn float(shape: Shape) -> TensorInfo {
    TensorInfo {
        shape,
        element_type: ElementType::Float32,
    }
}

fn param(name: &str, shape: Vec<u64>) -> ParamTensor {
    ParamTensor {
        name: name.to_string(),
        shape,
        trainable: true,
    }
}

fn buffer(name: &str, shape: Vec<u64>) -> ParamTensor {
    ParamTensor {
        name: name.to_string(),
        shape,
        trainable: false,
    }
}

/// The shape rule of every op except `Scan`, whose body the driver infers.
pub(super) fn infer(op: &Op, inputs: &[&TensorInfo], context: &RuleContext) -> RuleResult {
    let op_name = op.name();
    if !matches!(op, Op::Input { .. } | Op::Embedding { .. }) {
        if let Some(input) = inputs
            .iter()
            .find(|input| input.element_type == ElementType::Int64)
        {
            return Err(context.mismatch(
                format!(
                    "`{op_name}` needs a float tensor, but its input {} holds integers",
                    context.format(&input.shape)
                ),
                Some("integer inputs (token ids, labels) go through `embedding` first"),
            ));
        }
    }
    let same = || Ok((inputs[0].clone(), Vec::new()));
    match op {
        Op::Input {
            shape,
            element_type,
            ..
        } => Ok((
            TensorInfo {
                shape: shape.clone(),
                element_type: *element_type,
            },
            vec![],
        )),
        Op::Conv2d(attrs) => conv2d(attrs, inputs[0], context, false),
        Op::ConvTranspose2d(attrs) => conv2d(attrs, inputs[0], context, true),
        Op::MaxPool2d(attrs) | Op::AvgPool2d(attrs) => pool2d(&op_name, attrs, inputs[0], context),
        Op::AdaptiveAvgPool2d { output } => {
            let shape = &inputs[0].shape;
            if shape.len() != 4 {
                return Err(context.rank(&op_name, "[N, C, H, W]", shape));
            }
            Ok((
                float(vec![
                    shape[0],
                    shape[1],
                    Dim::Known(output[0]),
                    Dim::Known(output[1]),
                ]),
                vec![],
            ))
        }
        Op::Dense {
            out_features,
            bias,
            in_features,
        } => dense(*out_features, *bias, *in_features, inputs[0], context),
        Op::Flatten { start_dim, end_dim } => flatten(*start_dim, *end_dim, inputs[0], context),
        Op::Reshape { target } => reshape(target, inputs[0], context),
        Op::Permute { dims } => {
            let shape = &inputs[0].shape;
            if dims.len() != shape.len() {
                return Err(context.mismatch(
                    format!(
                        "permute lists {} dims, but the input {} has {}",
                        dims.len(),
                        context.format(shape),
                        shape.len()
                    ),
                    None,
                ));
            }
            Ok((float(dims.iter().map(|dim| shape[*dim]).collect()), vec![]))
        }
        Op::Transpose { dim0, dim1 } => {
            let mut shape = inputs[0].shape.clone();
            let first = context.axis(*dim0, shape.len(), &op_name)?;
            let second = context.axis(*dim1, shape.len(), &op_name)?;
            shape.swap(first, second);
            Ok((float(shape), vec![]))
        }
        Op::Unary(_) | Op::Scalar { .. } | Op::Dropout { .. } | Op::Identity | Op::RandomNormal => {
            same()
        }
        Op::Softmax { dim, .. } => {
            context.axis(*dim, inputs[0].shape.len(), &op_name)?;
            same()
        }
        Op::CausalMask => {
            if inputs[0].shape.len() < 2 {
                return Err(context.rank(
                    &op_name,
                    "at least 2 dims [..., T, S]",
                    &inputs[0].shape,
                ));
            }
            same()
        }
        Op::Binary(binary) => {
            let shape = broadcast(&inputs[0].shape, &inputs[1].shape, binary.name(), context)?;
            Ok((float(shape), vec![]))
        }
        Op::BatchNorm { affine, .. } => {
            let shape = &inputs[0].shape;
            if shape.len() < 2 {
                return Err(context.rank(&op_name, "at least [N, C]", shape));
            }
            let channels = context.known(shape[1], &op_name, "the channel dim")?;
            let mut params = Vec::new();
            if *affine {
                params.push(param("weight", vec![channels]));
                params.push(param("bias", vec![channels]));
            }
            params.push(buffer("running_mean", vec![channels]));
            params.push(buffer("running_var", vec![channels]));
            Ok((inputs[0].clone(), params))
        }
        Op::LayerNorm {
            normalized_dims,
            affine,
            ..
        } => {
            let shape = &inputs[0].shape;
            if shape.len() < *normalized_dims {
                return Err(context.rank(
                    &op_name,
                    &format!("at least {normalized_dims} dims"),
                    shape,
                ));
            }
            let mut normalized = Vec::new();
            for dim in &shape[shape.len() - normalized_dims..] {
                normalized.push(context.known(*dim, &op_name, "a normalized dim")?);
            }
            let params = if *affine {
                vec![
                    param("weight", normalized.clone()),
                    param("bias", normalized),
                ]
            } else {
                vec![]
            };
            Ok((inputs[0].clone(), params))
        }
        Op::Embedding {
            num_embeddings,
            dim,
        } => {
            if inputs[0].element_type != ElementType::Int64 {
                return Err(context.mismatch(
                    "`embedding` reads integer indices, but its input holds floats".into(),
                    Some("declare the input as `input tokens: [N, T] int`"),
                ));
            }
            let mut shape = inputs[0].shape.clone();
            shape.push(Dim::Known(*dim));
            Ok((
                float(shape),
                vec![param("weight", vec![*num_embeddings, *dim])],
            ))
        }
        Op::Concat { dim } => concat(*dim, inputs, context),
        Op::Slice { dim, start, end } => {
            let mut shape = inputs[0].shape.clone();
            let axis = context.axis(*dim, shape.len(), &op_name)?;
            let size = context.known(shape[axis], &op_name, "the sliced dim")? as i64;
            let clamp = |index: i64| {
                if index < 0 {
                    (index + size).max(0)
                } else {
                    index.min(size)
                }
            };
            let (first, last) = (clamp(*start), clamp(*end));
            if last <= first {
                return Err(context.mismatch(
                    format!("slice {start}..{end} of a dim of size {size} is empty"),
                    Some("split sizes must add up to at most the dim's size"),
                ));
            }
            shape[axis] = Dim::Known((last - first) as u64);
            Ok((float(shape), vec![]))
        }
        Op::Select { dim, index } => {
            let mut shape = inputs[0].shape.clone();
            let axis = context.axis(*dim, shape.len(), &op_name)?;
            // The first and the last element exist at any size, so a symbolic dim (a sequence
            // of length T) allows index 0 and -1: `select(dim = 1, index = -1)` is the last step.
            let any_size = matches!(shape[axis], Dim::Symbolic(_)) && matches!(*index, 0 | -1);
            let size = if any_size {
                1
            } else {
                context.known(shape[axis], &op_name, "the selected dim")? as i64
            };
            if *index >= size || *index < -size {
                return Err(context.mismatch(
                    format!("index {index} is out of range for a dim of size {size}"),
                    None,
                ));
            }
            shape.remove(axis);
            Ok((float(shape), vec![]))
        }
        Op::MatMul => matmul(inputs[0], inputs[1], context),
        Op::Reduce { dims, keepdim, .. } => {
            let shape = &inputs[0].shape;
            let mut axes = Vec::new();
            for dim in dims {
                axes.push(context.axis(*dim, shape.len(), &op_name)?);
            }
            let reduce_all = axes.is_empty();
            let mut out = Vec::new();
            for (axis, dim) in shape.iter().enumerate() {
                if reduce_all || axes.contains(&axis) {
                    if *keepdim {
                        out.push(Dim::Known(1));
                    }
                } else {
                    out.push(*dim);
                }
            }
            Ok((float(out), vec![]))
        }
        Op::Recurrent(attrs) => recurrent(attrs, inputs[0], context),
        Op::Scan { .. } => unreachable!("the shape driver infers scans itself"),
    }
}

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

fn conv2d(
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

fn pool2d(op: &str, attrs: &Pool2dAttrs, input: &TensorInfo, context: &RuleContext) -> RuleResult {
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

fn dense(
    out_features: u64,
    bias: bool,
    in_features: Option<u64>,
    input: &TensorInfo,
    context: &RuleContext,
) -> RuleResult {
    let Some(last) = input.shape.last() else {
        return Err(context.rank("dense", "at least 1 dim [..., features]", &input.shape));
    };
    let features = context.known(*last, "dense", "its input features (the last dim)")?;
    if let Some(expected) = in_features {
        if expected != features {
            return Err(context.mismatch(
                format!(
                    "dense expects {expected} input features, but its input {} has {features}",
                    context.format(&input.shape)
                ),
                Some("check the layers before it, or drop `inputs =` to infer the size"),
            ));
        }
    }
    let mut shape = input.shape.clone();
    *shape.last_mut().expect("checked non-empty above") = Dim::Known(out_features);
    let mut params = vec![param("weight", vec![out_features, features])];
    if bias {
        params.push(param("bias", vec![out_features]));
    }
    Ok((float(shape), params))
}

fn flatten(start_dim: i64, end_dim: i64, input: &TensorInfo, context: &RuleContext) -> RuleResult {
    let shape = &input.shape;
    if shape.is_empty() {
        return Err(context.rank("flatten", "at least 1 dim", shape));
    }
    let start = context.axis(start_dim, shape.len(), "flatten")?;
    let end = context.axis(end_dim, shape.len(), "flatten")?;
    if start > end {
        return Err(context.mismatch(
            format!("flatten's start dim {start_dim} comes after its end dim {end_dim}"),
            None,
        ));
    }
    if start == end {
        return Ok((input.clone(), vec![]));
    }
    let mut merged: u64 = 1;
    for dim in &shape[start..=end] {
        let size = context.known(*dim, "flatten", "every flattened dim")?;
        merged = merged.saturating_mul(size);
    }
    let mut out: Shape = shape[..start].to_vec();
    out.push(Dim::Known(merged));
    out.extend_from_slice(&shape[end + 1..]);
    Ok((float(out), vec![]))
}

fn reshape(target: &[ReshapeDim], input: &TensorInfo, context: &RuleContext) -> RuleResult {
    let shape = &input.shape;
    let mut input_known: u64 = 1;
    let mut input_symbols: Vec<SymbolId> = Vec::new();
    for dim in shape {
        match dim {
            Dim::Known(size) => input_known = input_known.saturating_mul(*size),
            Dim::Symbolic(symbol) => input_symbols.push(*symbol),
        }
    }
    let mut out = Vec::new();
    let mut target_known: u64 = 1;
    let mut target_symbols = Vec::new();
    let mut inferred_at = None;
    for (position, dim) in target.iter().enumerate() {
        let resolved = match dim {
            ReshapeDim::Copy => *shape.get(position).ok_or_else(|| {
                context.mismatch(
                    format!(
                        "reshape copies dim {position} (0), but the input has only {} dims",
                        shape.len()
                    ),
                    None,
                )
            })?,
            ReshapeDim::Size(size) => Dim::Known(*size),
            ReshapeDim::Symbol(symbol) => Dim::Symbolic(*symbol),
            ReshapeDim::Infer => {
                inferred_at = Some(position);
                Dim::Known(1)
            }
        };
        match resolved {
            Dim::Known(size) => target_known = target_known.saturating_mul(size),
            Dim::Symbolic(symbol) => target_symbols.push(symbol),
        }
        out.push(resolved);
    }
    input_symbols.sort();
    target_symbols.sort();
    if input_symbols != target_symbols {
        return Err(context.mismatch(
            format!(
                "reshape from {} must keep the symbolic dims in the target",
                context.format(shape)
            ),
            Some("keep a symbolic dim in place with 0, or name it (for example `N`)"),
        ));
    }
    let target_text = || {
        let parts: Vec<String> = target
            .iter()
            .map(|dim| match dim {
                ReshapeDim::Copy => "0".into(),
                ReshapeDim::Infer => "-1".into(),
                ReshapeDim::Size(size) => size.to_string(),
                ReshapeDim::Symbol(symbol) => context.network.symbol(*symbol).name.clone(),
            })
            .collect();
        parts.join(", ")
    };
    // Symbolic dims appear on both sides (checked above), so only the known sizes must agree.
    let not_counting = if input_symbols.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = input_symbols
            .iter()
            .map(|symbol| context.network.symbol(*symbol).name.as_str())
            .collect();
        format!(" (not counting {})", names.join(", "))
    };
    match inferred_at {
        Some(position) => {
            if input_known % target_known != 0 {
                return Err(context.mismatch(
                    format!(
                        "cannot reshape {} to ({}): its {input_known} elements{not_counting} are not divisible by {target_known}",
                        context.format(shape),
                        target_text()
                    ),
                    Some("the known target dims must divide the input's element count"),
                ));
            }
            out[position] = Dim::Known(input_known / target_known);
        }
        None if input_known != target_known => {
            return Err(context.mismatch(
                format!(
                    "cannot reshape {} to ({}): the input has {input_known} elements{not_counting}, the target {target_known}",
                    context.format(shape),
                    target_text()
                ),
                Some("the target must hold as many elements as the input; use -1 for one dim to infer it"),
            ));
        }
        None => {}
    }
    Ok((float(out), vec![]))
}

fn broadcast(
    left: &[Dim],
    right: &[Dim],
    op: &str,
    context: &RuleContext,
) -> Result<Shape, ShapeError> {
    let rank = left.len().max(right.len());
    let mut out = Vec::with_capacity(rank);
    for position in 0..rank {
        let pick = |shape: &[Dim]| {
            let offset = rank - shape.len();
            if position < offset {
                Dim::Known(1)
            } else {
                shape[position - offset]
            }
        };
        let (a, b) = (pick(left), pick(right));
        let dim = match (a, b) {
            _ if a == b => a,
            (Dim::Known(1), other) | (other, Dim::Known(1)) => other,
            _ => {
                let hint = if op == "add" {
                    "a skip connection needs matching shapes: add a projection (for example a 1x1 conv2d) on the shortcut"
                } else {
                    "shapes broadcast when each dim is equal or 1 (aligned from the right)"
                };
                return Err(context.mismatch(
                    format!(
                        "cannot {op} {} and {}: dim {position} is {} vs {}",
                        context.format(left),
                        context.format(right),
                        context.network.format_dim(a),
                        context.network.format_dim(b)
                    ),
                    Some(hint),
                ));
            }
        };
        out.push(dim);
    }
    Ok(out)
}

fn concat(dim: i64, inputs: &[&TensorInfo], context: &RuleContext) -> RuleResult {
    let first = &inputs[0].shape;
    let axis = context.axis(dim, first.len(), "concat")?;
    let mut total: u64 = 0;
    for (index, input) in inputs.iter().enumerate() {
        let shape = &input.shape;
        if shape.len() != first.len() {
            return Err(context.mismatch(
                format!(
                    "concat input {index} has shape {}, but input 0 has {}",
                    context.format(shape),
                    context.format(first)
                ),
                None,
            ));
        }
        for position in 0..shape.len() {
            if position != axis && shape[position] != first[position] {
                let what = match (shape.len(), position) {
                    (4, 2) | (4, 3) => "spatial size",
                    _ => "size",
                };
                return Err(context.mismatch(
                    format!(
                        "concat along dim {axis} needs equal {what}s elsewhere: input {index} has shape {}, input 0 has {}",
                        context.format(shape),
                        context.format(first)
                    ),
                    Some("branches joined by concat must keep the same height and width (check strides and padding)"),
                ));
            }
        }
        total += context.known(shape[axis], "concat", "the concatenated dim")?;
    }
    let mut shape = first.clone();
    shape[axis] = Dim::Known(total);
    Ok((float(shape), vec![]))
}

fn matmul(left: &TensorInfo, right: &TensorInfo, context: &RuleContext) -> RuleResult {
    let (a, b) = (&left.shape, &right.shape);
    if a.len() < 2 || b.len() < 2 {
        let short = if a.len() < 2 { a } else { b };
        return Err(context.rank("matmul", "at least 2 dims on each side", short));
    }
    let (m, k_left) = (a[a.len() - 2], a[a.len() - 1]);
    let (k_right, p) = (b[b.len() - 2], b[b.len() - 1]);
    if k_left != k_right {
        return Err(context.mismatch(
            format!(
                "matmul of {} and {}: inner dims {} and {} differ",
                context.format(a),
                context.format(b),
                context.network.format_dim(k_left),
                context.network.format_dim(k_right)
            ),
            Some("transpose one side, for example `transpose(k, -2, -1)`"),
        ));
    }
    let mut shape = broadcast(&a[..a.len() - 2], &b[..b.len() - 2], "matmul", context)?;
    shape.push(m);
    shape.push(p);
    Ok((float(shape), vec![]))
}

fn recurrent(attrs: &RecurrentAttrs, input: &TensorInfo, context: &RuleContext) -> RuleResult {
    let op = attrs.kind.name();
    let shape = &input.shape;
    if shape.len() != 3 {
        return Err(context.rank(op, "a sequence [N, T, features]", shape));
    }
    let features = context.known(shape[2], op, "its input features")?;
    let directions = if attrs.bidirectional { 2 } else { 1 };
    let gates = attrs.kind.gate_count() * attrs.hidden;
    let mut params = Vec::new();
    for layer in 0..attrs.layers {
        let layer_input = if layer == 0 {
            features
        } else {
            directions * attrs.hidden
        };
        for suffix in if attrs.bidirectional {
            vec!["", "_reverse"]
        } else {
            vec![""]
        } {
            params.push(param(
                &format!("weight_ih_l{layer}{suffix}"),
                vec![gates, layer_input],
            ));
            params.push(param(
                &format!("weight_hh_l{layer}{suffix}"),
                vec![gates, attrs.hidden],
            ));
            if attrs.bias {
                params.push(param(&format!("bias_ih_l{layer}{suffix}"), vec![gates]));
                params.push(param(&format!("bias_hh_l{layer}{suffix}"), vec![gates]));
            }
        }
    }
    let out = Dim::Known(directions * attrs.hidden);
    let shape = if attrs.sequence {
        vec![shape[0], shape[1], out]
    } else {
        vec![shape[0], out]
    };
    Ok((float(shape), params))
}
