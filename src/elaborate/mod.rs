//! Stage 2: AST to layer graph. Elaboration evaluates the spec's numbers, expands blocks,
//! `repeat` and conditionals, names every layer application with its instance path, and adds
//! one graph node per application. Shapes are not known here; the shape pass comes next.
//!
//! Statements inside a block (and at top level) may come in any order: a name is evaluated when
//! it is first needed, and needing a name that is still being evaluated is a dependency cycle.
//! A statement that fails leaves its names "poisoned": later uses of them fail silently, so one
//! mistake gives one error while independent mistakes are all reported.

mod args;
mod block;
mod builtins;
mod call;
mod error;
mod expr;
mod loss;
mod stage;
mod value;

use std::collections::HashMap;

pub use builtins::BUILTIN_LAYERS;
pub use error::ElaborateError;

use crate::ir::*;
use crate::syntax::ast::{self, BlockDef, Statement, StatementKind};
use crate::syntax::Span;
pub(crate) use error::suggest;
use value::{TensorRef, Value};

/// Values set from outside the spec (the command line or the library API).
#[derive(Clone, Debug, Default)]
pub struct ElaborateOptions {
    /// `--set name=value`: replaces the value of a top-level `param`.
    pub param_overrides: Vec<(String, OverrideValue)>,
    /// `--input-shape name=3x32x32`: replaces the dims after the batch dim of an `input`.
    pub input_shape_overrides: Vec<(String, Vec<u64>)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OverrideValue {
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Blocks nest at most this deep; deeper almost certainly means a block that calls itself.
const MAX_BLOCK_DEPTH: usize = 64;
/// `repeat` runs at most this many times.
const MAX_REPEAT: i64 = 10_000;
/// Nodes in one network; keeps a runaway `repeat` inside a block from exhausting memory.
const MAX_NODES: usize = 1_000_000;
/// Evaluation recurses through nested expressions, block applications and names evaluated on
/// demand; this bounds the recursion, whatever its mix, far below the compile thread's stack.
const MAX_EVAL_DEPTH: usize = 1_000;

/// Elaborates a parsed spec (and the prelude's blocks) into a [`Network`].
pub fn elaborate(
    program: &ast::Program,
    prelude: &ast::Program,
    options: &ElaborateOptions,
) -> Result<Network, Vec<ElaborateError>> {
    let mut elaborator = Elaborator::new(options);
    elaborator.register_blocks(prelude, program);
    elaborator.run_top_level(&program.statements);
    let Elaborator {
        mut errors,
        network,
        mut graphs,
        ..
    } = elaborator;
    errors.retain(|error| !matches!(error, ElaborateError::Poisoned));
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut network = network;
    network.graph = graphs.pop().unwrap_or_default();
    check_inputs_used(&network)?;
    loss::check_loss_name(&network).map_err(|error| vec![error])?;
    Ok(network)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    NotStarted,
    InProgress,
    Done,
}

/// A naming frame: where unnamed applications get their ordinal names (like `nn.Sequential`).
struct Naming {
    path: InstancePath,
    next_ordinal: usize,
    operator_counts: HashMap<&'static str, usize>,
}

impl Naming {
    fn new(path: InstancePath) -> Naming {
        Naming {
            path,
            next_ordinal: 0,
            operator_counts: HashMap::new(),
        }
    }
}

/// The statements of one block instance (or the top level) and the values they define.
struct Scope<'a> {
    statements: &'a [Statement],
    definitions: HashMap<String, usize>,
    status: Vec<Status>,
    values: HashMap<String, Value>,
    /// Loop variables of enclosing `repeat`s, innermost last.
    loop_variables: Vec<(String, Value)>,
    /// Names being evaluated, outermost first, for cycle messages.
    evaluating: Vec<String>,
    naming: Vec<Naming>,
    graph_level: usize,
    /// The owner token of the shared layer being applied, if any (see `claim_path`).
    owner: Option<usize>,
    kind: ScopeKind,
    outs: Vec<(Vec<Value>, Span)>,
    nexts: Vec<(String, TensorRef, Span)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScopeKind {
    TopLevel,
    Block,
    Cell,
}

impl<'a> Scope<'a> {
    fn new(
        statements: &'a [Statement],
        path: InstancePath,
        graph_level: usize,
        kind: ScopeKind,
    ) -> Scope<'a> {
        Scope {
            statements,
            definitions: HashMap::new(),
            status: vec![Status::NotStarted; statements.len()],
            values: HashMap::new(),
            loop_variables: Vec::new(),
            evaluating: Vec::new(),
            naming: vec![Naming::new(path)],
            graph_level,
            owner: None,
            kind,
            outs: Vec::new(),
            nexts: Vec::new(),
        }
    }
}

/// The names a statement defines.
fn defined_names(statement: &Statement) -> Vec<&ast::Ident> {
    match &statement.kind {
        StatementKind::Input { name, .. }
        | StatementKind::Param { name, .. }
        | StatementKind::Dim { name, .. }
        | StatementKind::Layer { name, .. }
        | StatementKind::State { name, .. } => vec![name],
        StatementKind::Output {
            name,
            value: Some(_),
        }
        | StatementKind::Loss {
            name: Some(name), ..
        } => vec![name],
        StatementKind::Assign { targets, .. } => targets.iter().collect(),
        StatementKind::Output { value: None, .. }
        | StatementKind::Loss { name: None, .. }
        | StatementKind::Out { .. }
        | StatementKind::Next { .. } => vec![],
    }
}

struct Elaborator<'a> {
    options: &'a ElaborateOptions,
    blocks: HashMap<&'a str, &'a BlockDef>,
    network: Network,
    /// The graph being built at each nesting level: the network, then cell bodies.
    graphs: Vec<Graph>,
    /// Top-level `param`s and `dim`s, visible inside every block.
    globals: HashMap<String, Value>,
    global_spans: HashMap<String, Span>,
    /// Instance paths claimed so far, with the owner token and span of the claim.
    claimed_paths: HashMap<InstancePath, (usize, Span)>,
    next_owner: usize,
    block_depth: usize,
    eval_depth: usize,
    /// The evaluation-depth error is reported once; the statements it cuts short stay quiet.
    eval_depth_reported: bool,
    node_count: usize,
    errors: Vec<ElaborateError>,
}

impl<'a> Elaborator<'a> {
    fn new(options: &'a ElaborateOptions) -> Elaborator<'a> {
        Elaborator {
            options,
            blocks: HashMap::new(),
            network: Network::default(),
            graphs: vec![Graph::default()],
            globals: HashMap::new(),
            global_spans: HashMap::new(),
            claimed_paths: HashMap::new(),
            next_owner: 0,
            block_depth: 0,
            eval_depth: 0,
            eval_depth_reported: false,
            node_count: 0,
            errors: Vec::new(),
        }
    }

    /// Prelude blocks first; a spec's block of the same name replaces the prelude's.
    fn register_blocks(&mut self, prelude: &'a ast::Program, program: &'a ast::Program) {
        for block in &prelude.blocks {
            self.blocks.insert(block.name.name.as_str(), block);
        }
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for block in &program.blocks {
            if let Some(previous) = seen.insert(block.name.name.as_str(), block.name.span) {
                self.errors.push(ElaborateError::DuplicateDefinition {
                    name: block.name.name.clone(),
                    span: block.name.span,
                    previous,
                });
            }
            self.blocks.insert(block.name.name.as_str(), block);
        }
    }

    fn run_top_level(&mut self, statements: &'a [Statement]) {
        let mut scope = Scope::new(statements, InstancePath::default(), 0, ScopeKind::TopLevel);
        self.collect_definitions(&mut scope, &[]);
        if !scope.definitions.contains_key("N") {
            let symbol = self.add_symbol("N", 1, Span::new(crate::syntax::SourceId::Spec, 0, 0));
            self.globals.insert("N".into(), Value::Symbol(symbol));
        }
        self.check_overrides(statements);
        self.reject_extra_loss_statements(&mut scope);
        self.run_all(&mut scope);
        let first_span = statements.first().map(|statement| statement.span);
        let file_span = first_span.unwrap_or(Span::new(crate::syntax::SourceId::Spec, 0, 0));
        if self.network.inputs.is_empty() && self.errors.is_empty() {
            self.errors
                .push(ElaborateError::NoInput { span: file_span });
        }
        if self.network.outputs.is_empty() && self.errors.is_empty() {
            self.errors
                .push(ElaborateError::NoOutput { span: file_span });
        }
    }

    fn check_overrides(&mut self, statements: &[Statement]) {
        let whole_file = Span::new(crate::syntax::SourceId::Spec, 0, 0);
        let mut params = Vec::new();
        let mut inputs = Vec::new();
        for statement in statements {
            match &statement.kind {
                StatementKind::Param { name, .. } => params.push(name.name.clone()),
                StatementKind::Input { name, .. } => inputs.push(name.name.clone()),
                _ => {}
            }
        }
        let overrides = self
            .options
            .param_overrides
            .iter()
            .map(|(name, _)| ("param", name, &params))
            .chain(
                self.options
                    .input_shape_overrides
                    .iter()
                    .map(|(name, _)| ("input", name, &inputs)),
            );
        for (what, name, declared) in overrides {
            if !declared.contains(name) {
                self.errors.push(ElaborateError::UnknownOverride {
                    what: what.into(),
                    name: name.clone(),
                    span: whole_file,
                    declared: declared.clone(),
                });
            }
        }
    }

    fn add_symbol(&mut self, name: &str, report_value: u64, span: Span) -> SymbolId {
        self.network.symbols.push(Symbol {
            name: name.to_string(),
            report_value,
            span,
        });
        SymbolId(self.network.symbols.len() - 1)
    }

    /// Records which statement defines each name; a name defined twice is an error.
    fn collect_definitions(&mut self, scope: &mut Scope<'a>, predefined: &[(String, Span)]) {
        let mut spans: HashMap<String, Span> = predefined.iter().cloned().collect();
        for (index, statement) in scope.statements.iter().enumerate() {
            for name in defined_names(statement) {
                if let Some(previous) = spans.insert(name.name.clone(), name.span) {
                    self.errors.push(ElaborateError::DuplicateDefinition {
                        name: name.name.clone(),
                        span: name.span,
                        previous,
                    });
                    continue;
                }
                scope.definitions.insert(name.name.clone(), index);
            }
        }
    }

    fn run_all(&mut self, scope: &mut Scope<'a>) {
        for index in 0..scope.statements.len() {
            if scope.status[index] == Status::NotStarted {
                self.run_statement(scope, index);
            }
        }
    }

    /// Runs one statement with a clean naming and loop context: a statement evaluated on demand
    /// from inside another's `repeat` or group must not see that context.
    fn run_statement(&mut self, scope: &mut Scope<'a>, index: usize) {
        let statement = &scope.statements[index];
        scope.status[index] = Status::InProgress;
        let names: Vec<String> = defined_names(statement)
            .iter()
            .map(|name| name.name.clone())
            .collect();
        scope
            .evaluating
            .push(names.first().cloned().unwrap_or_default());
        let saved_naming = scope.naming.split_off(1);
        let saved_loops = std::mem::take(&mut scope.loop_variables);
        let result = self.execute(scope, statement);
        scope.naming.extend(saved_naming);
        scope.loop_variables = saved_loops;
        scope.evaluating.pop();
        scope.status[index] = Status::Done;
        if let Err(error) = result {
            self.errors.push(error);
        }
    }

    fn execute(
        &mut self,
        scope: &mut Scope<'a>,
        statement: &'a Statement,
    ) -> Result<(), ElaborateError> {
        let top_level_only = |what: &str| ElaborateError::MisplacedStatement {
            statement: what.to_string(),
            place: "at the top level of a spec".into(),
            span: statement.span,
        };
        match &statement.kind {
            StatementKind::Input {
                name,
                shape,
                element_type,
            } => {
                if scope.kind != ScopeKind::TopLevel {
                    return Err(top_level_only("input"));
                }
                self.declare_input(scope, name, shape, *element_type, statement.span)
            }
            StatementKind::Param { name, value } => {
                if scope.kind != ScopeKind::TopLevel {
                    return Err(top_level_only("param"));
                }
                let overridden = self
                    .options
                    .param_overrides
                    .iter()
                    .rev()
                    .find(|(key, _)| *key == name.name);
                let value = match overridden {
                    Some((_, OverrideValue::Int(number))) => Value::Int(*number),
                    Some((_, OverrideValue::Float(number))) => Value::Float(*number),
                    Some((_, OverrideValue::Bool(flag))) => Value::Bool(*flag),
                    None => self.eval(scope, value)?,
                };
                if !matches!(
                    value,
                    Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Str(_)
                ) {
                    return Err(value::mismatch(
                        "a number, boolean or string",
                        &value,
                        statement.span,
                    ));
                }
                self.define_global(scope, name, value);
                Ok(())
            }
            StatementKind::Dim { name, value } => {
                if scope.kind != ScopeKind::TopLevel {
                    return Err(top_level_only("dim"));
                }
                let evaluated = self.eval(scope, value)?;
                let size = evaluated.expect_i64(value.span)?;
                if !(1..=args::MAX_SIZE).contains(&size) {
                    return Err(ElaborateError::invalid(
                        format!(
                            "the report value of dim `{}` must be in 1..={}, found {size}",
                            name.name,
                            args::MAX_SIZE
                        ),
                        value.span,
                    ));
                }
                let symbol = self.add_symbol(&name.name, size as u64, name.span);
                self.define_global(scope, name, Value::Symbol(symbol));
                Ok(())
            }
            StatementKind::Layer { name, value } => {
                let layer = self.layer_value(scope, name, value)?;
                scope.values.insert(name.name.clone(), layer);
                Ok(())
            }
            StatementKind::Output { name, value } => {
                if scope.kind != ScopeKind::TopLevel {
                    return Err(top_level_only("output"));
                }
                let tensor_value = match value {
                    Some(value) => self.eval(scope, value)?,
                    None => self.lookup(scope, &name.name, name.span)?,
                };
                let tensor = tensor_value
                    .expect_tensor(value.as_ref().map_or(name.span, |value| value.span))?;
                if value.is_some() {
                    scope.values.insert(name.name.clone(), tensor_value.clone());
                }
                if self
                    .network
                    .outputs
                    .iter()
                    .any(|(existing, _)| *existing == name.name)
                {
                    return Err(ElaborateError::DuplicateDefinition {
                        name: name.name.clone(),
                        span: name.span,
                        previous: name.span,
                    });
                }
                self.network.outputs.push((name.name.clone(), tensor.node));
                Ok(())
            }
            StatementKind::Loss { name, value } => {
                if scope.kind != ScopeKind::TopLevel {
                    return Err(top_level_only("loss"));
                }
                self.declare_loss(scope, name.as_ref(), value, statement.span)
            }
            StatementKind::Out { values } => {
                if scope.kind == ScopeKind::TopLevel {
                    return Err(ElaborateError::MisplacedStatement {
                        statement: "out".into(),
                        place: "inside a block (use `output name = ...` at the top level)".into(),
                        span: statement.span,
                    });
                }
                let mut results = Vec::new();
                for value in values {
                    results.push(self.eval(scope, value)?);
                }
                scope.outs.push((results, statement.span));
                Ok(())
            }
            StatementKind::State { .. } => Ok(()),
            StatementKind::Next { name, value } => {
                if scope.kind != ScopeKind::Cell {
                    return Err(ElaborateError::NextWithoutState {
                        name: name.name.clone(),
                        span: name.span,
                    });
                }
                let tensor = self.eval(scope, value)?.expect_tensor(value.span)?;
                if tensor.level != scope.graph_level {
                    return Err(ElaborateError::TensorFromOutsideCell {
                        name: format!("next {}", name.name),
                        span: value.span,
                    });
                }
                scope
                    .nexts
                    .push((name.name.clone(), tensor, statement.span));
                Ok(())
            }
            StatementKind::Assign { targets, value } => {
                let result = self.eval(scope, value)?;
                if targets.len() == 1 {
                    scope.values.insert(targets[0].name.clone(), result);
                    return Ok(());
                }
                match result {
                    Value::Tuple(items) if items.len() == targets.len() => {
                        for (target, item) in targets.iter().zip(items) {
                            scope.values.insert(target.name.clone(), item);
                        }
                        Ok(())
                    }
                    other => Err(ElaborateError::TypeMismatch {
                        expected: format!("{} values to unpack", targets.len()),
                        found: other.describe(),
                        span: value.span,
                    }),
                }
            }
        }
    }

    fn define_global(&mut self, scope: &mut Scope<'a>, name: &ast::Ident, value: Value) {
        self.globals.insert(name.name.clone(), value.clone());
        self.global_spans.insert(name.name.clone(), name.span);
        scope.values.insert(name.name.clone(), value);
    }

    fn declare_input(
        &mut self,
        scope: &mut Scope<'a>,
        name: &ast::Ident,
        shape: &'a [ast::Expr],
        element_type: ast::ElementType,
        span: Span,
    ) -> Result<(), ElaborateError> {
        let mut dims = Vec::new();
        for dim in shape {
            dims.push(self.eval_dim(scope, dim)?);
        }
        if let Some((_, sizes)) = self
            .options
            .input_shape_overrides
            .iter()
            .rev()
            .find(|(key, _)| *key == name.name)
        {
            if sizes.len() + 1 != dims.len() {
                return Err(ElaborateError::invalid(
                    format!(
                        "--input-shape gives {} dims for `{}`, which has {} dims after the batch dim",
                        sizes.len(),
                        name.name,
                        dims.len().saturating_sub(1)
                    ),
                    span,
                ));
            }
            for (dim, size) in dims.iter_mut().skip(1).zip(sizes) {
                if *size < 1 || *size as i64 > args::MAX_SIZE {
                    return Err(ElaborateError::invalid(
                        format!("--input-shape size {size} is out of range"),
                        span,
                    ));
                }
                *dim = Dim::Known(*size);
            }
        }
        let element_type = match element_type {
            ast::ElementType::Float => ElementType::Float32,
            ast::ElementType::Int => ElementType::Int64,
        };
        let path = InstancePath(vec![name.name.clone()]);
        self.claim_path(&path, None, name.span)?;
        let op = Op::Input {
            name: name.name.clone(),
            shape: dims,
            element_type,
        };
        let tensor = self.add_node(scope, op, &[], path, span)?;
        self.network.inputs.push(tensor.node);
        scope
            .values
            .insert(name.name.clone(), Value::Tensor(tensor));
        Ok(())
    }

    fn eval_dim(
        &mut self,
        scope: &mut Scope<'a>,
        expr: &'a ast::Expr,
    ) -> Result<Dim, ElaborateError> {
        match self.eval(scope, expr)? {
            Value::Symbol(symbol) => Ok(Dim::Symbolic(symbol)),
            other => {
                let size = other.expect_i64(expr.span)?;
                if size < 1 {
                    return Err(ElaborateError::invalid(
                        format!("dimensions must be positive, found {size}"),
                        expr.span,
                    ));
                }
                if size > args::MAX_SIZE {
                    return Err(ElaborateError::TooLarge {
                        what: "a dimension".into(),
                        count: size as i128,
                        limit: args::MAX_SIZE as i128,
                        span: expr.span,
                    });
                }
                Ok(Dim::Known(size as u64))
            }
        }
    }

    /// Looks a name up: loop variables, then this scope's statements, then global params.
    fn lookup(
        &mut self,
        scope: &mut Scope<'a>,
        name: &str,
        span: Span,
    ) -> Result<Value, ElaborateError> {
        if let Some((_, value)) = scope
            .loop_variables
            .iter()
            .rev()
            .find(|(key, _)| key == name)
        {
            return Ok(value.clone());
        }
        if let Some(value) = scope.values.get(name) {
            return Ok(value.clone());
        }
        if let Some(&index) = scope.definitions.get(name) {
            return match scope.status[index] {
                Status::NotStarted => {
                    self.run_statement(scope, index);
                    scope
                        .values
                        .get(name)
                        .cloned()
                        .ok_or(ElaborateError::Poisoned)
                }
                Status::InProgress => {
                    let start = scope
                        .evaluating
                        .iter()
                        .position(|evaluating| evaluating == name)
                        .unwrap_or(0);
                    let mut cycle: Vec<String> = scope.evaluating[start..].to_vec();
                    cycle.push(name.to_string());
                    Err(ElaborateError::Cycle { cycle, span })
                }
                Status::Done => Err(ElaborateError::Poisoned),
            };
        }
        if let Some(value) = self.globals.get(name) {
            return Ok(value.clone());
        }
        let candidates: Vec<&str> = scope
            .values
            .keys()
            .chain(scope.definitions.keys())
            .chain(self.globals.keys())
            .map(String::as_str)
            .chain(scope.loop_variables.iter().map(|(key, _)| key.as_str()))
            .collect();
        let suggestion = suggest(name, candidates);
        Err(ElaborateError::UnknownName {
            name: name.to_string(),
            span,
            suggestion,
        })
    }

    /// Claims an instance path for a new layer. Applications of one shared layer carry its owner
    /// token and may claim the same paths again; anything else claiming a taken path is an error.
    fn claim_path(
        &mut self,
        path: &InstancePath,
        owner: Option<usize>,
        span: Span,
    ) -> Result<(), ElaborateError> {
        let owner = owner.unwrap_or_else(|| self.fresh_owner());
        match self.claimed_paths.get(path) {
            Some((existing, _)) if *existing == owner => Ok(()),
            Some((_, previous)) => Err(ElaborateError::DuplicateInstanceName {
                path: path.to_string(),
                span,
                previous: *previous,
            }),
            None => {
                self.claimed_paths.insert(path.clone(), (owner, span));
                Ok(())
            }
        }
    }

    fn fresh_owner(&mut self) -> usize {
        self.next_owner += 1;
        self.next_owner
    }

    fn add_node(
        &mut self,
        scope: &Scope<'a>,
        op: Op,
        inputs: &[TensorRef],
        path: InstancePath,
        span: Span,
    ) -> Result<TensorRef, ElaborateError> {
        for input in inputs {
            if input.level != scope.graph_level {
                return Err(ElaborateError::TensorFromOutsideCell {
                    name: op.name(),
                    span,
                });
            }
        }
        self.node_count += 1;
        if self.node_count > MAX_NODES {
            return Err(ElaborateError::TooLarge {
                what: "the number of layers".into(),
                count: self.node_count as i128,
                limit: MAX_NODES as i128,
                span,
            });
        }
        let input_ids: Vec<NodeId> = inputs.iter().map(|input| input.node).collect();
        let graph = self
            .graphs
            .get_mut(scope.graph_level)
            .expect("a graph exists for every scope level");
        let node = graph.add_node(Node { op, path, span }, &input_ids);
        Ok(TensorRef {
            node,
            level: scope.graph_level,
        })
    }
}

/// Every input must reach some output or the loss (labels and targets reach only the loss); an
/// unused input is almost always a wiring mistake.
fn check_inputs_used(network: &Network) -> Result<(), Vec<ElaborateError>> {
    let mut roots: Vec<NodeId> = network.outputs.iter().map(|(_, node)| *node).collect();
    roots.extend(network.loss.iter().map(|(_, node)| *node));
    let reached = network.graph.reached_from(&roots);
    let errors: Vec<ElaborateError> = network
        .inputs
        .iter()
        .filter(|input| !reached[input.index()])
        .map(|input| {
            let node = network.graph.node(*input);
            let name = match &node.op {
                Op::Input { name, .. } => name.clone(),
                _ => node.path.to_string(),
            };
            ElaborateError::UnusedInput {
                name,
                span: node.span,
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
