//! Expressions, pipelines and calls: where numbers are computed, blocks are instantiated and
//! built-in layers become graph nodes.

use std::rc::Rc;

use super::builtins::{is_builtin, plan_builtin, BuiltinPlan, BUILTIN_LAYERS};
use super::error::{suggest, ElaborateError};
use super::value::{mismatch, EvaluatedArg, LayerValue, TensorRef, Value};
use super::*;
use crate::syntax::ast::{
    Arg, BinaryOperator, Expr, ExprKind, Ident, NamePart, NamePath, Stage, StageKind, UnaryOperator,
};

/// What a name in call position refers to.
enum Callable<'a> {
    Layer(Rc<LayerValue>),
    Block(&'a BlockDef),
    Builtin(&'static str),
    MathFunction,
}

const MATH_FUNCTIONS: &[&str] = &[
    "sqrt", "exp", "log", "abs", "floor", "ceil", "round", "min", "max", "pow",
];

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

    fn eval_node(
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

    fn eval_binary(
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

    /// A call in value position: `relu(x)`, `conv2d(x, 64, 3)`, `basic(x, 64)`, `sqrt(d)`.
    fn eval_call(
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
            _ => self.ordinal_path(scope),
        };
        self.apply_callable(scope, callable, input, evaluated, path, span)
    }

    fn eval_args(
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

    fn resolve_callable(
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

    fn apply_callable(
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

    /// Applies one pipeline stage to `input`.
    pub(super) fn apply_stage(
        &mut self,
        scope: &mut Scope<'a>,
        input: Value,
        stage: &'a Stage,
    ) -> Result<Value, ElaborateError> {
        match &stage.kind {
            StageKind::Apply { callee, args } => {
                let args = self.eval_args(scope, args)?;
                let callable = self.resolve_callable(scope, callee)?;
                if let Callable::MathFunction = callable {
                    return Err(ElaborateError::UnknownLayer {
                        name: callee.name.clone(),
                        span: callee.span,
                        suggestion: suggest(&callee.name, BUILTIN_LAYERS.iter().copied()),
                    });
                }
                let path = match (&callable, &stage.name) {
                    (Callable::Layer(layer), None) => layer.path.clone(),
                    (Callable::Layer(layer), Some(name)) => {
                        return Err(ElaborateError::InvalidArgument {
                            message: format!("the shared layer `{}` cannot be renamed", layer.path),
                            span: name.span,
                            hint: Some(
                                "every use of a `layer` value shares its name and weights".into(),
                            ),
                        })
                    }
                    (_, name) => self.stage_path(scope, name.as_ref())?,
                };
                self.apply_callable(scope, callable, input, args, path, stage.span)
            }
            StageKind::Group(stages) => {
                let path = self.stage_path(scope, stage.name.as_ref())?;
                scope.naming.push(Naming::new(path));
                let result = self.apply_stages(scope, input, stages);
                scope.naming.pop();
                result
            }
            StageKind::Repeat {
                variable,
                start,
                end,
                body,
            } => {
                let first = match start {
                    Some(start) => self.eval(scope, start)?.expect_i64(start.span)?,
                    None => 0,
                };
                let last = self.eval(scope, end)?.expect_i64(end.span)?;
                let count = last.saturating_sub(first);
                if count > MAX_REPEAT {
                    return Err(ElaborateError::TooLarge {
                        what: "a repeat count".into(),
                        count: count as i128,
                        limit: MAX_REPEAT as i128,
                        span: end.span,
                    });
                }
                let named = stage.name.is_some();
                if named {
                    let path = self.stage_path(scope, stage.name.as_ref())?;
                    scope.naming.push(Naming::new(path));
                }
                let mut value = Ok(input);
                for index in first..last.max(first) {
                    let Ok(current) = value else { break };
                    if let Some(variable) = variable {
                        scope
                            .loop_variables
                            .push((variable.name.clone(), Value::Int(index)));
                    }
                    value = self.apply_stages(scope, current, body);
                    if variable.is_some() {
                        scope.loop_variables.pop();
                    }
                }
                if named {
                    scope.naming.pop();
                }
                value
            }
            StageKind::If {
                condition,
                then_stages,
                else_stages,
            } => {
                let flag = self.eval(scope, condition)?.expect_bool(condition.span)?;
                let chosen = if flag {
                    Some(then_stages)
                } else {
                    else_stages.as_ref()
                };
                let Some(stages) = chosen else {
                    return Ok(input);
                };
                let named = stage.name.is_some();
                if named {
                    let path = self.stage_path(scope, stage.name.as_ref())?;
                    scope.naming.push(Naming::new(path));
                }
                let result = self.apply_stages(scope, input, stages);
                if named {
                    scope.naming.pop();
                }
                result
            }
        }
    }

    fn apply_stages(
        &mut self,
        scope: &mut Scope<'a>,
        input: Value,
        stages: &'a [Stage],
    ) -> Result<Value, ElaborateError> {
        let mut value = input;
        for stage in stages {
            value = self.apply_stage(scope, value, stage)?;
        }
        Ok(value)
    }

    /// The instance path of a stage: its `as` name, or the next ordinal of the naming frame.
    fn stage_path(
        &mut self,
        scope: &mut Scope<'a>,
        name: Option<&'a NamePath>,
    ) -> Result<InstancePath, ElaborateError> {
        let Some(name) = name else {
            return Ok(self.ordinal_path(scope));
        };
        let mut path = scope
            .naming
            .last()
            .expect("a scope always has a naming frame")
            .path
            .clone();
        for segment in &name.segments {
            let mut text = String::new();
            for part in segment {
                match part {
                    NamePart::Text(part) => text.push_str(part),
                    NamePart::Interpolated(expr) => match self.eval(scope, expr)? {
                        Value::Int(number) => text.push_str(&number.to_string()),
                        Value::Str(part) => text.push_str(&part),
                        other => {
                            return Err(mismatch(
                                "an integer or string to put in a name",
                                &other,
                                expr.span,
                            ))
                        }
                    },
                }
            }
            path = path.child(text);
        }
        Ok(path)
    }

    fn ordinal_path(&mut self, scope: &mut Scope<'a>) -> InstancePath {
        let naming = scope
            .naming
            .last_mut()
            .expect("a scope always has a naming frame");
        let ordinal = naming.next_ordinal;
        naming.next_ordinal += 1;
        naming.path.child(ordinal.to_string())
    }

    /// Operators (`a + b`) are named after the op, numbered when one scope has several.
    pub(super) fn operator_path(
        &mut self,
        scope: &mut Scope<'a>,
        name: &'static str,
    ) -> InstancePath {
        let naming = scope
            .naming
            .last_mut()
            .expect("a scope always has a naming frame");
        let count = naming.operator_counts.entry(name).or_insert(0);
        *count += 1;
        let segment = if *count == 1 {
            name.to_string()
        } else {
            format!("{name}_{count}")
        };
        naming.path.child(segment)
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

    fn finish_layer_value(
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

    fn apply_block(
        &mut self,
        scope: &mut Scope<'a>,
        block: &'a BlockDef,
        input: Value,
        args: Vec<EvaluatedArg>,
        path: InstancePath,
        span: Span,
    ) -> Result<Value, ElaborateError> {
        if self.block_depth >= MAX_BLOCK_DEPTH {
            return Err(ElaborateError::RecursionLimit {
                block: block.name.name.clone(),
                limit: MAX_BLOCK_DEPTH,
                span,
            });
        }
        let is_cell = block
            .body
            .iter()
            .any(|statement| matches!(statement.kind, StatementKind::State { .. }));
        let kind = if is_cell {
            ScopeKind::Cell
        } else {
            ScopeKind::Block
        };
        let level = if is_cell {
            scope.graph_level + 1
        } else {
            scope.graph_level
        };
        let mut inner = Scope::new(&block.body, path.clone(), level, kind);
        inner.owner = scope.owner;
        let mut predefined = vec![("in".to_string(), block.name.span)];
        predefined.extend(
            block
                .params
                .iter()
                .map(|param| (param.name.name.clone(), param.name.span)),
        );
        self.collect_definitions(&mut inner, &predefined);
        if !is_cell {
            // Parameter defaults may use the input: `memory = in`.
            inner.values.insert("in".into(), input.clone());
        }
        self.bind_block_params(scope, &mut inner, block, args, span)?;
        self.block_depth += 1;
        let result = if is_cell {
            self.run_cell(scope, &mut inner, block, input, path, span)
        } else {
            inner.values.insert("in".into(), input);
            self.run_all(&mut inner);
            self.block_result(&inner, block)
        };
        self.block_depth -= 1;
        result
    }

    fn bind_block_params(
        &mut self,
        caller: &mut Scope<'a>,
        inner: &mut Scope<'a>,
        block: &'a BlockDef,
        args: Vec<EvaluatedArg>,
        span: Span,
    ) -> Result<(), ElaborateError> {
        let _ = caller;
        let mut positional = 0;
        for arg in args {
            let param =
                match &arg.name {
                    None => {
                        let param = block.params.get(positional).ok_or(
                            ElaborateError::TooManyArguments {
                                layer: block.name.name.clone(),
                                expected: block.params.len(),
                                found: positional + 1,
                                span: arg.span,
                            },
                        )?;
                        positional += 1;
                        param
                    }
                    Some(name) => block
                        .params
                        .iter()
                        .find(|param| param.name.name == *name)
                        .ok_or_else(|| ElaborateError::UnknownArgument {
                            layer: block.name.name.clone(),
                            argument: name.clone(),
                            span: arg.name_span.unwrap_or(arg.span),
                            expected: block
                                .params
                                .iter()
                                .map(|param| param.name.name.clone())
                                .collect(),
                        })?,
                };
            if inner
                .values
                .insert(param.name.name.clone(), arg.value)
                .is_some()
            {
                return Err(ElaborateError::RepeatedArgument {
                    argument: param.name.name.clone(),
                    span: arg.span,
                });
            }
        }
        for param in &block.params {
            if inner.values.contains_key(&param.name.name) {
                continue;
            }
            let Some(default) = &param.default else {
                return Err(ElaborateError::MissingArgument {
                    layer: block.name.name.clone(),
                    argument: param.name.name.clone(),
                    span,
                });
            };
            let value = self.eval(inner, default)?;
            inner.values.insert(param.name.name.clone(), value);
        }
        Ok(())
    }

    fn block_result(
        &self,
        inner: &Scope<'a>,
        block: &'a BlockDef,
    ) -> Result<Value, ElaborateError> {
        match inner.outs.as_slice() {
            [] => {
                let failed_out = block
                    .body
                    .iter()
                    .any(|statement| matches!(statement.kind, StatementKind::Out { .. }));
                if failed_out {
                    Err(ElaborateError::Poisoned)
                } else {
                    Err(ElaborateError::MissingOut {
                        block: block.name.name.clone(),
                        span: block.name.span,
                    })
                }
            }
            [(values, _)] if values.len() == 1 => Ok(values[0].clone()),
            [(values, _)] => Ok(Value::Tuple(values.clone())),
            [(_, first), (_, second), ..] => Err(ElaborateError::RepeatedOut {
                block: block.name.name.clone(),
                span: *second,
                previous: *first,
            }),
        }
    }

    /// A block with `state`s: its body becomes a graph of one time step, scanned over dim 1.
    fn run_cell(
        &mut self,
        scope: &mut Scope<'a>,
        inner: &mut Scope<'a>,
        block: &'a BlockDef,
        input: Value,
        path: InstancePath,
        span: Span,
    ) -> Result<Value, ElaborateError> {
        let sequence = input.expect_tensor(span)?;
        self.graphs.push(Graph::default());
        let result = self.build_cell_body(inner, block, &path, span);
        let graph = self
            .graphs
            .pop()
            .expect("the cell's graph was pushed above");
        let (step_input, states, output) = result?;
        let body = ScanBody {
            graph,
            step_input,
            states,
            output,
        };
        let op = Op::Scan {
            body: Box::new(body),
            sequence: true,
        };
        Ok(Value::Tensor(self.add_node(
            scope,
            op,
            &[sequence],
            path,
            span,
        )?))
    }

    fn build_cell_body(
        &mut self,
        inner: &mut Scope<'a>,
        block: &'a BlockDef,
        path: &InstancePath,
        span: Span,
    ) -> Result<(NodeId, Vec<ScanState>, NodeId), ElaborateError> {
        let step_op = Op::Input {
            name: "in".into(),
            shape: vec![],
            element_type: ElementType::Float32,
        };
        let step = self.add_node(inner, step_op, &[], path.clone(), span)?;
        inner.values.insert("in".into(), Value::Tensor(step));
        let mut states = Vec::new();
        for statement in &block.body {
            let StatementKind::State { name, shape } = &statement.kind else {
                continue;
            };
            let mut dims = Vec::new();
            for dim in shape {
                dims.push(self.eval_dim(inner, dim)?);
            }
            let op = Op::Input {
                name: name.name.clone(),
                shape: dims.clone(),
                element_type: ElementType::Float32,
            };
            let state = self.add_node(
                inner,
                op,
                &[],
                path.child(name.name.clone()),
                statement.span,
            )?;
            inner.values.insert(name.name.clone(), Value::Tensor(state));
            states.push((name, state, dims));
        }
        self.run_all(inner);
        let output = self
            .block_result(inner, block)?
            .expect_tensor(block.name.span)?;
        if output.level != inner.graph_level {
            let out_span = inner
                .outs
                .first()
                .map_or(block.name.span, |(_, span)| *span);
            return Err(ElaborateError::TensorFromOutsideCell {
                name: "out".into(),
                span: out_span,
            });
        }
        let mut scan_states = Vec::new();
        for (name, state, shape) in states {
            let nexts: Vec<&(String, TensorRef, Span)> = inner
                .nexts
                .iter()
                .filter(|(next, _, _)| *next == name.name)
                .collect();
            let next = match nexts.as_slice() {
                [(_, next, _)] => *next,
                [] => {
                    // A `next` that failed was already reported; do not also call it missing.
                    let failed_next = block.body.iter().any(|statement| {
                        matches!(&statement.kind, StatementKind::Next { name: next, .. } if next.name == name.name)
                    });
                    if failed_next {
                        return Err(ElaborateError::Poisoned);
                    }
                    return Err(ElaborateError::MissingNext {
                        name: name.name.clone(),
                        span: name.span,
                    });
                }
                [_, (_, _, second), ..] => {
                    return Err(ElaborateError::DuplicateDefinition {
                        name: format!("next {}", name.name),
                        span: *second,
                        previous: nexts[0].2,
                    })
                }
            };
            scan_states.push(ScanState {
                name: name.name.clone(),
                input: state.node,
                next: next.node,
                shape,
            });
        }
        for (name, _, next_span) in &inner.nexts {
            if !scan_states.iter().any(|state| state.name == *name) {
                return Err(ElaborateError::NextWithoutState {
                    name: name.clone(),
                    span: *next_span,
                });
            }
        }
        Ok((step.node, scan_states, output.node))
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

fn math_function(name: &str, args: &[EvaluatedArg], span: Span) -> Result<Value, ElaborateError> {
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
