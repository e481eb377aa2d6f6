//! pest pairs to AST. Every function here consumes one grammar rule; the grammar guarantees the
//! shape of the pairs, so a mismatch is a bug in this file and is reported as one.

use pest::iterators::Pair;

use super::ast::*;
use super::parse::{ParseError, Rule};
use super::{SourceId, Span};

pub(super) struct AstBuilder {
    source: SourceId,
    /// Current nesting of expressions and stages, bounded by [`MAX_NESTING`].
    depth: std::cell::Cell<usize>,
}

/// Expressions and stages nest at most this deep (lists, calls, conditionals, groups, chains of
/// operators). Deeper input is an error here rather than a stack overflow in the recursive
/// stages after parsing.
const MAX_NESTING: usize = 200;

/// The end of `input[start..end]` without trailing whitespace and `#` comments.
fn significant_end(input: &str, start: usize, end: usize) -> usize {
    let mut end = end;
    loop {
        let trimmed = input[start..end].trim_end_matches([' ', '\t', '\r', '\n']);
        let trimmed_end = start + trimmed.len();
        if !trimmed.contains('#') {
            return trimmed_end;
        }
        let line_start = input[..trimmed_end]
            .rfind('\n')
            .map_or(0, |newline| newline + 1);
        match comment_start(&input[line_start..trimmed_end]) {
            Some(offset) if line_start + offset >= start => end = line_start + offset,
            _ => return trimmed_end,
        }
    }
}

/// Where a `#` comment begins in one line, outside strings (which cannot span lines).
fn comment_start(line: &str) -> Option<usize> {
    let mut in_string = false;
    for (offset, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return Some(offset),
            _ => {}
        }
    }
    None
}

/// A grammar/AST mismatch: the grammar promised a shape that this file did not find.
fn internal_bug(pair: &Pair<Rule>) -> ! {
    panic!(
        "internal error (a bug in nnc): unexpected grammar rule {:?} in the AST builder",
        pair.as_rule()
    )
}

impl AstBuilder {
    pub(super) fn new(source: SourceId) -> AstBuilder {
        AstBuilder {
            source,
            depth: std::cell::Cell::new(0),
        }
    }

    /// The pair's span without trailing whitespace and comments, which pest's implicit
    /// whitespace leaves at the end of rules that end in an optional or repeated part.
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let span = pair.as_span();
        let end = significant_end(span.get_input(), span.start(), span.end());
        Span::new(self.source, span.start(), end)
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    pub(super) fn block_def(&self, pair: Pair<Rule>) -> Result<BlockDef, ParseError> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let name = self.ident(inner.next().expect("block name"));
        let mut params = Vec::new();
        let mut body = Vec::new();
        for part in inner {
            match part.as_rule() {
                Rule::param_list => {
                    for declaration in part.into_inner() {
                        let mut parts = declaration.into_inner();
                        let name = self.ident(parts.next().expect("parameter name"));
                        let default = parts.next().map(|value| self.expr(value)).transpose()?;
                        params.push(ParamDecl { name, default });
                    }
                }
                _ => body.push(self.statement(part)?),
            }
        }
        Ok(BlockDef {
            name,
            params,
            body,
            span,
        })
    }

    pub(super) fn statement(&self, pair: Pair<Rule>) -> Result<Statement, ParseError> {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut inner = pair.into_inner().filter(|part| {
            !matches!(
                part.as_rule(),
                Rule::kw_input
                    | Rule::kw_param
                    | Rule::kw_dim
                    | Rule::kw_layer
                    | Rule::kw_output
                    | Rule::kw_loss
                    | Rule::kw_out
                    | Rule::kw_state
                    | Rule::kw_next
            )
        });
        let kind = match rule {
            Rule::input_stmt => {
                let name = self.ident(inner.next().expect("input name"));
                let shape = self.shape_list(inner.next().expect("input shape"))?;
                let element_type = match inner.next().map(|dtype| dtype.as_str().to_string()) {
                    Some(text) if text == "int" => ElementType::Int,
                    _ => ElementType::Float,
                };
                StatementKind::Input {
                    name,
                    shape,
                    element_type,
                }
            }
            Rule::param_stmt | Rule::dim_stmt | Rule::layer_stmt | Rule::next_stmt => {
                let name = self.ident(inner.next().expect("statement name"));
                let value = self.expr(inner.next().expect("statement value"))?;
                match rule {
                    Rule::param_stmt => StatementKind::Param { name, value },
                    Rule::dim_stmt => StatementKind::Dim { name, value },
                    Rule::layer_stmt => StatementKind::Layer { name, value },
                    _ => StatementKind::Next { name, value },
                }
            }
            Rule::output_stmt => {
                let name = self.ident(inner.next().expect("output name"));
                let value = inner.next().map(|value| self.expr(value)).transpose()?;
                StatementKind::Output { name, value }
            }
            Rule::loss_stmt => {
                let mut parts: Vec<Pair<Rule>> = inner.collect();
                let value = self.expr(parts.pop().expect("loss value"))?;
                let name = parts.pop().map(|name| self.ident(name));
                StatementKind::Loss { name, value }
            }
            Rule::out_stmt => StatementKind::Out {
                values: inner
                    .map(|value| self.expr(value))
                    .collect::<Result<_, _>>()?,
            },
            Rule::state_stmt => {
                let name = self.ident(inner.next().expect("state name"));
                let shape = self.shape_list(inner.next().expect("state shape"))?;
                StatementKind::State { name, shape }
            }
            Rule::assign_stmt => {
                let mut targets = Vec::new();
                let mut value = None;
                for part in inner {
                    match part.as_rule() {
                        Rule::ident => targets.push(self.ident(part)),
                        _ => value = Some(self.expr(part)?),
                    }
                }
                StatementKind::Assign {
                    targets,
                    value: value.expect("assignment value"),
                }
            }
            _ => {
                return Err(ParseError::Syntax {
                    message: format!("unexpected {rule:?}"),
                    span,
                })
            }
        };
        Ok(Statement { kind, span })
    }

    fn shape_list(&self, pair: Pair<Rule>) -> Result<Vec<Expr>, ParseError> {
        pair.into_inner().map(|dim| self.expr(dim)).collect()
    }

    /// Runs `build` `levels` nesting levels deeper, or fails when that is too deep.
    fn nested<T>(
        &self,
        levels: usize,
        span: Span,
        build: impl FnOnce() -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        let outer = self.depth.get();
        if outer + levels > MAX_NESTING {
            return Err(ParseError::Syntax {
                message: format!("expressions nest more than {MAX_NESTING} levels deep here"),
                span,
            });
        }
        self.depth.set(outer + levels);
        let result = build();
        self.depth.set(outer);
        result
    }

    fn expr(&self, pair: Pair<Rule>) -> Result<Expr, ParseError> {
        // Rules with a single child (`(x)`, a pipeline without stages, an operator chain of one
        // operand) stand for that child: step into it without recursing.
        let mut pair = pair;
        loop {
            let single_child = match pair.as_rule() {
                Rule::expr | Rule::paren => true,
                Rule::pipeline
                | Rule::or_expr
                | Rule::and_expr
                | Rule::cmp_expr
                | Rule::sum_expr
                | Rule::prod_expr
                | Rule::unary_expr => pair.clone().into_inner().count() == 1,
                _ => false,
            };
            if !single_child {
                break;
            }
            pair = pair.into_inner().next().expect("a single inner rule");
        }
        let span = self.span(&pair);
        self.nested(1, span, || self.expr_node(pair))
    }

    fn expr_node(&self, pair: Pair<Rule>) -> Result<Expr, ParseError> {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::expr | Rule::paren => {
                self.expr(pair.into_inner().next().expect("inner expression"))
            }
            Rule::pipeline => {
                let mut inner = pair.into_inner();
                let input = self.expr(inner.next().expect("pipeline head"))?;
                let stages = inner
                    .map(|stage| self.stage(stage))
                    .collect::<Result<Vec<_>, _>>()?;
                if stages.is_empty() {
                    return Ok(input);
                }
                Ok(Expr {
                    kind: ExprKind::Pipe {
                        input: Box::new(input),
                        stages,
                    },
                    span,
                })
            }
            Rule::or_expr | Rule::and_expr | Rule::cmp_expr | Rule::sum_expr | Rule::prod_expr => {
                self.binary_chain(pair)
            }
            Rule::unary_expr => {
                let mut operators = Vec::new();
                let mut operand = None;
                for part in pair.into_inner() {
                    match part.as_rule() {
                        Rule::op_neg => operators.push(UnaryOperator::Neg),
                        Rule::op_not => operators.push(UnaryOperator::Not),
                        _ => operand = Some(self.expr(part)?),
                    }
                }
                let mut value = operand.expect("unary operand");
                for op in operators.into_iter().rev() {
                    // Fold `-3` into a literal so that `-1` in `reshape(0, -1)` is a plain number.
                    value = match (op, value.kind) {
                        (UnaryOperator::Neg, ExprKind::Int(number)) => Expr {
                            kind: ExprKind::Int(-number),
                            span,
                        },
                        (UnaryOperator::Neg, ExprKind::Float(number)) => Expr {
                            kind: ExprKind::Float(-number),
                            span,
                        },
                        (op, kind) => Expr {
                            kind: ExprKind::Unary {
                                op,
                                operand: Box::new(Expr {
                                    kind,
                                    span: value.span,
                                }),
                            },
                            span,
                        },
                    };
                }
                Ok(value)
            }
            Rule::number => self.number(pair),
            Rule::boolean => Ok(Expr {
                kind: ExprKind::Bool(pair.as_str() == "true"),
                span,
            }),
            Rule::string => {
                let text = pair.as_str();
                Ok(Expr {
                    kind: ExprKind::Str(text[1..text.len() - 1].to_string()),
                    span,
                })
            }
            Rule::name_ref => Ok(Expr {
                kind: ExprKind::Name(pair.as_str().to_string()),
                span,
            }),
            Rule::list => {
                let items = pair
                    .into_inner()
                    .map(|item| self.expr(item))
                    .collect::<Result<_, _>>()?;
                Ok(Expr {
                    kind: ExprKind::List(items),
                    span,
                })
            }
            Rule::call => {
                let mut inner = pair.into_inner();
                let callee = self.ident(inner.next().expect("callee"));
                let args = inner.map(|arg| self.arg(arg)).collect::<Result<_, _>>()?;
                Ok(Expr {
                    kind: ExprKind::Call { callee, args },
                    span,
                })
            }
            Rule::if_expr => {
                let mut inner = pair
                    .into_inner()
                    .filter(|part| !matches!(part.as_rule(), Rule::kw_if | Rule::kw_else));
                let condition = Box::new(self.expr(inner.next().expect("if condition"))?);
                let then_value = Box::new(self.expr(inner.next().expect("if value"))?);
                let else_value = inner
                    .next()
                    .map(|value| self.expr(value).map(Box::new))
                    .transpose()?;
                Ok(Expr {
                    kind: ExprKind::If {
                        condition,
                        then_value,
                        else_value,
                    },
                    span,
                })
            }
            _ => internal_bug(&pair),
        }
    }

    /// `a op b op c`, left-associative.
    fn binary_chain(&self, pair: Pair<Rule>) -> Result<Expr, ParseError> {
        // The chain becomes a left-deep tree, one level per operator.
        let operators = pair.clone().into_inner().count() / 2;
        let span = self.span(&pair);
        self.nested(operators, span, || self.binary_chain_tree(pair))
    }

    fn binary_chain_tree(&self, pair: Pair<Rule>) -> Result<Expr, ParseError> {
        let mut inner = pair.into_inner();
        let mut value = self.expr(inner.next().expect("first operand"))?;
        while let Some(operator) = inner.next() {
            let op = match operator.as_rule() {
                Rule::op_or => BinaryOperator::Or,
                Rule::op_and => BinaryOperator::And,
                Rule::op_add => BinaryOperator::Add,
                Rule::op_sub => BinaryOperator::Sub,
                Rule::op_mul => BinaryOperator::Mul,
                Rule::op_div => BinaryOperator::Div,
                Rule::op_floordiv => BinaryOperator::FloorDiv,
                Rule::op_mod => BinaryOperator::Mod,
                Rule::op_cmp => match operator.as_str() {
                    "==" => BinaryOperator::Equal,
                    "!=" => BinaryOperator::NotEqual,
                    "<=" => BinaryOperator::LessEqual,
                    ">=" => BinaryOperator::GreaterEqual,
                    "<" => BinaryOperator::Less,
                    _ => BinaryOperator::Greater,
                },
                _ => internal_bug(&operator),
            };
            let rhs = self.expr(inner.next().expect("second operand"))?;
            let span = value.span.to(rhs.span);
            value = Expr {
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(value),
                    rhs: Box::new(rhs),
                },
                span,
            };
        }
        Ok(value)
    }

    fn number(&self, pair: Pair<Rule>) -> Result<Expr, ParseError> {
        let span = self.span(&pair);
        let text = pair.as_str();
        let (digits, multiplier) = match text.chars().last() {
            Some('K') => (&text[..text.len() - 1], 1_000i64),
            Some('M') => (&text[..text.len() - 1], 1_000_000),
            Some('G') => (&text[..text.len() - 1], 1_000_000_000),
            _ => (text, 1),
        };
        let out_of_range = || ParseError::NumberOutOfRange {
            text: text.to_string(),
            span,
        };
        if digits.contains(['.', 'e', 'E']) {
            let value: f64 = digits.parse().map_err(|_| out_of_range())?;
            let scaled = value * multiplier as f64;
            if !scaled.is_finite() {
                return Err(out_of_range());
            }
            if multiplier > 1 && scaled.fract() == 0.0 && scaled.abs() < 9.0e15 {
                return Ok(Expr {
                    kind: ExprKind::Int(scaled as i64),
                    span,
                });
            }
            return Ok(Expr {
                kind: ExprKind::Float(scaled),
                span,
            });
        }
        let value: i64 = digits.parse().map_err(|_| out_of_range())?;
        let scaled = value.checked_mul(multiplier).ok_or_else(out_of_range)?;
        Ok(Expr {
            kind: ExprKind::Int(scaled),
            span,
        })
    }

    fn arg(&self, pair: Pair<Rule>) -> Result<Arg, ParseError> {
        let mut inner: Vec<Pair<Rule>> = pair.into_inner().collect();
        let value = self.expr(inner.pop().expect("argument value"))?;
        let name = inner.pop().map(|name| self.ident(name));
        Ok(Arg { name, value })
    }

    fn stage(&self, pair: Pair<Rule>) -> Result<Stage, ParseError> {
        let span = self.span(&pair);
        self.nested(1, span, || self.stage_node(pair))
    }

    fn stage_node(&self, pair: Pair<Rule>) -> Result<Stage, ParseError> {
        let mut inner = pair.into_inner();
        let body = inner.next().expect("stage body");
        let name = inner
            .find(|part| part.as_rule() == Rule::name_path)
            .map(|path| self.name_path(path))
            .transpose()?;
        // The stage pair can end in whitespace that pest consumed looking for `as`; the span is
        // the body and the name only, so diagnostics underline exactly the stage.
        let body_span = self.span(&body);
        let span = name
            .as_ref()
            .map_or(body_span, |name| body_span.to(name.span));
        let kind = match body.as_rule() {
            Rule::apply_stage => {
                let mut parts = body.into_inner();
                let callee = self.ident(parts.next().expect("layer name"));
                let args: Vec<Arg> = parts.map(|arg| self.arg(arg)).collect::<Result<_, _>>()?;
                // `relu` and `relu()` mean the same; the AST does not keep the difference.
                StageKind::Apply { callee, args }
            }
            Rule::group_stage => {
                StageKind::Group(self.stage_chain(body.into_inner().next().expect("group body"))?)
            }
            Rule::repeat_stage => {
                let mut variable = None;
                let mut range = None;
                let mut body_stages = Vec::new();
                for part in body.into_inner() {
                    match part.as_rule() {
                        Rule::ident => variable = Some(self.ident(part)),
                        Rule::range_or_count => range = Some(part),
                        Rule::stage_chain => body_stages = self.stage_chain(part)?,
                        _ => {}
                    }
                }
                let mut bounds = range.expect("repeat range").into_inner();
                let first = self.expr(bounds.next().expect("repeat count"))?;
                let (start, end) = match bounds.next() {
                    Some(end) => (Some(first), self.expr(end)?),
                    None => (None, first),
                };
                StageKind::Repeat {
                    variable,
                    start,
                    end,
                    body: body_stages,
                }
            }
            Rule::if_stage => self.if_stage(body)?,
            _ => internal_bug(&body),
        };
        Ok(Stage { kind, name, span })
    }

    fn if_stage(&self, pair: Pair<Rule>) -> Result<StageKind, ParseError> {
        let mut inner = pair
            .into_inner()
            .filter(|part| !matches!(part.as_rule(), Rule::kw_if | Rule::kw_else));
        let condition = self.expr(inner.next().expect("if condition"))?;
        let then_stages = self.stage_chain(inner.next().expect("if body"))?;
        let else_stages = match inner.next() {
            None => None,
            Some(part) if part.as_rule() == Rule::if_stage => {
                let span = self.span(&part);
                Some(vec![Stage {
                    kind: self.nested(1, span, || self.if_stage(part))?,
                    name: None,
                    span,
                }])
            }
            Some(part) => Some(self.stage_chain(part)?),
        };
        Ok(StageKind::If {
            condition,
            then_stages,
            else_stages,
        })
    }

    fn stage_chain(&self, pair: Pair<Rule>) -> Result<Vec<Stage>, ParseError> {
        pair.into_inner().map(|stage| self.stage(stage)).collect()
    }

    fn name_path(&self, pair: Pair<Rule>) -> Result<NamePath, ParseError> {
        let span = self.span(&pair);
        let mut segments = Vec::new();
        for segment in pair.into_inner() {
            let mut parts = Vec::new();
            for part in segment.into_inner() {
                match part.as_rule() {
                    Rule::name_text => parts.push(NamePart::Text(part.as_str().to_string())),
                    Rule::name_interp => parts.push(NamePart::Interpolated(
                        self.expr(part.into_inner().next().expect("interp"))?,
                    )),
                    _ => internal_bug(&part),
                }
            }
            segments.push(parts);
        }
        Ok(NamePath { segments, span })
    }
}
