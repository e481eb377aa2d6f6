//! Turning pest's failures into messages people can act on: what was expected, in words; what
//! was found; and, before that, a scan for unbalanced brackets and unterminated strings, which
//! pest would report far from their cause.

use super::parse::{ParseError, Rule};
use super::SourceId;
use super::Span;

pub(super) fn syntax_error(
    error: pest::error::Error<Rule>,
    text: &str,
    source: SourceId,
) -> ParseError {
    let (start, end) = match error.location {
        pest::error::InputLocation::Pos(position) => (position, position),
        pest::error::InputLocation::Span((start, end)) => (start, end),
    };
    let message = match &error.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut expected: Vec<&str> = positives
                .iter()
                .filter_map(|rule| describe_rule(*rule))
                .collect();
            // After a complete statement anything may start the next one; say so in two words
            // instead of listing every statement keyword.
            let statement_starts = [
                "`block`",
                "`input`",
                "`param`",
                "`dim`",
                "`layer`",
                "`output`",
                "`out`",
                "`state`",
                "`next`",
                "an assignment",
                "a name",
            ];
            if positives
                .iter()
                .any(|rule| matches!(rule, Rule::kw_input | Rule::input_stmt | Rule::block_def))
            {
                expected.retain(|item| !statement_starts.contains(item));
                expected.push("a new statement");
            }
            // `->` is a silent rule; it may follow wherever `as` may (after a stage).
            if expected.contains(&"`as`") {
                expected.push("`->`");
            }
            expected.sort();
            expected.dedup();
            let found = describe_found(text, start);
            match expected.len() {
                0 => format!("unexpected {found}"),
                1 => format!("unexpected {found}, expected {}", expected[0]),
                _ => {
                    let last = expected.pop().unwrap_or_default();
                    format!(
                        "unexpected {found}, expected {} or {}",
                        expected.join(", "),
                        last
                    )
                }
            }
        }
        // pest stops when its recursion would exhaust the stack.
        pest::error::ErrorVariant::CustomError { message } if message.contains("limit reached") => {
            "brackets or expressions nest too deeply to parse".to_string()
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    ParseError::Syntax {
        message,
        span: Span::new(source, start, end),
    }
}

/// The token at `position`, for "unexpected ..." messages: a word, an operator or a character.
fn describe_found(text: &str, position: usize) -> String {
    let rest = text.get(position..).unwrap_or_default();
    let Some(first) = rest.chars().next() else {
        return "end of file".into();
    };
    if first == '\n' || first == '\r' {
        return "end of line".into();
    }
    let word_char = |c: char| c.is_alphanumeric() || c == '_';
    let token: String = if word_char(first) {
        rest.chars()
            .take_while(|c| word_char(*c))
            .take(40)
            .collect()
    } else if ["->", "==", "!=", "<=", ">=", "//", ".."]
        .iter()
        .any(|operator| rest.starts_with(operator))
    {
        rest.chars().take(2).collect()
    } else {
        first.to_string()
    };
    format!("`{token}`")
}

/// Strings that do not end on their line and brackets that do not match, found by a scan that
/// skips comments and strings. `None` when the text is lexically fine.
pub(super) fn lexical_error(text: &str, source: SourceId) -> Option<ParseError> {
    let span = |start: usize, end: usize| Span::new(source, start, end);
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((position, c)) = chars.next() {
        match c {
            '#' => while chars.next_if(|(_, c)| *c != '\n').is_some() {},
            '"' => {
                let mut closed = false;
                let mut end = text.len();
                while let Some((next_position, next)) = chars.next_if(|(_, c)| *c != '\n') {
                    if next == '"' {
                        closed = true;
                        break;
                    }
                    end = next_position + next.len_utf8();
                }
                if !closed {
                    let end = end.max(position + 1);
                    return Some(ParseError::UnterminatedString {
                        span: span(position, end.min(text.len())),
                    });
                }
            }
            '(' | '[' | '{' => open.push((c, position)),
            ')' | ']' | '}' => {
                let expected_open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                match open.pop() {
                    Some((opener, _)) if opener == expected_open => {}
                    Some((opener, opener_position)) => {
                        return Some(ParseError::UnclosedDelimiter {
                            open: opener,
                            span: span(opener_position, opener_position + 1),
                            found: Some((c, span(position, position + 1))),
                        })
                    }
                    None => {
                        return Some(ParseError::UnmatchedDelimiter {
                            open: expected_open,
                            close: c,
                            span: span(position, position + 1),
                        })
                    }
                }
            }
            _ => {}
        }
    }
    open.pop()
        .map(|(opener, position)| ParseError::UnclosedDelimiter {
            open: opener,
            span: span(position, position + 1),
            found: None,
        })
}

/// Words for grammar rules in "expected ..." messages; `None` hides rules people don't think in.
fn describe_rule(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::block_def => "`block`",
        Rule::input_stmt | Rule::kw_input => "`input`",
        Rule::param_stmt | Rule::kw_param => "`param`",
        Rule::dim_stmt | Rule::kw_dim => "`dim`",
        Rule::layer_stmt | Rule::kw_layer => "`layer`",
        Rule::output_stmt | Rule::kw_output => "`output`",
        Rule::out_stmt | Rule::kw_out => "`out`",
        Rule::state_stmt | Rule::kw_state => "`state`",
        Rule::next_stmt | Rule::kw_next => "`next`",
        Rule::assign_stmt => "an assignment",
        Rule::ident | Rule::name_ref => "a name",
        Rule::expr
        | Rule::pipeline
        | Rule::or_expr
        | Rule::and_expr
        | Rule::cmp_expr
        | Rule::sum_expr
        | Rule::prod_expr
        | Rule::unary_expr
        | Rule::number
        | Rule::call
        | Rule::paren
        | Rule::list
        | Rule::if_expr
        | Rule::boolean
        | Rule::string => "an expression",
        Rule::stage
        | Rule::apply_stage
        | Rule::group_stage
        | Rule::repeat_stage
        | Rule::if_stage
        | Rule::stage_chain => "a layer",
        Rule::name_path | Rule::name_segment | Rule::name_text => "an instance name",
        Rule::arg => "an argument",
        Rule::param_decl | Rule::param_list => "a parameter",
        Rule::shape_list => "a shape like `[N, 3, 32, 32]`",
        Rule::dtype => "an element type (`int` or `float`)",
        Rule::op_or
        | Rule::op_and
        | Rule::op_cmp
        | Rule::op_add
        | Rule::op_sub
        | Rule::op_mul
        | Rule::op_div
        | Rule::op_floordiv
        | Rule::op_mod => "an operator",
        Rule::kw_as => "`as`",
        Rule::range_or_count => "a count or range",
        _ => return None,
    })
}
