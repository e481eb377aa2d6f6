//! Stage 1 entry: runs the pest parser on a source text and hands the pairs to the AST
//! builder (`build.rs`); failures become a [`ParseError`] (`errors.rs`).

use pest::Parser;
use pest_derive::Parser;

use super::ast::*;
use super::build::AstBuilder;
use super::errors::{lexical_error, syntax_error};
use super::{SourceId, Span};

#[derive(Parser)]
#[grammar = "../grammar/nn.pest"]
pub(super) struct NnParser;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ParseError {
    #[error("syntax error: {message}")]
    Syntax { message: String, span: Span },
    #[error("number literal `{text}` does not fit in a 64-bit integer")]
    NumberOutOfRange { text: String, span: Span },
    #[error("syntax error: unterminated string")]
    UnterminatedString { span: Span },
    /// An opening `(`, `[` or `{` with no closing match; `found` is the wrong closer, if any.
    #[error("syntax error: unclosed `{open}`")]
    UnclosedDelimiter {
        open: char,
        span: Span,
        found: Option<(char, Span)>,
    },
    #[error("syntax error: `{close}` has no matching `{open}`")]
    UnmatchedDelimiter { open: char, close: char, span: Span },
}

impl ParseError {
    /// Where the error is; for an unclosed delimiter, the opening one.
    pub fn span(&self) -> Span {
        match self {
            ParseError::Syntax { span, .. }
            | ParseError::NumberOutOfRange { span, .. }
            | ParseError::UnterminatedString { span }
            | ParseError::UnclosedDelimiter { span, .. }
            | ParseError::UnmatchedDelimiter { span, .. } => *span,
        }
    }
}

/// Parses a whole `.nn` source. Never panics: any text yields a program or an error.
pub fn parse_program(source_text: &str, source: SourceId) -> Result<Program, ParseError> {
    let mut pairs = NnParser::parse(Rule::file, source_text).map_err(|error| {
        let error = syntax_error(error, source_text, source);
        // Unbalanced brackets and unterminated strings make pest report a confusing position
        // far from the cause; when one comes first, report it instead.
        match lexical_error(source_text, source) {
            Some(lexical) if lexical.span().start <= error.span().start => lexical,
            _ => error,
        }
    })?;
    let file = pairs.next().expect("pest returns the file rule on success");
    let builder = AstBuilder::new(source);
    let mut program = Program {
        blocks: Vec::new(),
        statements: Vec::new(),
    };
    for item in file.into_inner() {
        match item.as_rule() {
            Rule::block_def => program.blocks.push(builder.block_def(item)?),
            Rule::EOI => {}
            _ => program.statements.push(builder.statement(item)?),
        }
    }
    Ok(program)
}
