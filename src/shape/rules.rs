//! One shape rule per op: given the operands' types, the output type and the parameter tensors,
//! or an error that shows the formula with its numbers.

use super::layout::{broadcast, concat, flatten, matmul, reshape};
use super::window::{conv2d, pool2d};
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

    pub(super) fn mismatch(&self, message: String, hint: Option<&str>) -> ShapeError {
        ShapeError::Mismatch {
            path: self.path.clone(),
            span: self.span,
            message,
            hint: hint.map(str::to_string),
        }
    }

    pub(super) fn rank(&self, op: &str, expected: &str, shape: &[Dim]) -> ShapeError {
        ShapeError::Rank {
            path: self.path.clone(),
            span: self.span,
            op: op.to_string(),
            expected: expected.to_string(),
            found: self.format(shape),
        }
    }

    /// The size of a dim that must be known, or an error naming what it is.
    pub(super) fn known(&self, dim: Dim, op: &str, what: &str) -> Result<u64, ShapeError> {
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
    pub(super) fn axis(&self, dim: i64, rank: usize, op: &str) -> Result<usize, ShapeError> {
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

pub(super) type RuleResult = Result<(TensorInfo, Vec<ParamTensor>), ShapeError>;

pub(super) fn float(shape: Shape) -> TensorInfo {
    TensorInfo {
        shape,
        element_type: ElementType::Float32,
    }
}

pub(super) fn param(name: &str, shape: Vec<u64>) -> ParamTensor {
    ParamTensor {
        name: name.to_string(),
        shape,
        trainable: true,
    }
}

pub(super) fn buffer(name: &str, shape: Vec<u64>) -> ParamTensor {
    ParamTensor {
        name: name.to_string(),
        shape,
        trainable: false,
    }
}

/// The shape rule of every op except `Scan`, whose body the driver infers.
pub(super) fn infer(op: &Op, inputs: &[&TensorInfo], context: &RuleContext) -> RuleResult {
    let op_name = op.name();
    // Embedding reads ids; a loss checks its own operands (cross_entropy reads class ids).
    if !matches!(op, Op::Input { .. } | Op::Embedding { .. } | Op::Loss(_)) {
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
        Op::Loss(attrs) => super::loss::loss(attrs, inputs, context),
        Op::Scan { .. } => unreachable!("the shape driver infers scans itself"),
    }
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
