//! Binding call arguments to a layer's parameter list, and reading them with types and ranges
//! checked. Every message names the layer and points at the offending argument.

use std::collections::HashMap;

use super::error::ElaborateError;
use super::value::{mismatch, EvaluatedArg, Value};
use crate::syntax::Span;

/// Arguments bound to parameter names, ready to be read with [`BoundArgs::int`] and friends.
pub struct BoundArgs {
    layer: String,
    values: HashMap<&'static str, (Value, Span)>,
    call_span: Span,
}

/// Binds positional arguments in order, then named ones; rejects unknown and repeated names.
pub fn bind(
    layer: &str,
    signature: &[&'static str],
    args: &[EvaluatedArg],
    call_span: Span,
) -> Result<BoundArgs, ElaborateError> {
    let mut values = HashMap::new();
    let mut position = 0;
    for arg in args {
        let slot = match &arg.name {
            None => {
                let Some(slot) = signature.get(position) else {
                    let found = args.iter().filter(|arg| arg.name.is_none()).count();
                    return Err(ElaborateError::TooManyArguments {
                        layer: layer.to_string(),
                        expected: signature.len(),
                        found,
                        span: arg.span,
                    });
                };
                position += 1;
                *slot
            }
            Some(name) => *signature
                .iter()
                .find(|slot| **slot == name.as_str())
                .ok_or_else(|| ElaborateError::UnknownArgument {
                    layer: layer.to_string(),
                    argument: name.clone(),
                    span: arg.name_span.unwrap_or(arg.span),
                    expected: signature.iter().map(|slot| slot.to_string()).collect(),
                })?,
        };
        if values.insert(slot, (arg.value.clone(), arg.span)).is_some() {
            return Err(ElaborateError::RepeatedArgument {
                argument: slot.to_string(),
                span: arg.span,
            });
        }
    }
    Ok(BoundArgs {
        layer: layer.to_string(),
        values,
        call_span,
    })
}

/// Sizes beyond this are certainly mistakes and would overflow cost arithmetic downstream.
pub const MAX_SIZE: i64 = 1 << 40;

impl BoundArgs {
    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&(Value, Span)> {
        self.values.get(name)
    }

    pub fn span_of(&self, name: &str) -> Span {
        self.values
            .get(name)
            .map(|(_, span)| *span)
            .unwrap_or(self.call_span)
    }

    fn required(&self, name: &str) -> Result<&(Value, Span), ElaborateError> {
        self.values
            .get(name)
            .ok_or_else(|| ElaborateError::MissingArgument {
                layer: self.layer.clone(),
                argument: name.to_string(),
                span: self.call_span,
            })
    }

    pub fn int(&self, name: &str, default: Option<i64>) -> Result<i64, ElaborateError> {
        match (self.values.get(name), default) {
            (None, Some(default)) => Ok(default),
            _ => {
                let (value, span) = self.required(name)?;
                value.expect_i64(*span)
            }
        }
    }

    /// An integer in `minimum..=MAX_SIZE`.
    pub fn size(
        &self,
        name: &str,
        default: Option<u64>,
        minimum: u64,
    ) -> Result<u64, ElaborateError> {
        let value = self.int(name, default.map(|default| default as i64))?;
        self.check_range(name, value, minimum)
    }

    fn check_range(&self, name: &str, value: i64, minimum: u64) -> Result<u64, ElaborateError> {
        let span = self.span_of(name);
        if value < minimum as i64 {
            return Err(ElaborateError::invalid(
                format!(
                    "`{}` of `{}` must be at least {minimum}, found {value}",
                    name, self.layer
                ),
                span,
            ));
        }
        if value > MAX_SIZE {
            return Err(ElaborateError::TooLarge {
                what: format!("`{name}`"),
                count: value as i128,
                limit: MAX_SIZE as i128,
                span,
            });
        }
        Ok(value as u64)
    }

    /// A size for height and width: `3` means `[3, 3]`, `[3, 5]` is height 3, width 5.
    pub fn pair(
        &self,
        name: &str,
        default: Option<[u64; 2]>,
        minimum: u64,
    ) -> Result<[u64; 2], ElaborateError> {
        let Some((value, span)) = self.values.get(name) else {
            return default.ok_or_else(|| ElaborateError::MissingArgument {
                layer: self.layer.clone(),
                argument: name.to_string(),
                span: self.call_span,
            });
        };
        let items: Vec<i64> = match value {
            Value::List(items) if items.len() == 2 => items
                .iter()
                .map(|item| item.expect_i64(*span))
                .collect::<Result<_, _>>()?,
            Value::List(items) => {
                return Err(ElaborateError::invalid(
                    format!(
                    "`{name}` takes one size or a list of two ([height, width]), found {} values",
                    items.len()
                ),
                    *span,
                ))
            }
            other => vec![other.expect_i64(*span)?; 2],
        };
        Ok([
            self.check_range(name, items[0], minimum)?,
            self.check_range(name, items[1], minimum)?,
        ])
    }

    pub fn float(&self, name: &str, default: f64) -> Result<f64, ElaborateError> {
        match self.values.get(name) {
            None => Ok(default),
            Some((value, span)) => {
                let number = value.expect_f64(*span)?;
                if !number.is_finite() {
                    return Err(ElaborateError::invalid(
                        format!("`{name}` must be finite"),
                        *span,
                    ));
                }
                Ok(number)
            }
        }
    }

    /// A probability in `[0, 1)`.
    pub fn probability(&self, name: &str, default: f64) -> Result<f64, ElaborateError> {
        let p = self.float(name, default)?;
        if !(0.0..1.0).contains(&p) {
            return Err(ElaborateError::invalid(
                format!("`{name}` of `{}` must be in [0, 1), found {p}", self.layer),
                self.span_of(name),
            ));
        }
        Ok(p)
    }

    pub fn boolean(&self, name: &str, default: bool) -> Result<bool, ElaborateError> {
        match self.values.get(name) {
            None => Ok(default),
            Some((value, span)) => value.expect_bool(*span),
        }
    }

    pub fn value(&self, name: &str) -> Result<(Value, Span), ElaborateError> {
        self.required(name).cloned()
    }

    pub fn string(&self, name: &str) -> Option<(String, Span)> {
        match self.values.get(name) {
            Some((Value::Str(text), span)) => Some((text.clone(), *span)),
            _ => None,
        }
    }

    pub fn type_error(&self, name: &str, expected: &str) -> ElaborateError {
        match self.values.get(name) {
            Some((value, span)) => mismatch(expected, value, *span),
            None => ElaborateError::MissingArgument {
                layer: self.layer.clone(),
                argument: name.to_string(),
                span: self.call_span,
            },
        }
    }
}
