//! The shape rule of every primitive op: the result type from the operands' types, or an error.
//! The rules restate the semantics documented on [`PrimOp`]; lowering only builds graphs that
//! pass them, so an error here while lowering is a bug in nnc, while graphs built by hand (tests,
//! later passes) get a message saying which rule failed.

use super::*;

/// A primitive op applied to operands it does not accept.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("`{op}`: {message}")]
pub struct PrimShapeError {
    pub op: &'static str,
    pub message: String,
}

/// The type of `op` applied to operands of `operands`' types.
pub fn infer_type(op: &PrimOp, operands: &[&TensorType]) -> Result<TensorType, PrimShapeError> {
    let fail = |message: String| PrimShapeError {
        op: op.name(),
        message,
    };
    match op.arity() {
        Some(arity) if arity != operands.len() => {
            return Err(fail(format!(
                "takes {arity} operands, found {}",
                operands.len()
            )))
        }
        None if operands.is_empty() => return Err(fail("takes at least one operand".into())),
        _ => {}
    }
    let float_operands = || -> Result<(), PrimShapeError> {
        match operands
            .iter()
            .position(|ty| ty.element_type != ElementType::Float32)
        {
            Some(position) => Err(fail(format!("operand {position} must be a float tensor"))),
            None => Ok(()),
        }
    };
    let same = || TensorType::float(operands[0].shape.clone());
    match op {
        PrimOp::Input {
            shape,
            element_type,
            ..
        } => Ok(TensorType {
            shape: shape.clone(),
            element_type: *element_type,
        }),
        PrimOp::Parameter { shape, .. }
        | PrimOp::RandomNormal { shape, .. }
        | PrimOp::RandomUniform { shape, .. } => Ok(TensorType::float(shape.clone())),
        PrimOp::Constant(constant) => {
            if let Constant::Dense(tensor) = constant {
                if tensor.shape.iter().product::<usize>() != tensor.data.len() {
                    return Err(fail("its data does not fill its shape".into()));
                }
            }
            Ok(TensorType::float(constant.shape().to_vec()))
        }
        PrimOp::Unary(_) => float_operands().map(|()| same()),
        PrimOp::Binary(_) => {
            float_operands()?;
            broadcast(&operands[0].shape, &operands[1].shape)
                .map(TensorType::float)
                .map_err(fail)
        }
        PrimOp::MatMul => {
            float_operands()?;
            matmul(&operands[0].shape, &operands[1].shape).map_err(fail)
        }
        PrimOp::Conv2d(params) => {
            float_operands()?;
            conv2d(params, &operands[0].shape, &operands[1].shape).map_err(fail)
        }
        PrimOp::Conv2dWeightGradient(params) => {
            float_operands()?;
            conv2d_weight_gradient(params, &operands[0].shape, &operands[1].shape).map_err(fail)
        }
        PrimOp::ConvTranspose2d(params) => {
            float_operands()?;
            conv_transpose2d(params, &operands[0].shape, &operands[1].shape).map_err(fail)
        }
        PrimOp::Pool2d(params) => {
            float_operands()?;
            pool2d(params, &operands[0].shape).map_err(fail)
        }
        PrimOp::MaxPool2dArgmax(params) => {
            float_operands()?;
            if params.kind != PoolKind::Max {
                return Err(fail("the window must be a max pooling".into()));
            }
            let shape = pool2d(params, &operands[0].shape).map_err(fail)?.shape;
            Ok(TensorType {
                shape,
                element_type: ElementType::Int64,
            })
        }
        PrimOp::Reduce { axes, keepdim, .. } => {
            float_operands()?;
            reduce(axes, *keepdim, &operands[0].shape).map_err(fail)
        }
        PrimOp::Reshape { shape } => {
            let from: usize = operands[0].shape.iter().product();
            if from != shape.iter().product::<usize>() {
                return Err(fail(format!(
                    "cannot reshape {:?} to {shape:?}: element counts differ",
                    operands[0].shape
                )));
            }
            Ok(retyped(operands[0], shape.clone()))
        }
        PrimOp::Transpose { perm } => {
            let rank = operands[0].shape.len();
            let mut sorted = perm.clone();
            sorted.sort();
            if sorted != (0..rank).collect::<Vec<_>>() {
                return Err(fail(format!("{perm:?} is not a permutation of 0..{rank}")));
            }
            let shape = perm.iter().map(|axis| operands[0].shape[*axis]).collect();
            Ok(retyped(operands[0], shape))
        }
        PrimOp::Slice { axis, start, end } => {
            let shape = &operands[0].shape;
            let size = *shape
                .get(*axis)
                .ok_or_else(|| fail(format!("axis {axis} of a rank-{} tensor", shape.len())))?;
            if start >= end || *end > size {
                return Err(fail(format!("{start}..{end} of a dim of size {size}")));
            }
            let mut out = shape.clone();
            out[*axis] = end - start;
            Ok(retyped(operands[0], out))
        }
        PrimOp::Concat { axis } => concat(*axis, operands).map_err(fail),
        PrimOp::Gather => {
            let (table, indices) = (operands[0], operands[1]);
            if table.element_type != ElementType::Float32 || table.shape.is_empty() {
                return Err(fail("the table must be a float tensor [V, ...]".into()));
            }
            if indices.element_type != ElementType::Int64 {
                return Err(fail("the indices must be an int64 tensor".into()));
            }
            let mut shape = indices.shape.clone();
            shape.extend_from_slice(&table.shape[1..]);
            Ok(TensorType::float(shape))
        }
        PrimOp::ScatterAdd { rows } => scatter_add(*rows, operands[0], operands[1]).map_err(fail),
        PrimOp::Scan { body, axis, .. } => scan(body, *axis, operands).map_err(fail),
    }
}

/// NumPy broadcasting of two shapes.
pub(crate) fn broadcast(left: &[usize], right: &[usize]) -> Result<Vec<usize>, String> {
    let rank = left.len().max(right.len());
    let at = |shape: &[usize], position: usize| {
        let offset = rank - shape.len();
        if position < offset {
            1
        } else {
            shape[position - offset]
        }
    };
    (0..rank)
        .map(|position| match (at(left, position), at(right, position)) {
            (a, b) if a == b => Ok(a),
            (1, other) | (other, 1) => Ok(other),
            (a, b) => Err(format!(
                "{left:?} and {right:?} do not broadcast: dim {position} is {a} vs {b}"
            )),
        })
        .collect()
}

fn retyped(operand: &TensorType, shape: Vec<usize>) -> TensorType {
    TensorType {
        shape,
        element_type: operand.element_type,
    }
}

fn matmul(left: &[usize], right: &[usize]) -> Result<TensorType, String> {
    if left.len() < 2 || right.len() < 2 {
        return Err(format!(
            "operands {left:?} and {right:?} need at least 2 dims each"
        ));
    }
    let (m, k) = (left[left.len() - 2], left[left.len() - 1]);
    let (k_right, p) = (right[right.len() - 2], right[right.len() - 1]);
    if k != k_right {
        return Err(format!("inner dims of {left:?} and {right:?} differ"));
    }
    let mut shape = broadcast(&left[..left.len() - 2], &right[..right.len() - 2])?;
    shape.extend([m, p]);
    Ok(TensorType::float(shape))
}

fn check_window(stride: [usize; 2], dilation: [usize; 2], groups: usize) -> Result<(), String> {
    if stride.contains(&0) || dilation.contains(&0) || groups == 0 {
        return Err("stride, dilation and groups must be at least 1".into());
    }
    Ok(())
}

fn conv2d(params: &Conv2dParams, input: &[usize], weight: &[usize]) -> Result<TensorType, String> {
    check_window(params.stride, params.dilation, params.groups)?;
    let ([n, c, h, w], [o, c_per_group, kh, kw]) = (rank4(input)?, rank4(weight)?);
    if c % params.groups != 0 || o % params.groups != 0 || c_per_group * params.groups != c {
        return Err(format!(
            "input {input:?}, weight {weight:?} and groups {} do not agree",
            params.groups
        ));
    }
    let mut out = [0; 2];
    for (axis, (size, kernel)) in [(h, kh), (w, kw)].into_iter().enumerate() {
        let padded = size + params.padding[axis][0] + params.padding[axis][1];
        let window = params.dilation[axis] * (kernel.max(1) - 1) + 1;
        if kernel == 0 || padded < window {
            return Err(format!(
                "the window {window} exceeds the padded input {padded}"
            ));
        }
        out[axis] = (padded - window) / params.stride[axis] + 1;
    }
    Ok(TensorType::float(vec![n, o, out[0], out[1]]))
}

/// `[N, C, H, W]` and `[N, O, OH, OW]` -> `[O, C/groups, KH, KW]`, where `[OH, OW]` must be the
/// convolution's output size for that input and kernel.
fn conv2d_weight_gradient(
    params: &Conv2dWeightGradientParams,
    input: &[usize],
    output_gradient: &[usize],
) -> Result<TensorType, String> {
    let ([n, c, _, _], [n_gradient, o, _, _]) = (rank4(input)?, rank4(output_gradient)?);
    let groups = params.conv.groups.max(1);
    let [kh, kw] = params.kernel;
    let weight = [o, c / groups, kh, kw];
    let convolution = conv2d(&params.conv, input, &weight)?;
    if n != n_gradient || convolution.shape != output_gradient {
        return Err(format!(
            "the output gradient {output_gradient:?} is not the shape {:?} of the convolution of \
             {input:?} by a {kh}x{kw} kernel",
            convolution.shape
        ));
    }
    Ok(TensorType::float(weight.to_vec()))
}

fn conv_transpose2d(
    params: &ConvTranspose2dParams,
    input: &[usize],
    weight: &[usize],
) -> Result<TensorType, String> {
    check_window(params.stride, params.dilation, params.groups)?;
    let ([n, c, _, _], [c_weight, o_per_group, _, _]) = (rank4(input)?, rank4(weight)?);
    if c != c_weight || c % params.groups != 0 || params.output_size.contains(&0) {
        return Err(format!(
            "input {input:?}, weight {weight:?}, groups {} and output size {:?} do not agree",
            params.groups, params.output_size
        ));
    }
    let [oh, ow] = params.output_size;
    Ok(TensorType::float(vec![
        n,
        o_per_group * params.groups,
        oh,
        ow,
    ]))
}

fn rank4(shape: &[usize]) -> Result<[usize; 4], String> {
    <[usize; 4]>::try_from(shape).map_err(|_| format!("{shape:?} is not a rank-4 tensor"))
}

/// PyTorch's `pooling_output_shape`.
pub(crate) fn pool_output_size(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let window = dilation * (kernel.checked_sub(1)?) + 1;
    let span = (size + 2 * padding).checked_sub(window)?;
    let mut out = if ceil_mode {
        span.div_ceil(stride) + 1
    } else {
        span / stride + 1
    };
    if ceil_mode && (out - 1) * stride >= size + padding {
        out -= 1;
    }
    Some(out)
}

fn pool2d(params: &Pool2dParams, input: &[usize]) -> Result<TensorType, String> {
    check_window(params.stride, params.dilation, 1)?;
    let [n, c, h, w] = rank4(input)?;
    let mut out = [0; 2];
    for (axis, size) in [h, w].into_iter().enumerate() {
        out[axis] = pool_output_size(
            size,
            params.kernel[axis],
            params.stride[axis],
            params.padding[axis],
            params.dilation[axis],
            params.ceil_mode,
        )
        .filter(|out| *out > 0)
        .ok_or_else(|| format!("the window does not fit the input {input:?}"))?;
    }
    Ok(TensorType::float(vec![n, c, out[0], out[1]]))
}

fn reduce(axes: &[usize], keepdim: bool, input: &[usize]) -> Result<TensorType, String> {
    if axes.windows(2).any(|pair| pair[0] >= pair[1])
        || axes.iter().any(|axis| *axis >= input.len())
    {
        return Err(format!(
            "axes {axes:?} must be sorted, distinct dims of {input:?}"
        ));
    }
    let mut shape = Vec::new();
    for (axis, size) in input.iter().enumerate() {
        if !axes.contains(&axis) {
            shape.push(*size);
        } else if keepdim {
            shape.push(1);
        }
    }
    Ok(TensorType::float(shape))
}

fn concat(axis: usize, operands: &[&TensorType]) -> Result<TensorType, String> {
    let first = operands[0];
    if axis >= first.shape.len() {
        return Err(format!(
            "axis {axis} of a rank-{} tensor",
            first.shape.len()
        ));
    }
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for operand in operands {
        let same_elsewhere = operand.shape.len() == first.shape.len()
            && (0..shape.len()).all(|dim| dim == axis || operand.shape[dim] == first.shape[dim]);
        if !same_elsewhere || operand.element_type != first.element_type {
            return Err(format!(
                "operands {:?} and {:?} differ off axis {axis}",
                first.shape, operand.shape
            ));
        }
        shape[axis] += operand.shape[axis];
    }
    Ok(retyped(first, shape))
}

/// Updates `[I..., D...]` and indices `[I...]` -> `[rows, D...]`.
fn scatter_add(
    rows: usize,
    updates: &TensorType,
    indices: &TensorType,
) -> Result<TensorType, String> {
    if updates.element_type != ElementType::Float32 {
        return Err("the updates must be a float tensor".into());
    }
    if indices.element_type != ElementType::Int64 {
        return Err("the indices must be an int64 tensor".into());
    }
    if !updates.shape.starts_with(&indices.shape) {
        return Err(format!(
            "the updates {:?} must start with the indices' shape {:?}",
            updates.shape, indices.shape
        ));
    }
    let mut shape = vec![rows];
    shape.extend_from_slice(&updates.shape[indices.shape.len()..]);
    Ok(TensorType::float(shape))
}

fn scan(body: &ScanBody, axis: usize, operands: &[&TensorType]) -> Result<TensorType, String> {
    let inputs: Vec<&TensorType> = body
        .graph
        .inputs
        .iter()
        .map(|(_, id)| &body.graph.node(*id).ty)
        .collect();
    let states = body.sequence_count..body.sequence_count + body.state_count;
    if body.sequence_count == 0 || states.end > inputs.len() {
        return Err("a scan needs at least one sequence, and its body an input per operand".into());
    }
    let mut length = None;
    for (position, operand) in operands.iter().enumerate() {
        let mut expected = (*operand).clone();
        if position < body.sequence_count {
            let steps = *operand
                .shape
                .get(axis)
                .ok_or("a sequence lacks the scan axis")?;
            if steps == 0 || length.is_some_and(|length| length != steps) {
                return Err("sequences must have the same, non-zero length".into());
            }
            length = Some(steps);
            expected.shape.remove(axis);
        }
        if *inputs[position] != expected {
            return Err(format!(
                "body input {position} is {:?}, operand gives {expected:?}",
                inputs[position]
            ));
        }
    }
    let outputs: Vec<&TensorType> = body
        .graph
        .outputs
        .iter()
        .map(|(_, id)| &body.graph.node(*id).ty)
        .collect();
    if outputs.len() != body.state_count + 1 {
        return Err("the body must output each next state and then the step output".into());
    }
    for (state, input) in states.enumerate() {
        if outputs[state] != inputs[input] {
            return Err(format!(
                "state {state} changes type from one step to the next"
            ));
        }
    }
    let step = outputs[body.state_count];
    if axis > step.shape.len() {
        return Err(format!(
            "axis {axis} is beyond the step output {:?}",
            step.shape
        ));
    }
    let mut shape = step.shape.clone();
    shape.insert(axis, length.expect("at least one sequence was checked"));
    Ok(retyped(step, shape))
}
