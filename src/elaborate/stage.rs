//! Pipeline stages (`->`) and the naming rules that give every layer its instance path.

use super::builtins::BUILTIN_LAYERS;
use super::call::Callable;
use super::error::{suggest, ElaborateError};
use super::value::{mismatch, Value};
use super::*;
use crate::syntax::ast::{NamePart, NamePath, Stage, StageKind};

impl<'a> Elaborator<'a> {
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
                    // Losses take no ordinal, so adding one never renumbers the layers.
                    (Callable::Builtin(name), None) if super::loss::is_loss_function(name) => {
                        self.operator_path(scope, name)
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

    pub(super) fn apply_stages(
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
    pub(super) fn stage_path(
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

    pub(super) fn ordinal_path(&mut self, scope: &mut Scope<'a>) -> InstancePath {
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
}
