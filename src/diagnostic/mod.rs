//! The boundary between stage errors and people: every stage's error enum converts into a
//! [`Diagnostic`] (a message, labelled spans, notes), rendered with source snippets by
//! `codespan-reporting`.

use codespan_reporting::diagnostic::{Diagnostic as CodespanDiagnostic, Label as CodespanLabel};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, termcolor::Buffer};

use crate::elaborate::{suggest, ElaborateError};
use crate::shape::ShapeError;
use crate::syntax::{ParseError, SourceId, Span};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            labels: vec![],
            notes: vec![],
        }
    }

    pub fn with_primary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: true,
        });
        self
    }

    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
}

impl From<&ParseError> for Diagnostic {
    fn from(error: &ParseError) -> Diagnostic {
        let diagnostic = Diagnostic::error(error.to_string());
        match error {
            ParseError::Syntax { span, .. } => diagnostic.with_primary(*span, "here"),
            ParseError::NumberOutOfRange { span, .. } => diagnostic
                .with_primary(*span, "this number")
                .with_note("hint: integers must be below 2^63 (9223372036854775807)"),
            ParseError::UnterminatedString { span } => diagnostic
                .with_primary(*span, "this string has no closing `\"`")
                .with_note("hint: a string ends with `\"` on the line where it starts"),
            ParseError::UnclosedDelimiter { open, span, found } => {
                let close = match open {
                    '(' => ')',
                    '[' => ']',
                    _ => '}',
                };
                let diagnostic = diagnostic
                    .with_primary(*span, format!("this `{open}` has no matching `{close}`"));
                match found {
                    Some((found, found_span)) => diagnostic.with_secondary(
                        *found_span,
                        format!("`{found}` found here, before any `{close}`"),
                    ),
                    None => diagnostic
                        .with_note(format!("hint: add `{close}` where the `{open}` group ends")),
                }
            }
            ParseError::UnmatchedDelimiter { close, .. } => {
                diagnostic.with_primary(error.span(), format!("this `{close}` closes nothing"))
            }
        }
    }
}

impl From<&ElaborateError> for Diagnostic {
    fn from(error: &ElaborateError) -> Diagnostic {
        let mut diagnostic = Diagnostic::error(error.to_string());
        if let Some(span) = error.span() {
            diagnostic = diagnostic.with_primary(span, primary_label(error));
        }
        match error {
            ElaborateError::UnknownName {
                suggestion: Some(suggestion),
                ..
            }
            | ElaborateError::UnknownLayer {
                suggestion: Some(suggestion),
                ..
            } => {
                diagnostic = diagnostic.with_note(format!("hint: did you mean `{suggestion}`?"));
            }
            ElaborateError::DuplicateDefinition { previous, span, .. }
            | ElaborateError::DuplicateInstanceName { previous, span, .. }
            | ElaborateError::RepeatedOut { previous, span, .. }
                if previous != span =>
            {
                diagnostic = diagnostic.with_secondary(*previous, "first defined here");
            }
            ElaborateError::SecondLoss { previous, .. } => {
                diagnostic = diagnostic
                    .with_secondary(*previous, "the first `loss`")
                    .with_note("hint: add the terms into one loss: `loss total = a + 0.5 * b`");
            }
            ElaborateError::UnknownArgument { expected, .. } if !expected.is_empty() => {
                diagnostic =
                    diagnostic.with_note(format!("expected one of: {}", expected.join(", ")));
            }
            ElaborateError::InvalidArgument {
                hint: Some(hint), ..
            } => {
                diagnostic = diagnostic.with_note(format!("hint: {hint}"));
            }
            ElaborateError::DuplicateInstanceName { .. } => {
                diagnostic = diagnostic.with_note("hint: give one of them another name with `as`, or declare a `layer` to share weights");
            }
            ElaborateError::UnusedInput { .. } => {
                diagnostic = diagnostic.with_note(
                    "hint: connect it to an `output` or the `loss`, or remove the `input`",
                );
            }
            ElaborateError::NoOutput { .. } => {
                diagnostic = diagnostic.with_note(
                    "hint: name what the network computes with `output name = expression`",
                );
            }
            ElaborateError::NoInput { .. } => {
                diagnostic = diagnostic.with_note(
                    "hint: declare the network's input, e.g. `input image: [N, 3, 224, 224]`",
                );
            }
            ElaborateError::NextWithoutState { name, .. } => {
                diagnostic = diagnostic.with_note(format!(
                    "hint: declare the state in the block, e.g. `state {name}: [64]` (its shape without the batch dim)"
                ));
            }
            ElaborateError::RecursionLimit { .. } => {
                diagnostic = diagnostic.with_note(
                    "hint: a block cannot apply itself, directly or through another block; stack copies with `repeat n { ... }`",
                );
            }
            ElaborateError::MisplacedStatement { statement, .. } if statement == "input" => {
                diagnostic = diagnostic.with_note(
                    "hint: declare inputs at the top level and pass tensors to the block as arguments",
                );
            }
            ElaborateError::UnknownOverride {
                what,
                name,
                declared,
                ..
            } => {
                let names = declared.iter().map(String::as_str);
                diagnostic = match suggest(name, names) {
                    Some(suggestion) => {
                        diagnostic.with_note(format!("hint: did you mean `{suggestion}`?"))
                    }
                    None if declared.is_empty() => {
                        diagnostic.with_note(format!("the spec declares no {what}s"))
                    }
                    None => {
                        diagnostic.with_note(format!("the spec declares: {}", declared.join(", ")))
                    }
                };
            }
            _ => {}
        }
        diagnostic
    }
}

fn primary_label(error: &ElaborateError) -> &'static str {
    match error {
        ElaborateError::UnknownName { .. } => "not defined in this block or as a top-level param",
        ElaborateError::UnknownLayer { .. } => "not a built-in layer or a block",
        ElaborateError::DuplicateDefinition { .. } => "defined again here",
        ElaborateError::DuplicateInstanceName { .. } => "this name is already taken",
        ElaborateError::Cycle { .. } => "this use closes the cycle",
        ElaborateError::TypeMismatch { .. } => "this value",
        ElaborateError::DivisionByZero { .. } => "this divisor is zero",
        ElaborateError::RecursionLimit { .. } => "applied inside itself here",
        ElaborateError::NoOutput { .. } | ElaborateError::NoInput { .. } => "in this spec",
        _ => "here",
    }
}

impl From<&ShapeError> for Diagnostic {
    fn from(error: &ShapeError) -> Diagnostic {
        let mut diagnostic = Diagnostic::error(error.to_string())
            .with_primary(error.span(), format!("in `{}`", error.path()))
            .with_note(format!("instance path: {}", error.path()));
        if let ShapeError::SharedLayerMismatch { previous, .. } = error {
            diagnostic = diagnostic.with_secondary(*previous, "first used here");
        }
        if let Some(hint) = error.hint() {
            diagnostic = diagnostic.with_note(format!("hint: {hint}"));
        }
        diagnostic
    }
}

/// The texts that spans point into, for rendering.
pub struct Sources<'a> {
    pub spec_name: &'a str,
    pub spec_text: &'a str,
    pub prelude_text: &'a str,
}

/// Renders diagnostics as plain text with source snippets (no colors), one after another.
pub fn render(diagnostics: &[Diagnostic], sources: &Sources) -> String {
    let mut files = SimpleFiles::new();
    let spec = files.add(sources.spec_name.to_string(), sources.spec_text.to_string());
    let prelude = files.add("<prelude>".to_string(), sources.prelude_text.to_string());
    let file_of = |span: &Span| match span.source {
        SourceId::Spec => spec,
        SourceId::Prelude => prelude,
    };
    let config = term::Config::default();
    let mut buffer = Buffer::no_color();
    for diagnostic in diagnostics {
        let base = match diagnostic.severity {
            Severity::Error => CodespanDiagnostic::error(),
            Severity::Warning => CodespanDiagnostic::warning(),
        };
        let labels = diagnostic
            .labels
            .iter()
            .map(|label| {
                let text_len = match label.span.source {
                    SourceId::Spec => sources.spec_text.len(),
                    SourceId::Prelude => sources.prelude_text.len(),
                };
                let range = label.span.start.min(text_len)..label.span.end.min(text_len);
                let made = if label.primary {
                    CodespanLabel::primary(file_of(&label.span), range)
                } else {
                    CodespanLabel::secondary(file_of(&label.span), range)
                };
                made.with_message(label.message.clone())
            })
            .collect();
        let rendered = base
            .with_message(diagnostic.message.clone())
            .with_labels(labels)
            .with_notes(diagnostic.notes.clone());
        if term::emit_to_write_style(&mut buffer, &config, &files, &rendered).is_err() {
            // Rendering only fails on spans outside the text, which the clamping above rules out.
            buffer = Buffer::no_color();
        }
    }
    String::from_utf8_lossy(buffer.as_slice()).into_owned()
}
