//! Calls: resolving a name in call position to a shared layer, a block, a built-in layer or a
//! number function, and applying it.

use std::rc::Rc;

use super::builtins::{is_builtin, plan_builtin, BuiltinPlan, BUILTIN_LAYERS};
use super::error::{suggest, ElaborateError};
use super::expr::math_function;
use super::loss::is_loss_function;
use super::value::{mismatch, EvaluatedArg, LayerValue, TensorRef, Value};
use super::*;
use crate::syntax::ast::{Arg, Expr, ExprKind, Ident};

/// What a name in call position refers to.
pub(super) enum Callable<'a> {
    Layer(Rc<LayerValue>),
    Block(&'a BlockDef),
    Builtin(&'static str),
    MathFunction,
}

pub(super) const MATH_FUNCTIONS: &[&str] = &[
    "sqrt", "exp", "log", "abs", "floor", "ceil", "round", "min", "max", "pow",
];

impl<'a> Elaborator<'a> {
    /// A call in value position: `relu(x)`, `conv2d(x, 64, 3)`, `basic(x, 64)`, `sqrt(d)`.
    pub(super) fn eval_call(
        &mut self,
        scope: &mut Scope<'a>,
        callee: &'a Ident,
        args: &'a [Arg],
        span: Span,
    ) -> Result<Value, ElaborateError> {
        let mut evaluated = self.eval_args(scope, args)?;
        let callable = self.resolve_callable(scope, callee)?;
        // `sqrt`, `exp`, `log`, `abs` and `max` are layers on tensors and functions on numbers.
        let numbers_only = evaluated.iter().all(|arg| arg.value.as_f64().is_some());
        let math = match callable {
            Callable::MathFunction => true,
            Callable::Builtin(name) => {
                MATH_FUNCTIONS.contains(&name) && numbers_only && !evaluated.is_empty()
            }
            _ => false,
        };
        if math {
            return math_function(&callee.name, &evaluated, span);
        }
        // The first positional argument is the input, as if it had been piped in.
        let position = evaluated.iter().position(|arg| arg.name.is_none());
        let input = match position {
            Some(position) if is_tensor_like(&evaluated[position].value) => {
                Some(evaluated.remove(position).value)
            }
            _ => None,
        };
        // Built-ins with several tensor operands (`matmul(a, b)`, `add(a, b)`,
        // `concat(a, b, c, dim = 1)`) take every leading positional tensor as an input.
        let input = match (input, &callable) {
            (Some(Value::Tensor(first)), Callable::Builtin(_)) => {
                let mut tensors = vec![Value::Tensor(first)];
                while let Some(next) = evaluated.iter().position(|arg| arg.name.is_none()) {
                    if !matches!(evaluated[next].value, Value::Tensor(_)) {
                        break;
                    }
                    tensors.push(evaluated.remove(next).value);
                }
                match tensors.len() {
                    1 => tensors.pop(),
                    _ => Some(Value::List(tensors)),
                }
            }
            (input, _) => input,
        };
        let Some(input) = input else {
            return Err(ElaborateError::InvalidArgument {
                message: format!("`{}` is called without an input tensor", callee.name),
                span,
                hint: Some(format!(
                    "pass the input first (`{}(x, ...)`) or pipe it (`x -> {}(...)`)",
                    callee.name, callee.name
                )),
            });
        };
        let path = match &callable {
            Callable::Layer(layer) => layer.path.clone(),
            Callable::Builtin(name) if is_loss_function(name) => self.operator_path(scope, name),
            _ => self.ordinal_path(scope),
        };
        self.apply_callable(scope, callable, input, evaluated, path, span)
    }

    pub(super) fn eval_args(
        &mut self,
        scope: &mut Scope<'a>,
        args: &'a [Arg],
    ) -> Result<Vec<EvaluatedArg>, ElaborateError> {
        let mut evaluated = Vec::new();
        for arg in args {
            evaluated.push(EvaluatedArg {
                name: arg.name.as_ref().map(|name| name.name.clone()),
                name_span: arg.name.as_ref().map(|name| name.span),
                value: self.eval(scope, &arg.value)?,
                span: arg.value.span,
            });
        }
        Ok(evaluated)
    }

    pub(super) fn resolve_callable(
        &mut self,
        scope: &mut Scope<'a>,
        callee: &Ident,
    ) -> Result<Callable<'a>, ElaborateError> {
        let defined_here = scope.values.contains_key(&callee.name)
            || scope.definitions.contains_key(&callee.name)
            || scope
                .loop_variables
                .iter()
                .any(|(name, _)| *name == callee.name);
        if defined_here {
            // A name holding a plain value does not hide the layer of that name in call
            // position: a block parameter `dropout = 0.1` may still call `dropout(dropout)`.
            let shadows_callable =
                self.blocks.contains_key(callee.name.as_str()) || is_builtin(&callee.name);
            match self.lookup(scope, &callee.name, callee.span)? {
                Value::Layer(layer) => return Ok(Callable::Layer(layer)),
                _ if shadows_callable => {}
                other => return Err(mismatch("a layer", &other, callee.span)),
            }
        }
        if let Some(block) = self.blocks.get(callee.name.as_str()) {
            return Ok(Callable::Block(block));
        }
        if let Some(name) = BUILTIN_LAYERS.iter().find(|name| **name == callee.name) {
            return Ok(Callable::Builtin(name));
        }
        if MATH_FUNCTIONS.contains(&callee.name.as_str()) {
            return Ok(Callable::MathFunction);
        }
        let candidates = BUILTIN_LAYERS
            .iter()
            .copied()
            .chain(self.blocks.keys().copied());
        Err(ElaborateError::UnknownLayer {
            name: callee.name.clone(),
            span: callee.span,
            suggestion: suggest(&callee.name, candidates),
        })
    }

    pub(super) fn apply_callable(
        &mut self,
        scope: &mut Scope<'a>,
        callable: Callable<'a>,
        input: Value,
        args: Vec<EvaluatedArg>,
        path: InstancePath,
        span: Span,
    ) -> Result<Value, ElaborateError> {
        match callable {
            Callable::Layer(layer) => {
                if let Some(extra) = args.first() {
                    return Err(ElaborateError::InvalidArgument {
                        message: format!("the shared layer `{}` was given arguments", layer.path),
                        span: extra.span,
                        hint: Some(
                            "a `layer` value fixes its arguments where it is declared".into(),
                        ),
                    });
                }
                // The callee is a block or a built-in (checked where the layer is declared), never
                // a name in scope: `layer relu = relu` must not apply itself.
                let builtin = BUILTIN_LAYERS
                    .iter()
                    .find(|name| **name == layer.callee.name);
                let inner = match (self.blocks.get(layer.callee.name.as_str()), builtin) {
                    (Some(block), _) => Callable::Block(block),
                    (None, Some(name)) => Callable::Builtin(name),
                    (None, None) => {
                        return Err(ElaborateError::UnknownLayer {
                            name: layer.callee.name.clone(),
                            span: layer.callee.span,
                            suggestion: None,
                        })
                    }
                };
                let saved_owner = scope.owner.replace(layer.owner);
                let result = self.apply_callable(
                    scope,
                    inner,
                    input,
                    layer.args.clone(),
                    layer.path.clone(),
                    span,
                );
                scope.owner = saved_owner;
                result
            }
            Callable::Block(block) => {
                self.claim_path(&path, scope.owner, span)?;
                self.network
                    .block_instances
                    .push((path.clone(), block.name.name.clone()));
                self.apply_block(scope, block, input, args, path, span)
            }
            Callable::Builtin(name) => {
                self.claim_path(&path, scope.owner, span)?;
                let tensors = tensors_of(input, span)?;
                match plan_builtin(name, tensors, &args, span)? {
                    BuiltinPlan::Node { op, inputs } => Ok(Value::Tensor(
                        self.add_node(scope, op, &inputs, path, span)?,
                    )),
                    BuiltinPlan::Pieces { ops, input } => {
                        let mut pieces = Vec::new();
                        for op in ops {
                            pieces.push(Value::Tensor(self.add_node(
                                scope,
                                op,
                                &[input],
                                path.clone(),
                                span,
                            )?));
                        }
                        Ok(Value::Tuple(pieces))
                    }
                }
            }
            Callable::MathFunction => Err(ElaborateError::InvalidArgument {
                message: "a number function cannot be applied to a tensor in a pipeline".into(),
                span,
                hint: None,
            }),
        }
    }

    /// `layer name = call(...)`: evaluates the arguments now, applies later.
    pub(super) fn layer_value(
        &mut self,
        scope: &mut Scope<'a>,
        name: &'a Ident,
        value: &'a Expr,
    ) -> Result<Value, ElaborateError> {
        let (callee, args) = match &value.kind {
            ExprKind::Call { callee, args } => (callee, self.eval_args(scope, args)?),
            ExprKind::Name(callee_name) => {
                let callee = Ident {
                    name: callee_name.clone(),
                    span: value.span,
                };
                return self.finish_layer_value(scope, name, callee, Vec::new());
            }
            _ => {
                return Err(ElaborateError::InvalidArgument {
                    message: "a `layer` must be a layer call such as `dense(128)`".into(),
                    span: value.span,
                    hint: None,
                })
            }
        };
        self.finish_layer_value(scope, name, callee.clone(), args)
    }

    pub(super) fn finish_layer_value(
        &mut self,
        scope: &mut Scope<'a>,
        name: &Ident,
        callee: Ident,
        args: Vec<EvaluatedArg>,
    ) -> Result<Value, ElaborateError> {
        let known = self.blocks.contains_key(callee.name.as_str()) || is_builtin(&callee.name);
        if !known {
            let candidates = BUILTIN_LAYERS
                .iter()
                .copied()
                .chain(self.blocks.keys().copied());
            return Err(ElaborateError::UnknownLayer {
                name: callee.name.clone(),
                span: callee.span,
                suggestion: suggest(&callee.name, candidates),
            });
        }
        let path = scope.naming[0].path.child(name.name.clone());
        let owner = self.fresh_owner();
        Ok(Value::Layer(Rc::new(LayerValue {
            callee,
            args,
            path,
            owner,
        })))
    }
}

fn is_tensor_like(value: &Value) -> bool {
    match value {
        Value::Tensor(_) | Value::Tuple(_) => true,
        Value::List(items) => {
            !items.is_empty() && items.iter().all(|item| matches!(item, Value::Tensor(_)))
        }
        _ => false,
    }
}

/// The tensors a piped value stands for: one tensor, or a list/tuple of them (for `concat`).
fn tensors_of(value: Value, span: Span) -> Result<Vec<TensorRef>, ElaborateError> {
    match value {
        Value::Tensor(tensor) => Ok(vec![tensor]),
        Value::List(items) | Value::Tuple(items) => {
            items.iter().map(|item| item.expect_tensor(span)).collect()
        }
        other => Err(mismatch("a tensor", &other, span)),
    }
}
