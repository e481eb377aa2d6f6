//! Errors of the shape pass. Each names the layer by instance path, points at the spec, and says
//! what the numbers were.

use crate::syntax::Span;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShapeError {
    /// An output-size formula whose division is not exact and would drop input.
    #[error("{formula} is not an integer")]
    NonIntegerOutput {
        path: String,
        span: Span,
        formula: String,
        hint: String,
    },
    /// An output-size formula that gives zero or less.
    #[error("{formula} is not positive")]
    EmptyOutput {
        path: String,
        span: Span,
        formula: String,
        hint: String,
    },
    #[error("`{op}` expects {expected}, found shape {found}")]
    Rank {
        path: String,
        span: Span,
        op: String,
        expected: String,
        found: String,
    },
    #[error("{message}")]
    Mismatch {
        path: String,
        span: Span,
        message: String,
        hint: Option<String>,
    },
    #[error("`{op}` needs a known size for {what}, but it is the symbolic dimension `{symbol}`")]
    Symbolic {
        path: String,
        span: Span,
        op: String,
        what: String,
        symbol: String,
    },
    #[error("{what} has {value} elements, more than the limit of {limit}")]
    TooLarge {
        path: String,
        span: Span,
        what: String,
        value: String,
        limit: u64,
    },
    #[error("shared layer `{path}` is used with different weight shapes: {first} and {second}")]
    SharedLayerMismatch {
        path: String,
        span: Span,
        first: String,
        second: String,
        previous: Span,
    },
}

impl ShapeError {
    pub fn span(&self) -> Span {
        match self {
            ShapeError::NonIntegerOutput { span, .. }
            | ShapeError::EmptyOutput { span, .. }
            | ShapeError::Rank { span, .. }
            | ShapeError::Mismatch { span, .. }
            | ShapeError::Symbolic { span, .. }
            | ShapeError::TooLarge { span, .. }
            | ShapeError::SharedLayerMismatch { span, .. } => *span,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            ShapeError::NonIntegerOutput { path, .. }
            | ShapeError::EmptyOutput { path, .. }
            | ShapeError::Rank { path, .. }
            | ShapeError::Mismatch { path, .. }
            | ShapeError::Symbolic { path, .. }
            | ShapeError::TooLarge { path, .. }
            | ShapeError::SharedLayerMismatch { path, .. } => path,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            ShapeError::NonIntegerOutput { hint, .. } | ShapeError::EmptyOutput { hint, .. } => {
                Some(hint)
            }
            ShapeError::Mismatch { hint, .. } => hint.as_deref(),
            ShapeError::TooLarge { .. } => {
                Some("a tensor this large is almost certainly a mistake: check the dims and sizes that lead to it")
            }
            _ => None,
        }
    }
}
