//! Values of the elaboration-time language: numbers, booleans, strings, symbolic dimensions,
//! tensors (graph nodes), tuples, lists and layer values.

use std::rc::Rc;

use super::error::ElaborateError;
use crate::ir::{InstancePath, NodeId, SymbolId};
use crate::syntax::ast::Ident;
use crate::syntax::Span;

#[derive(Clone, Debug)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A symbolic dimension such as `N`.
    Symbol(SymbolId),
    Tensor(TensorRef),
    /// What `split` and multi-value `out` return; destructured by `a, b = ...`.
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Layer(Rc<LayerValue>),
}

/// A node in the graph at nesting `level` (0 is the network; each cell body is one deeper).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub node: NodeId,
    pub level: usize,
}

/// `layer encoder = dense(128)`: a layer with fixed arguments and a fixed instance path, so that
/// every application shares one set of weights.
#[derive(Clone, Debug)]
pub struct LayerValue {
    pub callee: Ident,
    pub args: Vec<EvaluatedArg>,
    pub path: InstancePath,
    /// Identifies the layer for the duplicate-name check: applications of one layer value may
    /// reuse its instance paths, nothing else may.
    pub owner: usize,
}

#[derive(Clone, Debug)]
pub struct EvaluatedArg {
    pub name: Option<String>,
    pub name_span: Option<Span>,
    pub value: Value,
    pub span: Span,
}

impl Value {
    /// A short description for "expected ..., found ..." messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Int(number) => format!("the integer {number}"),
            Value::Float(number) => format!("the number {number}"),
            Value::Bool(flag) => format!("the boolean {flag}"),
            Value::Str(text) => format!("the string \"{text}\""),
            Value::Symbol(_) => "a symbolic dimension".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Tuple(items) => format!("a tuple of {} values", items.len()),
            Value::List(items) => format!("a list of {} values", items.len()),
            Value::Layer(layer) => format!("the layer `{}`", layer.callee.name),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(number) => Some(*number as f64),
            Value::Float(number) => Some(*number),
            _ => None,
        }
    }

    /// An integer, accepting floats with no fractional part (`c / 2` when `c` is even).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(number) => Some(*number),
            Value::Float(number) if number.fract() == 0.0 && number.abs() < 9.0e15 => {
                Some(*number as i64)
            }
            _ => None,
        }
    }

    pub fn expect_i64(&self, span: Span) -> Result<i64, ElaborateError> {
        self.as_i64()
            .ok_or_else(|| mismatch("an integer", self, span))
    }

    pub fn expect_f64(&self, span: Span) -> Result<f64, ElaborateError> {
        self.as_f64()
            .ok_or_else(|| mismatch("a number", self, span))
    }

    pub fn expect_bool(&self, span: Span) -> Result<bool, ElaborateError> {
        match self {
            Value::Bool(flag) => Ok(*flag),
            other => Err(mismatch("a boolean", other, span)),
        }
    }

    pub fn expect_tensor(&self, span: Span) -> Result<TensorRef, ElaborateError> {
        match self {
            Value::Tensor(tensor) => Ok(*tensor),
            other => Err(mismatch("a tensor", other, span)),
        }
    }
}

pub fn mismatch(expected: &str, found: &Value, span: Span) -> ElaborateError {
    ElaborateError::TypeMismatch {
        expected: expected.to_string(),
        found: found.describe(),
        span,
    }
}
