//! Expressions: numbers, names, operators, conditionals and pipelines. Numbers are computed
//! with checked arithmetic; tensor operators add graph nodes.

use super::error::ElaborateError;
use super::value::{mismatch, EvaluatedArg, Value};
use super::*;
use crate::syntax::ast::{BinaryOperator, Expr, ExprKind, UnaryOperator};

impl<'a> Elaborator<'a> {
    pub(super) fn eval(
        &mut self,
        scope: &mut Scope<'a>,
        expr: &'a Expr,
    ) -> Result<Value, ElaborateError> {
        if self.eval_depth >= MAX_EVAL_DEPTH {
            if std::mem::replace(&mut self.eval_depth_reported, true) {
                return Err(ElaborateError::Poisoned);
            }
            return Err(ElaborateError::InvalidArgument {
                message: format!("evaluation nests more than {MAX_EVAL_DEPTH} levels deep here"),
                span: expr.span,
                hint: Some(
                    "look for a very long chain of names that each need the next, or blocks and expressions nested very deeply".into(),
                ),
            });
        }
        self.eval_depth += 1;
        let result = self.eval_node(scope, expr);
        self.eval_depth -= 1;
        result
    }

    pub(super) fn eval_node(
        &mut self,
        scope: &mut Scope<'a>,
        expr: &'a Expr,
    ) -> Result<Value, ElaborateError> {
        match &expr.kind {
            ExprKind::Int(number) => Ok(Value::Int(*number)),
            ExprKind::Float(number) => Ok(Value::Float(*number)),
            ExprKind::Bool(flag) => Ok(Value::Bool(*flag)),
            ExprKind::Str(text) => Ok(Value::Str(text.clone())),
            ExprKind::Name(name) => self.lookup(scope, name, expr.span),
            ExprKind::List(items) => {
                let mut values = Vec::new();
                for item in items {
                    values.push(self.eval(scope, item)?);
                }
                Ok(Value::List(values))
            }
            ExprKind::Call { callee, args } => self.eval_call(scope, callee, args, expr.span),
            ExprKind::Unary { op, operand } => {
                let value = self.eval(scope, operand)?;
                match (op, value) {
                    (UnaryOperator::Not, Value::Bool(flag)) => Ok(Value::Bool(!flag)),
                    (UnaryOperator::Neg, Value::Int(number)) => number
                        .checked_neg()
                        .map(Value::Int)
                        .ok_or(ElaborateError::Overflow {
                            expression: "negation".into(),
                            span: expr.span,
                        }),
                    (UnaryOperator::Neg, Value::Float(number)) => Ok(Value::Float(-number)),
                    (UnaryOperator::Neg, Value::Tensor(tensor)) => {
                        let path = self.operator_path(scope, "neg");
                        Ok(Value::Tensor(self.add_node(
                            scope,
                            Op::Unary(UnaryOp::Neg),
                            &[tensor],
                            path,
                            expr.span,
                        )?))
                    }
                    (UnaryOperator::Not, other) => Err(mismatch("a boolean", &other, operand.span)),
                    (UnaryOperator::Neg, other) => {
                        Err(mismatch("a number or tensor", &other, operand.span))
                    }
                }
            }
            ExprKind::Binary { op, lhs, rhs } => self.eval_binary(scope, *op, lhs, rhs, expr.span),
            ExprKind::If {
                condition,
                then_value,
                else_value,
            } => {
                let flag = self.eval(scope, condition)?.expect_bool(condition.span)?;
                match (flag, else_value) {
                    (true, _) => self.eval(scope, then_value),
                    (false, Some(else_value)) => self.eval(scope, else_value),
                    (false, None) => Err(ElaborateError::InvalidArgument {
                        message: "this `if` has no `else` value".into(),
                        span: expr.span,
                        hint: Some(
                            "a value-level `if` needs both branches: `if c { a } else { b }`"
                                .into(),
                        ),
                    }),
                }
            }
            ExprKind::Pipe { input, stages } => {
                let mut value = self.eval(scope, input)?;
                for stage in stages {
                    value = self.apply_stage(scope, value, stage)?;
                }
                Ok(value)
            }
        }
    }

    pub(super) fn eval_binary(
        &mut self,
        scope: &mut Scope<'a>,
        op: BinaryOperator,
        lhs: &'a Expr,
        rhs: &'a Expr,
        span: Span,
    ) -> Result<Value, ElaborateError> {
        // `and`/`or` short-circuit, so `stride != 1 and ...` can guard the right side.
        if matches!(op, BinaryOperator::And | BinaryOperator::Or) {
            let left = self.eval(scope, lhs)?.expect_bool(lhs.span)?;
            if left == (op == BinaryOperator::Or) {
                return Ok(Value::Bool(left));
            }
            return Ok(Value::Bool(self.eval(scope, rhs)?.expect_bool(rhs.span)?));
        }
        let left = self.eval(scope, lhs)?;
        let right = self.eval(scope, rhs)?;
        let tensor_op = match op {
            BinaryOperator::Add => Some(BinaryOp::Add),
            BinaryOperator::Sub => Some(BinaryOp::Sub),
            BinaryOperator::Mul => Some(BinaryOp::Mul),
            BinaryOperator::Div => Some(BinaryOp::Div),
            _ => None,
        };
        match (&left, &right, tensor_op) {
            (Value::Tensor(a), Value::Tensor(b), Some(tensor_op)) => {
                let path = self.operator_path(scope, tensor_op.name());
                Ok(Value::Tensor(self.add_node(
                    scope,
                    Op::Binary(tensor_op),
                    &[*a, *b],
                    path,
                    span,
                )?))
            }
            (Value::Tensor(tensor), number, Some(tensor_op))
            | (number, Value::Tensor(tensor), Some(tensor_op))
                if number.as_f64().is_some() =>
            {
                let scalar_first = matches!(left, Value::Int(_) | Value::Float(_));
                let scalar = number.as_f64().unwrap_or_default();
                let path = self.operator_path(scope, tensor_op.name());
                let node_op = Op::Scalar {
                    op: tensor_op,
                    scalar,
                    scalar_first,
                };
                Ok(Value::Tensor(self.add_node(
                    scope,
                    node_op,
                    &[*tensor],
                    path,
                    span,
                )?))
            }
            _ => numeric_binary(op, &left, &right, lhs.span, rhs.span, span),
        }
    }
}

fn numeric_binary(
    op: BinaryOperator,
    left: &Value,
    right: &Value,
    left_span: Span,
    right_span: Span,
    span: Span,
) -> Result<Value, ElaborateError> {
    use BinaryOperator::*;
    if matches!(op, Equal | NotEqual) {
        let equal = match (left, right) {
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Symbol(a), Value::Symbol(b)) => a == b,
            // Tensors compare by identity: `memory == in` asks whether they are the same value.
            (Value::Tensor(a), Value::Tensor(b)) => a == b,
            _ => left.expect_f64(left_span)? == right.expect_f64(right_span)?,
        };
        return Ok(Value::Bool(equal == (op == Equal)));
    }
    let overflow = || ElaborateError::Overflow {
        expression: format!("{op:?}").to_lowercase(),
        span,
    };
    if let (Value::Int(a), Value::Int(b)) = (left, right) {
        let (a, b) = (*a, *b);
        return match op {
            Add => a.checked_add(b).map(Value::Int).ok_or_else(overflow),
            Sub => a.checked_sub(b).map(Value::Int).ok_or_else(overflow),
            Mul => a.checked_mul(b).map(Value::Int).ok_or_else(overflow),
            Div | FloorDiv | Mod if b == 0 => {
                Err(ElaborateError::DivisionByZero { span: right_span })
            }
            // `checked_rem`: `i64::MIN % -1` overflows.
            Div if a.checked_rem(b) == Some(0) => {
                a.checked_div(b).map(Value::Int).ok_or_else(overflow)
            }
            Div => Ok(Value::Float(a as f64 / b as f64)),
            FloorDiv => a.checked_div_euclid(b).map(Value::Int).ok_or_else(overflow),
            Mod => a.checked_rem_euclid(b).map(Value::Int).ok_or_else(overflow),
            Less => Ok(Value::Bool(a < b)),
            LessEqual => Ok(Value::Bool(a <= b)),
            Greater => Ok(Value::Bool(a > b)),
            GreaterEqual => Ok(Value::Bool(a >= b)),
            Equal | NotEqual | And | Or => unreachable!("handled above"),
        };
    }
    let a = left
        .as_f64()
        .ok_or_else(|| mismatch("a number", left, left_span))?;
    let b = right
        .as_f64()
        .ok_or_else(|| mismatch("a number", right, right_span))?;
    let result = match op {
        Add => a + b,
        Sub => a - b,
        Mul => a * b,
        Div | FloorDiv | Mod if b == 0.0 => {
            return Err(ElaborateError::DivisionByZero { span: right_span })
        }
        Div => a / b,
        FloorDiv => (a / b).floor(),
        Mod => a.rem_euclid(b),
        Less => return Ok(Value::Bool(a < b)),
        LessEqual => return Ok(Value::Bool(a <= b)),
        Greater => return Ok(Value::Bool(a > b)),
        GreaterEqual => return Ok(Value::Bool(a >= b)),
        Equal | NotEqual | And | Or => unreachable!("handled above"),
    };
    if !result.is_finite() {
        return Err(overflow());
    }
    Ok(Value::Float(result))
}

pub(super) fn math_function(
    name: &str,
    args: &[EvaluatedArg],
    span: Span,
) -> Result<Value, ElaborateError> {
    let mut numbers = Vec::new();
    for arg in args {
        if arg.name.is_some() {
            return Err(ElaborateError::invalid(
                format!("`{name}` takes no named arguments"),
                arg.span,
            ));
        }
        numbers.push(arg.value.expect_f64(arg.span)?);
    }
    let expect = |count: usize| {
        if numbers.len() == count {
            Ok(())
        } else {
            Err(ElaborateError::invalid(
                format!("`{name}` takes {count} number(s), found {}", numbers.len()),
                span,
            ))
        }
    };
    let to_int = |value: f64| {
        if value.is_finite() && value.abs() < 9.0e15 {
            Ok(Value::Int(value as i64))
        } else {
            Err(ElaborateError::Overflow {
                expression: name.to_string(),
                span,
            })
        }
    };
    let result = match name {
        "floor" | "ceil" | "round" => {
            expect(1)?;
            let value = numbers[0];
            return to_int(match name {
                "floor" => value.floor(),
                "ceil" => value.ceil(),
                _ => value.round(),
            });
        }
        "min" | "max" => {
            if numbers.is_empty() {
                return Err(ElaborateError::invalid(
                    format!("`{name}` needs at least one number"),
                    span,
                ));
            }
            let all_ints = args.iter().all(|arg| matches!(arg.value, Value::Int(_)));
            let pick = if name == "min" { f64::min } else { f64::max };
            let value = numbers.iter().copied().fold(numbers[0], pick);
            return if all_ints {
                to_int(value)
            } else {
                Ok(Value::Float(value))
            };
        }
        "pow" => {
            expect(2)?;
            numbers[0].powf(numbers[1])
        }
        "abs" => {
            expect(1)?;
            if let Value::Int(number) = args[0].value {
                return number
                    .checked_abs()
                    .map(Value::Int)
                    .ok_or(ElaborateError::Overflow {
                        expression: "abs".into(),
                        span,
                    });
            }
            numbers[0].abs()
        }
        _ => {
            expect(1)?;
            match name {
                "sqrt" => numbers[0].sqrt(),
                "exp" => numbers[0].exp(),
                _ => numbers[0].ln(),
            }
        }
    };
    if !result.is_finite() {
        return Err(ElaborateError::invalid(
            format!("`{name}` of these arguments is not a finite number"),
            span,
        ));
    }
    Ok(Value::Float(result))
}
