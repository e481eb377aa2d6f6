//! Errors of the elaboration stage: everything that is wrong with a spec's meaning, as opposed to
//! its syntax (parse errors) or its tensor shapes (shape errors).

use crate::syntax::Span;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ElaborateError {
    #[error("unknown name `{name}`")]
    UnknownName {
        name: String,
        span: Span,
        suggestion: Option<String>,
    },
    #[error("unknown layer or block `{name}`")]
    UnknownLayer {
        name: String,
        span: Span,
        suggestion: Option<String>,
    },
    #[error("`{name}` is defined twice")]
    DuplicateDefinition {
        name: String,
        span: Span,
        previous: Span,
    },
    #[error("instance name `{path}` is used by two different layers")]
    DuplicateInstanceName {
        path: String,
        span: Span,
        previous: Span,
    },
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String>, span: Span },
    #[error("`{layer}` has no argument named `{argument}`")]
    UnknownArgument {
        layer: String,
        argument: String,
        span: Span,
        expected: Vec<String>,
    },
    #[error("`{layer}` is missing its argument `{argument}`")]
    MissingArgument {
        layer: String,
        argument: String,
        span: Span,
    },
    #[error("`{layer}` takes {expected} positional argument(s) but {found} were given")]
    TooManyArguments {
        layer: String,
        expected: usize,
        found: usize,
        span: Span,
    },
    #[error("argument `{argument}` is given twice")]
    RepeatedArgument { argument: String, span: Span },
    #[error("expected {expected}, found {found}")]
    TypeMismatch {
        expected: String,
        found: String,
        span: Span,
    },
    #[error("{message}")]
    InvalidArgument {
        message: String,
        span: Span,
        hint: Option<String>,
    },
    #[error("arithmetic overflow in `{expression}`")]
    Overflow { expression: String, span: Span },
    #[error("division by zero")]
    DivisionByZero { span: Span },
    #[error("block `{block}` has no `out` statement")]
    MissingOut { block: String, span: Span },
    #[error("block `{block}` has more than one `out` statement")]
    RepeatedOut {
        block: String,
        span: Span,
        previous: Span,
    },
    #[error("`{statement}` is only allowed {place}")]
    MisplacedStatement {
        statement: String,
        place: String,
        span: Span,
    },
    #[error("blocks nest deeper than {limit} levels (is `{block}` recursive?)")]
    RecursionLimit {
        block: String,
        limit: usize,
        span: Span,
    },
    #[error("{what} of {count} exceeds the limit of {limit}")]
    TooLarge {
        what: String,
        count: i128,
        limit: i128,
        span: Span,
    },
    #[error("a spec has at most one `loss` statement; this is a second one")]
    SecondLoss { span: Span, previous: Span },
    #[error("input `{name}` is not used by any output or the loss")]
    UnusedInput { name: String, span: Span },
    #[error("the network declares no `output`")]
    NoOutput { span: Span },
    #[error("the network declares no `input`")]
    NoInput { span: Span },
    #[error("state `{name}` has no `next {name} = ...` statement")]
    MissingNext { name: String, span: Span },
    #[error("`next {name}` does not name a `state` of this block")]
    NextWithoutState { name: String, span: Span },
    #[error("{what} `{name}` is set on the command line but the spec declares no such {what}")]
    UnknownOverride {
        what: String,
        name: String,
        /// Not shown: the mistake is on the command line, not in the spec.
        span: Span,
        /// The names of that kind the spec does declare.
        declared: Vec<String>,
    },
    #[error("a cell can only read its input, its states and numbers; `{name}` reads a tensor from outside the cell")]
    TensorFromOutsideCell { name: String, span: Span },
    /// A value that failed earlier was used again; the first error was already reported.
    #[error("(an earlier error)")]
    Poisoned,
}

impl ElaborateError {
    pub fn span(&self) -> Option<Span> {
        use ElaborateError::*;
        match self {
            UnknownName { span, .. }
            | UnknownLayer { span, .. }
            | DuplicateDefinition { span, .. }
            | DuplicateInstanceName { span, .. }
            | Cycle { span, .. }
            | UnknownArgument { span, .. }
            | MissingArgument { span, .. }
            | TooManyArguments { span, .. }
            | RepeatedArgument { span, .. }
            | TypeMismatch { span, .. }
            | InvalidArgument { span, .. }
            | Overflow { span, .. }
            | DivisionByZero { span }
            | MissingOut { span, .. }
            | RepeatedOut { span, .. }
            | SecondLoss { span, .. }
            | MisplacedStatement { span, .. }
            | RecursionLimit { span, .. }
            | TooLarge { span, .. }
            | UnusedInput { span, .. }
            | NoOutput { span }
            | NoInput { span }
            | MissingNext { span, .. }
            | NextWithoutState { span, .. }
            | TensorFromOutsideCell { span, .. } => Some(*span),
            UnknownOverride { .. } | Poisoned => None,
        }
    }

    pub fn invalid(message: impl Into<String>, span: Span) -> ElaborateError {
        ElaborateError::InvalidArgument {
            message: message.into(),
            span,
            hint: None,
        }
    }
}

/// The closest candidate by edit distance, if it is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    crate::suggest::closest(name, candidates, 3)
}
