//! The built-in layers: argument signatures and how each call becomes an [`Op`]. Arguments follow
//! PyTorch's names and defaults where PyTorch has the layer (`stride`, `dilation`, `groups`,
//! `bias`, `eps`, `momentum`), with `pad` for padding.

use super::args::{bind, BoundArgs};
use super::error::ElaborateError;
use super::value::{EvaluatedArg, TensorRef, Value};
use crate::ir::*;
use crate::syntax::Span;

/// Every built-in layer name, for "did you mean" hints and the language reference.
pub const BUILTIN_LAYERS: &[&str] = &[
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "global_avg_pool2d",
    "dense",
    "flatten",
    "reshape",
    "permute",
    "transpose",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "exp",
    "log",
    "sqrt",
    "abs",
    "softplus",
    "neg",
    "softmax",
    "log_softmax",
    "dropout",
    "batch_norm",
    "layer_norm",
    "embedding",
    "add",
    "sub",
    "mul",
    "div",
    "concat",
    "slice",
    "select",
    "split",
    "matmul",
    "mean",
    "sum",
    "max",
    "causal_mask",
    "randn_like",
    "identity",
    "rnn",
    "lstm",
    "gru",
    // The loss functions (planned in `loss.rs`).
    "mse",
    "cross_entropy",
    "binary_cross_entropy_with_logits",
    "bce_with_logits",
    "binary_cross_entropy",
    "gaussian_nll",
];

/// Stacked layers of one `rnn`/`lstm`/`gru`, at most.
const MAX_RECURRENT_LAYERS: u64 = 10_000;

/// What a built-in call adds to the graph.
pub enum BuiltinPlan {
    Node {
        op: Op,
        inputs: Vec<TensorRef>,
    },
    /// `split`: one node per piece, returned as a tuple.
    Pieces {
        ops: Vec<Op>,
        input: TensorRef,
    },
}

pub fn is_builtin(name: &str) -> bool {
    BUILTIN_LAYERS.contains(&name)
}

/// Builds the op for a call of built-in `name` on `tensors` with the remaining `args`.
pub fn plan_builtin(
    name: &str,
    tensors: Vec<TensorRef>,
    args: &[EvaluatedArg],
    span: Span,
) -> Result<BuiltinPlan, ElaborateError> {
    if super::loss::is_loss_function(name) {
        return super::loss::plan_loss_function(name, tensors, args, span);
    }
    let arity = match name {
        "add" | "sub" | "mul" | "div" | "matmul" => Arity::Exactly(2),
        "concat" => Arity::AtLeast(1),
        _ => Arity::Exactly(1),
    };
    arity.check(name, tensors.len(), span)?;
    let single = |op: Op| {
        Ok(BuiltinPlan::Node {
            op,
            inputs: tensors.clone(),
        })
    };
    match name {
        "conv2d" | "conv_transpose2d" => {
            let transposed = name == "conv_transpose2d";
            let signature: &[&'static str] = if transposed {
                &[
                    "channels",
                    "kernel",
                    "stride",
                    "pad",
                    "output_pad",
                    "groups",
                    "bias",
                    "dilation",
                ]
            } else {
                &[
                    "channels", "kernel", "stride", "pad", "dilation", "groups", "bias",
                ]
            };
            let args = bind(name, signature, args, span)?;
            let attrs = conv_attrs(&args, transposed)?;
            single(if transposed {
                Op::ConvTranspose2d(attrs)
            } else {
                Op::Conv2d(attrs)
            })
        }
        "max_pool2d" | "avg_pool2d" => {
            let average = name == "avg_pool2d";
            let signature: &[&'static str] = if average {
                &["kernel", "stride", "pad", "ceil", "count_pad"]
            } else {
                &["kernel", "stride", "pad", "dilation", "ceil"]
            };
            let args = bind(name, signature, args, span)?;
            let kernel = args.pair("kernel", None, 1)?;
            let attrs = Pool2dAttrs {
                kernel,
                stride: args.pair("stride", Some(kernel), 1)?,
                padding: args.pair("pad", Some([0, 0]), 0)?,
                dilation: if average {
                    [1, 1]
                } else {
                    args.pair("dilation", Some([1, 1]), 1)?
                },
                ceil_mode: args.boolean("ceil", false)?,
                count_include_pad: if average {
                    args.boolean("count_pad", true)?
                } else {
                    true
                },
            };
            for axis in 0..2 {
                if attrs.padding[axis] * 2 > attrs.kernel[axis] {
                    return Err(ElaborateError::InvalidArgument {
                        message: format!(
                            "pad {} is more than half the kernel size {}",
                            attrs.padding[axis], attrs.kernel[axis]
                        ),
                        span: args.span_of("pad"),
                        hint: Some("PyTorch requires pad <= kernel / 2 for pooling".into()),
                    });
                }
            }
            single(if average {
                Op::AvgPool2d(attrs)
            } else {
                Op::MaxPool2d(attrs)
            })
        }
        "adaptive_avg_pool2d" => {
            let args = bind(name, &["size"], args, span)?;
            single(Op::AdaptiveAvgPool2d {
                output: args.pair("size", None, 1)?,
            })
        }
        "global_avg_pool2d" => {
            bind(name, &[], args, span)?;
            single(Op::AdaptiveAvgPool2d { output: [1, 1] })
        }
        "dense" => {
            let args = bind(name, &["features", "bias", "inputs"], args, span)?;
            let in_features = if args.has("inputs") {
                Some(args.size("inputs", None, 1)?)
            } else {
                None
            };
            single(Op::Dense {
                out_features: args.size("features", None, 1)?,
                bias: args.boolean("bias", true)?,
                in_features,
            })
        }
        "flatten" => {
            let args = bind(name, &["start", "end"], args, span)?;
            single(Op::Flatten {
                start_dim: args.int("start", Some(1))?,
                end_dim: args.int("end", Some(-1))?,
            })
        }
        "reshape" => single(Op::Reshape {
            target: reshape_target(args, span)?,
        }),
        "permute" => {
            let dims = int_list(name, args, span)?;
            let mut seen = vec![false; dims.len()];
            for &dim in &dims {
                if dim < 0
                    || dim as usize >= dims.len()
                    || std::mem::replace(&mut seen[dim as usize], true)
                {
                    return Err(ElaborateError::invalid(
                        format!(
                            "permute needs each of 0..{} exactly once, found {:?}",
                            dims.len(),
                            dims
                        ),
                        span,
                    ));
                }
            }
            single(Op::Permute {
                dims: dims.into_iter().map(|dim| dim as usize).collect(),
            })
        }
        "transpose" => {
            let args = bind(name, &["dim0", "dim1"], args, span)?;
            single(Op::Transpose {
                dim0: args.int("dim0", Some(-2))?,
                dim1: args.int("dim1", Some(-1))?,
            })
        }
        "relu" | "sigmoid" | "tanh" | "gelu" | "silu" | "exp" | "log" | "sqrt" | "abs"
        | "softplus" | "neg" => {
            bind(name, &[], args, span)?;
            single(Op::Unary(match name {
                "relu" => UnaryOp::Relu,
                "sigmoid" => UnaryOp::Sigmoid,
                "tanh" => UnaryOp::Tanh,
                "gelu" => UnaryOp::Gelu,
                "silu" => UnaryOp::Silu,
                "exp" => UnaryOp::Exp,
                "log" => UnaryOp::Log,
                "sqrt" => UnaryOp::Sqrt,
                "abs" => UnaryOp::Abs,
                "neg" => UnaryOp::Neg,
                _ => UnaryOp::Softplus,
            }))
        }
        "leaky_relu" => {
            let args = bind(name, &["slope"], args, span)?;
            single(Op::Unary(UnaryOp::LeakyRelu {
                negative_slope: args.float("slope", 0.01)?,
            }))
        }
        "softmax" | "log_softmax" => {
            let args = bind(name, &["dim"], args, span)?;
            single(Op::Softmax {
                dim: args.int("dim", Some(-1))?,
                log: name == "log_softmax",
            })
        }
        "dropout" => {
            let args = bind(name, &["p"], args, span)?;
            single(Op::Dropout {
                p: args.probability("p", 0.5)?,
            })
        }
        "batch_norm" => {
            let args = bind(name, &["eps", "momentum", "affine"], args, span)?;
            single(Op::BatchNorm {
                eps: positive_float(&args, "eps", 1e-5)?,
                momentum: args.float("momentum", 0.1)?,
                affine: args.boolean("affine", true)?,
            })
        }
        "layer_norm" => {
            let args = bind(name, &["dims", "eps", "affine"], args, span)?;
            single(Op::LayerNorm {
                normalized_dims: args.size("dims", Some(1), 1)? as usize,
                eps: positive_float(&args, "eps", 1e-5)?,
                affine: args.boolean("affine", true)?,
            })
        }
        "embedding" => {
            let args = bind(name, &["count", "dim"], args, span)?;
            single(Op::Embedding {
                num_embeddings: args.size("count", None, 1)?,
                dim: args.size("dim", None, 1)?,
            })
        }
        "add" | "sub" | "mul" | "div" => {
            bind(name, &[], args, span)?;
            single(Op::Binary(match name {
                "add" => BinaryOp::Add,
                "sub" => BinaryOp::Sub,
                "mul" => BinaryOp::Mul,
                _ => BinaryOp::Div,
            }))
        }
        "matmul" => {
            bind(name, &[], args, span)?;
            single(Op::MatMul)
        }
        "concat" => {
            let args = bind(name, &["dim"], args, span)?;
            single(Op::Concat {
                dim: args.int("dim", Some(1))?,
            })
        }
        "slice" => {
            let args = bind(name, &["dim", "start", "end"], args, span)?;
            single(Op::Slice {
                dim: args.int("dim", None)?,
                start: args.int("start", Some(0))?,
                end: args.int("end", Some(i64::MAX))?,
            })
        }
        "select" => {
            let args = bind(name, &["dim", "index"], args, span)?;
            single(Op::Select {
                dim: args.int("dim", None)?,
                index: args.int("index", None)?,
            })
        }
        "split" => {
            let args = bind(name, &["sizes", "dim"], args, span)?;
            let dim = args.int("dim", Some(1))?;
            let (sizes_value, sizes_span) = args.value("sizes")?;
            let Value::List(items) = sizes_value else {
                return Err(args.type_error("sizes", "a list of sizes"));
            };
            let mut ops = Vec::new();
            let mut start = 0i64;
            for item in &items {
                let size = item.expect_i64(sizes_span)?;
                if size < 1 {
                    return Err(ElaborateError::invalid(
                        format!("split sizes must be positive, found {size}"),
                        sizes_span,
                    ));
                }
                let end = start.checked_add(size).ok_or(ElaborateError::Overflow {
                    expression: "split sizes".into(),
                    span: sizes_span,
                })?;
                ops.push(Op::Slice { dim, start, end });
                start = end;
            }
            Ok(BuiltinPlan::Pieces {
                ops,
                input: tensors[0],
            })
        }
        "mean" | "sum" | "max" => {
            let args = bind(name, &["dim", "keepdim"], args, span)?;
            let dims = match args.get("dim") {
                None => Vec::new(),
                Some((Value::List(items), span)) => items
                    .iter()
                    .map(|item| item.expect_i64(*span))
                    .collect::<Result<_, _>>()?,
                Some((value, span)) => vec![value.expect_i64(*span)?],
            };
            let op = match name {
                "mean" => ReduceOp::Mean,
                "sum" => ReduceOp::Sum,
                _ => ReduceOp::Max,
            };
            single(Op::Reduce {
                op,
                dims,
                keepdim: args.boolean("keepdim", false)?,
            })
        }
        "causal_mask" | "randn_like" | "identity" => {
            bind(name, &[], args, span)?;
            single(match name {
                "causal_mask" => Op::CausalMask,
                "randn_like" => Op::RandomNormal,
                _ => Op::Identity,
            })
        }
        "rnn" | "lstm" | "gru" => {
            let args = bind(
                name,
                &["hidden", "layers", "bidirectional", "bias", "sequence"],
                args,
                span,
            )?;
            // Each layer adds its own weights (and shape-pass work): bound it like `repeat`.
            let layers = args.size("layers", Some(1), 1)?;
            if layers > MAX_RECURRENT_LAYERS {
                return Err(ElaborateError::TooLarge {
                    what: format!("`layers` of `{name}`"),
                    count: i128::from(layers),
                    limit: i128::from(MAX_RECURRENT_LAYERS),
                    span: args.span_of("layers"),
                });
            }
            single(Op::Recurrent(RecurrentAttrs {
                kind: match name {
                    "rnn" => RecurrentKind::Rnn,
                    "lstm" => RecurrentKind::Lstm,
                    _ => RecurrentKind::Gru,
                },
                hidden: args.size("hidden", None, 1)?,
                layers,
                bidirectional: args.boolean("bidirectional", false)?,
                bias: args.boolean("bias", true)?,
                sequence: args.boolean("sequence", true)?,
            }))
        }
        _ => Err(ElaborateError::UnknownLayer {
            name: name.to_string(),
            span,
            suggestion: None,
        }),
    }
}

enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Arity {
    fn check(&self, name: &str, found: usize, span: Span) -> Result<(), ElaborateError> {
        let (ok, expected) = match self {
            Arity::Exactly(count) => (found == *count, format!("{count}")),
            Arity::AtLeast(count) => (found >= *count, format!("at least {count}")),
        };
        if ok {
            return Ok(());
        }
        Err(ElaborateError::InvalidArgument {
            message: format!("`{name}` takes {expected} tensor input(s), found {found}"),
            span,
            hint: Some(format!(
                "pipe the input in (`x -> {name}(...)`) or pass tensors first (`{name}(a, b)`)"
            )),
        })
    }
}

fn conv_attrs(args: &BoundArgs, transposed: bool) -> Result<Conv2dAttrs, ElaborateError> {
    let kernel = args.pair("kernel", None, 1)?;
    let dilation = args.pair("dilation", Some([1, 1]), 1)?;
    let padding = match args.string("pad") {
        Some((text, _)) if text == "same" && !transposed => Padding::Same,
        Some((text, span)) => {
            return Err(ElaborateError::InvalidArgument {
                message: format!("unknown padding \"{text}\""),
                span,
                hint: Some(if transposed {
                    "transposed convolution takes numeric padding".into()
                } else {
                    "use a number, [height, width], or \"same\"".into()
                }),
            })
        }
        None => Padding::Explicit(args.pair("pad", Some([0, 0]), 0)?),
    };
    let stride = args.pair("stride", Some([1, 1]), 1)?;
    let output_padding = if transposed {
        args.pair("output_pad", Some([0, 0]), 0)?
    } else {
        [0, 0]
    };
    for axis in 0..2 {
        if output_padding[axis] >= stride[axis].max(dilation[axis]) {
            return Err(ElaborateError::InvalidArgument {
                message: format!(
                    "output_pad {} must be smaller than stride {} or dilation {}",
                    output_padding[axis], stride[axis], dilation[axis]
                ),
                span: args.span_of("output_pad"),
                hint: None,
            });
        }
    }
    Ok(Conv2dAttrs {
        out_channels: args.size("channels", None, 1)?,
        kernel,
        stride,
        padding,
        dilation,
        groups: args.size("groups", Some(1), 1)?,
        bias: args.boolean("bias", true)?,
        output_padding,
    })
}

fn positive_float(args: &BoundArgs, name: &str, default: f64) -> Result<f64, ElaborateError> {
    let value = args.float(name, default)?;
    if value <= 0.0 {
        return Err(ElaborateError::invalid(
            format!("`{name}` must be positive, found {value}"),
            args.span_of(name),
        ));
    }
    Ok(value)
}

/// The dims of `reshape`/`permute`: either positional numbers or one list.
fn flat_list(
    name: &str,
    args: &[EvaluatedArg],
    span: Span,
) -> Result<Vec<(Value, Span)>, ElaborateError> {
    if let Some(named) = args.iter().find(|arg| arg.name.is_some()) {
        return Err(ElaborateError::UnknownArgument {
            layer: name.to_string(),
            argument: named.name.clone().unwrap_or_default(),
            span: named.name_span.unwrap_or(named.span),
            expected: vec![],
        });
    }
    let items: Vec<(Value, Span)> = match args {
        [single] => match &single.value {
            Value::List(items) => items
                .iter()
                .map(|item| (item.clone(), single.span))
                .collect(),
            value => vec![(value.clone(), single.span)],
        },
        _ => args
            .iter()
            .map(|arg| (arg.value.clone(), arg.span))
            .collect(),
    };
    if items.is_empty() {
        return Err(ElaborateError::invalid(
            format!("`{name}` needs a list of dimensions"),
            span,
        ));
    }
    Ok(items)
}

fn int_list(name: &str, args: &[EvaluatedArg], span: Span) -> Result<Vec<i64>, ElaborateError> {
    flat_list(name, args, span)?
        .iter()
        .map(|(value, span)| value.expect_i64(*span))
        .collect()
}

fn reshape_target(args: &[EvaluatedArg], span: Span) -> Result<Vec<ReshapeDim>, ElaborateError> {
    let mut inferred = false;
    let mut target = Vec::new();
    for (value, value_span) in flat_list("reshape", args, span)? {
        let dim = match value {
            Value::Symbol(symbol) => ReshapeDim::Symbol(symbol),
            other => match other.expect_i64(value_span)? {
                0 => ReshapeDim::Copy,
                -1 if !inferred => {
                    inferred = true;
                    ReshapeDim::Infer
                }
                -1 => {
                    return Err(ElaborateError::invalid(
                        "reshape can infer only one dimension (-1)",
                        value_span,
                    ))
                }
                size if size > 0 && size <= super::args::MAX_SIZE => ReshapeDim::Size(size as u64),
                size => {
                    return Err(ElaborateError::invalid(
                        format!(
                        "reshape dimensions must be positive, 0 (copy) or -1 (infer), found {size}"
                    ),
                        value_span,
                    ))
                }
            },
        };
        target.push(dim);
    }
    Ok(target)
}
