//! Block instances and recurrent cells: binding arguments, running the body's statements,
//! and turning a cell's body into a scanned graph of one time step.

use super::error::ElaborateError;
use super::value::{EvaluatedArg, TensorRef, Value};
use super::*;

impl<'a> Elaborator<'a> {
    pub(super) fn apply_block(
        &mut self,
        scope: &mut Scope<'a>,
        block: &'a BlockDef,
        input: Value,
        args: Vec<EvaluatedArg>,
        path: InstancePath,
        span: Span,
    ) -> Result<Value, ElaborateError> {
        if self.block_depth >= MAX_BLOCK_DEPTH {
            return Err(ElaborateError::RecursionLimit {
                block: block.name.name.clone(),
                limit: MAX_BLOCK_DEPTH,
                span,
            });
        }
        let is_cell = block
            .body
            .iter()
            .any(|statement| matches!(statement.kind, StatementKind::State { .. }));
        let kind = if is_cell {
            ScopeKind::Cell
        } else {
            ScopeKind::Block
        };
        let level = if is_cell {
            scope.graph_level + 1
        } else {
            scope.graph_level
        };
        let mut inner = Scope::new(&block.body, path.clone(), level, kind);
        inner.owner = scope.owner;
        let mut predefined = vec![("in".to_string(), block.name.span)];
        predefined.extend(
            block
                .params
                .iter()
                .map(|param| (param.name.name.clone(), param.name.span)),
        );
        self.collect_definitions(&mut inner, &predefined);
        if !is_cell {
            // Parameter defaults may use the input: `memory = in`.
            inner.values.insert("in".into(), input.clone());
        }
        self.bind_block_params(scope, &mut inner, block, args, span)?;
        self.block_depth += 1;
        let result = if is_cell {
            self.run_cell(scope, &mut inner, block, input, path, span)
        } else {
            inner.values.insert("in".into(), input);
            self.run_all(&mut inner);
            self.block_result(&inner, block)
        };
        self.block_depth -= 1;
        result
    }

    pub(super) fn bind_block_params(
        &mut self,
        caller: &mut Scope<'a>,
        inner: &mut Scope<'a>,
        block: &'a BlockDef,
        args: Vec<EvaluatedArg>,
        span: Span,
    ) -> Result<(), ElaborateError> {
        let _ = caller;
        let mut positional = 0;
        for arg in args {
            let param =
                match &arg.name {
                    None => {
                        let param = block.params.get(positional).ok_or(
                            ElaborateError::TooManyArguments {
                                layer: block.name.name.clone(),
                                expected: block.params.len(),
                                found: positional + 1,
                                span: arg.span,
                            },
                        )?;
                        positional += 1;
                        param
                    }
                    Some(name) => block
                        .params
                        .iter()
                        .find(|param| param.name.name == *name)
                        .ok_or_else(|| ElaborateError::UnknownArgument {
                            layer: block.name.name.clone(),
                            argument: name.clone(),
                            span: arg.name_span.unwrap_or(arg.span),
                            expected: block
                                .params
                                .iter()
                                .map(|param| param.name.name.clone())
                                .collect(),
                        })?,
                };
            if inner
                .values
                .insert(param.name.name.clone(), arg.value)
                .is_some()
            {
                return Err(ElaborateError::RepeatedArgument {
                    argument: param.name.name.clone(),
                    span: arg.span,
                });
            }
        }
        for param in &block.params {
            if inner.values.contains_key(&param.name.name) {
                continue;
            }
            let Some(default) = &param.default else {
                return Err(ElaborateError::MissingArgument {
                    layer: block.name.name.clone(),
                    argument: param.name.name.clone(),
                    span,
                });
            };
            let value = self.eval(inner, default)?;
            inner.values.insert(param.name.name.clone(), value);
        }
        Ok(())
    }

    pub(super) fn block_result(
        &self,
        inner: &Scope<'a>,
        block: &'a BlockDef,
    ) -> Result<Value, ElaborateError> {
        match inner.outs.as_slice() {
            [] => {
                let failed_out = block
                    .body
                    .iter()
                    .any(|statement| matches!(statement.kind, StatementKind::Out { .. }));
                if failed_out {
                    Err(ElaborateError::Poisoned)
                } else {
                    Err(ElaborateError::MissingOut {
                        block: block.name.name.clone(),
                        span: block.name.span,
                    })
                }
            }
            [(values, _)] if values.len() == 1 => Ok(values[0].clone()),
            [(values, _)] => Ok(Value::Tuple(values.clone())),
            [(_, first), (_, second), ..] => Err(ElaborateError::RepeatedOut {
                block: block.name.name.clone(),
                span: *second,
                previous: *first,
            }),
        }
    }

    /// A block with `state`s: its body becomes a graph of one time step, scanned over dim 1.
    pub(super) fn run_cell(
        &mut self,
        scope: &mut Scope<'a>,
        inner: &mut Scope<'a>,
        block: &'a BlockDef,
        input: Value,
        path: InstancePath,
        span: Span,
    ) -> Result<Value, ElaborateError> {
        let sequence = input.expect_tensor(span)?;
        self.graphs.push(Graph::default());
        let result = self.build_cell_body(inner, block, &path, span);
        let graph = self
            .graphs
            .pop()
            .expect("the cell's graph was pushed above");
        let (step_input, states, output) = result?;
        let body = ScanBody {
            graph,
            step_input,
            states,
            output,
        };
        let op = Op::Scan {
            body: Box::new(body),
            sequence: true,
        };
        Ok(Value::Tensor(self.add_node(
            scope,
            op,
            &[sequence],
            path,
            span,
        )?))
    }

    pub(super) fn build_cell_body(
        &mut self,
        inner: &mut Scope<'a>,
        block: &'a BlockDef,
        path: &InstancePath,
        span: Span,
    ) -> Result<(NodeId, Vec<ScanState>, NodeId), ElaborateError> {
        let step_op = Op::Input {
            name: "in".into(),
            shape: vec![],
            element_type: ElementType::Float32,
        };
        let step = self.add_node(inner, step_op, &[], path.clone(), span)?;
        inner.values.insert("in".into(), Value::Tensor(step));
        let mut states = Vec::new();
        for statement in &block.body {
            let StatementKind::State { name, shape } = &statement.kind else {
                continue;
            };
            let mut dims = Vec::new();
            for dim in shape {
                dims.push(self.eval_dim(inner, dim)?);
            }
            let op = Op::Input {
                name: name.name.clone(),
                shape: dims.clone(),
                element_type: ElementType::Float32,
            };
            let state = self.add_node(
                inner,
                op,
                &[],
                path.child(name.name.clone()),
                statement.span,
            )?;
            inner.values.insert(name.name.clone(), Value::Tensor(state));
            states.push((name, state, dims));
        }
        self.run_all(inner);
        let output = self
            .block_result(inner, block)?
            .expect_tensor(block.name.span)?;
        if output.level != inner.graph_level {
            let out_span = inner
                .outs
                .first()
                .map_or(block.name.span, |(_, span)| *span);
            return Err(ElaborateError::TensorFromOutsideCell {
                name: "out".into(),
                span: out_span,
            });
        }
        let mut scan_states = Vec::new();
        for (name, state, shape) in states {
            let nexts: Vec<&(String, TensorRef, Span)> = inner
                .nexts
                .iter()
                .filter(|(next, _, _)| *next == name.name)
                .collect();
            let next = match nexts.as_slice() {
                [(_, next, _)] => *next,
                [] => {
                    // A `next` that failed was already reported; do not also call it missing.
                    let failed_next = block.body.iter().any(|statement| {
                        matches!(&statement.kind, StatementKind::Next { name: next, .. } if next.name == name.name)
                    });
                    if failed_next {
                        return Err(ElaborateError::Poisoned);
                    }
                    return Err(ElaborateError::MissingNext {
                        name: name.name.clone(),
                        span: name.span,
                    });
                }
                [_, (_, _, second), ..] => {
                    return Err(ElaborateError::DuplicateDefinition {
                        name: format!("next {}", name.name),
                        span: *second,
                        previous: nexts[0].2,
                    })
                }
            };
            scan_states.push(ScanState {
                name: name.name.clone(),
                input: state.node,
                next: next.node,
                shape,
            });
        }
        for (name, _, next_span) in &inner.nexts {
            if !scan_states.iter().any(|state| state.name == *name) {
                return Err(ElaborateError::NextWithoutState {
                    name: name.clone(),
                    span: *next_span,
                });
            }
        }
        Ok((step.node, scan_states, output.node))
    }
}
