//! Losses: the `loss` statement and the built-in loss functions (`mse`, `cross_entropy`,
//! `bce_with_logits`, `binary_cross_entropy`, `gaussian_nll`).
//!
//! A loss function is a value-level call like any layer, with PyTorch's argument names
//! (`F.cross_entropy(input, target, weight=..., label_smoothing=...)`) and `reduction` "mean" or
//! "sum". Its tensor operands come first, positionally or by name. Loss calls are named like
//! operators (`cross_entropy`, `mse_2`), not with an ordinal: a loss added at the end of a spec
//! must not renumber the layers, whose names are PyTorch's `state_dict` keys.
//!
//! The `loss` statement names the scalar a training step minimizes; a spec has at most one.
//! Whether it is a scalar is a shape question, checked by the shape pass.

use super::args::{bind, BoundArgs};
use super::builtins::BuiltinPlan;
use super::error::ElaborateError;
use super::value::{mismatch, EvaluatedArg, TensorRef, Value};
use super::*;

/// The loss functions, by the names a spec calls them (`bce_with_logits` is an alias).
pub const LOSS_FUNCTIONS: &[&str] = &[
    "mse",
    "cross_entropy",
    "binary_cross_entropy_with_logits",
    "bce_with_logits",
    "binary_cross_entropy",
    "gaussian_nll",
];

pub fn is_loss_function(name: &str) -> bool {
    LOSS_FUNCTIONS.contains(&name)
}

impl<'a> Elaborator<'a> {
    /// Every `loss` statement after the first is an error pointing at it, and is not run.
    pub(super) fn reject_extra_loss_statements(&mut self, scope: &mut Scope<'a>) {
        let mut first: Option<Span> = None;
        for (index, statement) in scope.statements.iter().enumerate() {
            if !matches!(statement.kind, StatementKind::Loss { .. }) {
                continue;
            }
            match first {
                None => first = Some(statement.span),
                Some(previous) => {
                    self.errors.push(ElaborateError::SecondLoss {
                        span: statement.span,
                        previous,
                    });
                    scope.status[index] = Status::Done;
                }
            }
        }
    }

    /// `loss expr` or `loss name = expr` at the top level.
    pub(super) fn declare_loss(
        &mut self,
        scope: &mut Scope<'a>,
        name: Option<&'a ast::Ident>,
        value: &'a ast::Expr,
        span: Span,
    ) -> Result<(), ElaborateError> {
        let evaluated = self.eval(scope, value)?;
        let tensor = evaluated.expect_tensor(value.span)?;
        if let Some(name) = name {
            scope.values.insert(name.name.clone(), evaluated);
        }
        let loss_name = name.map_or_else(|| "loss".to_string(), |name| name.name.clone());
        self.network.loss = Some((loss_name, tensor.node));
        self.network.loss_span = Some(span);
        Ok(())
    }
}

/// The loss names an output too: both would be outputs of the lowered graph with one name.
pub(super) fn check_loss_name(network: &Network) -> Result<(), ElaborateError> {
    let (Some((name, _)), Some(span)) = (&network.loss, network.loss_span) else {
        return Ok(());
    };
    match network.outputs.iter().find(|(output, _)| output == name) {
        Some((_, node)) => Err(ElaborateError::DuplicateDefinition {
            name: name.clone(),
            span,
            previous: network.graph.node(*node).span,
        }),
        None => Ok(()),
    }
}

/// The operand slots and the options of each loss function, in PyTorch's order.
fn signature(name: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match name {
        "mse" | "binary_cross_entropy" => (&["input", "target", "reduction"], &["reduction"]),
        "cross_entropy" => (
            &[
                "input",
                "target",
                "weight",
                "label_smoothing",
                "dim",
                "reduction",
            ],
            &["weight", "label_smoothing", "dim", "reduction"],
        ),
        "gaussian_nll" => (
            &["input", "target", "var", "full", "eps", "reduction"],
            &["full", "eps", "reduction"],
        ),
        _ => (
            &["input", "target", "pos_weight", "reduction"],
            &["pos_weight", "reduction"],
        ),
    }
}

/// Builds the `Op::Loss` of a call of loss function `name`: `tensors` are the leading
/// positional tensors, `args` the rest (operands may also be given by name: `target = label`).
pub fn plan_loss_function(
    name: &str,
    tensors: Vec<TensorRef>,
    args: &[EvaluatedArg],
    span: Span,
) -> Result<BuiltinPlan, ElaborateError> {
    let (signature, options) = signature(name);
    let operand_names = &signature[..signature.len() - options.len()];
    let mut all_args: Vec<EvaluatedArg> = tensors
        .iter()
        .map(|tensor| EvaluatedArg {
            name: None,
            name_span: None,
            value: Value::Tensor(*tensor),
            span,
        })
        .collect();
    all_args.extend(args.iter().cloned());
    let args = bind(name, signature, &all_args, span)?;
    let mut inputs = Vec::new();
    let mut fixed_variance = None;
    for operand in operand_names {
        match args.get(operand) {
            Some((Value::Tensor(tensor), _)) => inputs.push(*tensor),
            Some((value, value_span)) if *operand == "var" && value.as_f64().is_some() => {
                let variance = args.float("var", 1.0)?;
                if variance < 0.0 {
                    return Err(ElaborateError::invalid(
                        format!("`var` of `gaussian_nll` must not be negative, found {variance}"),
                        *value_span,
                    ));
                }
                fixed_variance = Some(variance);
            }
            Some((value, value_span)) => return Err(mismatch("a tensor", value, *value_span)),
            None => {
                return Err(ElaborateError::MissingArgument {
                    layer: name.to_string(),
                    argument: operand.to_string(),
                    span,
                })
            }
        }
    }
    let function = match name {
        "mse" => LossFunction::MeanSquaredError,
        "binary_cross_entropy" => LossFunction::BinaryCrossEntropy,
        "cross_entropy" => {
            let label_smoothing = args.float("label_smoothing", 0.0)?;
            if !(0.0..=1.0).contains(&label_smoothing) {
                return Err(ElaborateError::invalid(
                    format!("`label_smoothing` must be in [0, 1], found {label_smoothing}"),
                    args.span_of("label_smoothing"),
                ));
            }
            LossFunction::CrossEntropy {
                class_dim: if args.has("dim") {
                    Some(args.int("dim", None)?)
                } else {
                    None
                },
                class_weights: numbers(&args, "weight", false)?,
                label_smoothing,
            }
        }
        "gaussian_nll" => {
            let eps = args.float("eps", 1e-6)?;
            if eps <= 0.0 {
                return Err(ElaborateError::invalid(
                    format!("`eps` must be positive, found {eps}"),
                    args.span_of("eps"),
                ));
            }
            LossFunction::GaussianNll {
                fixed_variance,
                full: args.boolean("full", false)?,
                eps,
            }
        }
        _ => LossFunction::BinaryCrossEntropyWithLogits {
            pos_weight: numbers(&args, "pos_weight", true)?,
        },
    };
    let reduction =
        match args.string("reduction") {
            None if !args.has("reduction") => Reduction::Mean,
            Some((text, _)) if text == "mean" => Reduction::Mean,
            Some((text, _)) if text == "sum" => Reduction::Sum,
            _ => return Err(ElaborateError::InvalidArgument {
                message: format!("`reduction` of `{name}` must be \"mean\" or \"sum\""),
                span: args.span_of("reduction"),
                hint: Some(
                    "a loss is a scalar; reduce per-element values yourself with `sum` or `mean`"
                        .into(),
                ),
            }),
        };
    Ok(BuiltinPlan::Node {
        op: Op::Loss(LossAttrs {
            function,
            reduction,
        }),
        inputs,
    })
}

/// An optional list of finite numbers (`weight = [1, 2, 0.5]`); a single number too when
/// `single` (`pos_weight = 3`, which then broadcasts like a one-element list).
fn numbers(args: &BoundArgs, name: &str, single: bool) -> Result<Option<Vec<f64>>, ElaborateError> {
    let Some((value, span)) = args.get(name) else {
        return Ok(None);
    };
    let items = match value {
        Value::List(items) if !items.is_empty() => items.clone(),
        number if single && number.as_f64().is_some() => vec![number.clone()],
        _ => {
            let expected = if single {
                "a number or a list of numbers"
            } else {
                "a list of numbers, one per class"
            };
            return Err(args.type_error(name, expected));
        }
    };
    let mut numbers = Vec::new();
    for item in &items {
        let number = item.expect_f64(*span)?;
        if !number.is_finite() {
            return Err(ElaborateError::invalid(
                format!("`{name}` must hold finite numbers"),
                *span,
            ));
        }
        numbers.push(number);
    }
    Ok(Some(numbers))
}
