//! Stage 1: text to AST. The pest grammar in `grammar/nn.pest` does the recognizing; `parse.rs`
//! turns pest pairs into the typed AST of `ast.rs`, keeping a [`Span`] on every node.

pub mod ast;
mod build;
mod errors;
mod parse;

pub use parse::{parse_program, ParseError};

/// Which source text a span points into: the user's spec or the built-in prelude.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceId {
    Spec,
    Prelude,
}

/// A byte range in one source text. Every AST node, IR node and error carries one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub source: SourceId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(source: SourceId, start: usize, end: usize) -> Span {
        Span { source, start, end }
    }

    /// The smallest span covering both; used for expressions built from two operands.
    pub fn to(self, other: Span) -> Span {
        Span {
            source: self.source,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}
