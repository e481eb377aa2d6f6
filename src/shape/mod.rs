//! Stage 3: shape inference. A read-only analysis of the layer graph that returns, as side
//! tables keyed by node, every node's output shape and element type and every layer's parameter
//! tensors. Each op's rule lives in `rules.rs`; this file walks the graph in topological order,
//! recurses into cell bodies, and merges parameters of shared layers.
//!
//! A node whose rule fails is left without a shape and its users are skipped, so every
//! independent shape error in a spec is reported once, and none is reported twice.

mod error;
mod layout;
mod loss;
mod rules;
mod window;

use std::collections::{BTreeMap, HashMap};

pub use error::ShapeError;
pub use window::{conv_output_size, pool_output_size};

use crate::ir::*;
use crate::syntax::Span;

/// The type of a node's value.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub shape: Shape,
    pub element_type: ElementType,
}

/// One parameter or buffer tensor of a layer, named as in PyTorch's `state_dict`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamTensor {
    pub name: String,
    pub shape: Vec<u64>,
    /// `false` for buffers such as batch norm's running statistics.
    pub trainable: bool,
}

impl ParamTensor {
    /// Bounded by [`MAX_ELEMENTS`] after a successful shape pass; saturates rather than wraps.
    pub fn element_count(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |product, size| product.saturating_mul(*size))
    }
}

/// Shapes of one graph's nodes (and, for cells, of their bodies).
#[derive(Clone, Debug, Default)]
pub struct ShapeTable {
    infos: HashMap<NodeId, TensorInfo>,
    /// The parameter tensors each parameterized node uses (shared layers list them at each use).
    pub node_params: HashMap<NodeId, Vec<ParamTensor>>,
    /// The shape table of each `Op::Scan` node's body.
    pub scan_bodies: HashMap<NodeId, ShapeTable>,
}

impl ShapeTable {
    pub fn info(&self, node: NodeId) -> &TensorInfo {
        self.infos.get(&node).expect(
            "internal error (a bug in nnc): node has no shape after a successful shape pass",
        )
    }

    pub fn shape(&self, node: NodeId) -> &Shape {
        &self.info(node).shape
    }
}

/// Parameters by instance path; a shared layer appears once.
#[derive(Clone, Debug, Default)]
pub struct ParamTable {
    pub groups: BTreeMap<InstancePath, ParamGroup>,
}

#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub tensors: Vec<ParamTensor>,
    /// How many nodes apply this layer (more than one means shared weights).
    pub uses: usize,
    pub span: Span,
}

impl ParamTable {
    pub fn trainable_count(&self) -> u64 {
        self.count(true)
    }

    pub fn buffer_count(&self) -> u64 {
        self.count(false)
    }

    /// `(name, shape, trainable)` for every tensor, named as PyTorch's `state_dict` keys
    /// (`layer1.0.conv1.weight`), in path order.
    pub fn state_dict_entries(&self) -> Vec<(String, Vec<u64>, bool)> {
        let mut entries = Vec::new();
        for (path, group) in &self.groups {
            for tensor in &group.tensors {
                entries.push((
                    format!("{path}.{}", tensor.name),
                    tensor.shape.clone(),
                    tensor.trainable,
                ));
            }
        }
        entries
    }

    fn count(&self, trainable: bool) -> u64 {
        let tensors = self.groups.values().flat_map(|group| &group.tensors);
        tensors
            .filter(|tensor| tensor.trainable == trainable)
            .map(ParamTensor::element_count)
            .fold(0, u64::saturating_add)
    }
}

/// The result of the shape pass.
#[derive(Clone, Debug, Default)]
pub struct ShapeAnalysis {
    pub table: ShapeTable,
    pub params: ParamTable,
}

/// Infers every node's shape; returns all independent errors if any rule fails.
pub fn infer_shapes(network: &Network) -> Result<ShapeAnalysis, Vec<ShapeError>> {
    let mut pass = ShapePass {
        network,
        params: ParamTable::default(),
        errors: Vec::new(),
    };
    let table = pass.infer_graph(&network.graph, HashMap::new());
    pass.errors
        .extend(loss::check_loss_is_scalar(network, &table));
    if pass.errors.is_empty() {
        Ok(ShapeAnalysis {
            table,
            params: pass.params,
        })
    } else {
        Err(pass.errors)
    }
}

struct ShapePass<'a> {
    network: &'a Network,
    params: ParamTable,
    errors: Vec<ShapeError>,
}

impl<'a> ShapePass<'a> {
    /// Infers one graph; `seeds` gives the shapes of body inputs that the scan provides.
    fn infer_graph(&mut self, graph: &Graph, seeds: HashMap<NodeId, TensorInfo>) -> ShapeTable {
        let mut table = ShapeTable::default();
        for id in graph.creation_order() {
            let node = graph.node(id);
            if let Some(seed) = seeds.get(&id) {
                table.infos.insert(id, seed.clone());
                continue;
            }
            let inputs: Option<Vec<TensorInfo>> = graph
                .inputs(id)
                .iter()
                .map(|input| table.infos.get(input).cloned())
                .collect();
            let Some(inputs) = inputs else { continue };
            let inputs: Vec<&TensorInfo> = inputs.iter().collect();
            let context = rules::RuleContext {
                path: node.path.to_string(),
                span: node.span,
                network: self.network,
            };
            let result = match &node.op {
                Op::Scan { body, sequence } => {
                    self.infer_scan(body, *sequence, &inputs, &context, &mut table, id)
                }
                op => rules::infer(op, &inputs, &context),
            };
            match result {
                Ok((info, params)) => {
                    if let Err(error) = check_size(&info, &params, &context) {
                        self.errors.push(error);
                        continue;
                    }
                    if !params.is_empty() {
                        if let Err(error) = self.record_params(node, &params) {
                            self.errors.push(error);
                            continue;
                        }
                        table.node_params.insert(id, params);
                    }
                    table.infos.insert(id, info);
                }
                Err(error) => self.errors.push(error),
            }
        }
        table
    }

    fn infer_scan(
        &mut self,
        body: &ScanBody,
        sequence: bool,
        inputs: &[&TensorInfo],
        context: &rules::RuleContext,
        table: &mut ShapeTable,
        id: NodeId,
    ) -> Result<(TensorInfo, Vec<ParamTensor>), ShapeError> {
        let input = inputs[0];
        if input.shape.len() < 3 {
            return Err(ShapeError::Mismatch {
                path: context.path.clone(),
                span: context.span,
                message: format!(
                    "a recurrent cell expects a sequence [N, T, features...], found shape {}",
                    context.format(&input.shape)
                ),
                hint: Some(
                    "a block with a `state` runs once per step of dim 1 of its input".into(),
                ),
            });
        }
        let batch = input.shape[0];
        let mut seeds = HashMap::new();
        let mut step_shape = vec![batch];
        step_shape.extend_from_slice(&input.shape[2..]);
        seeds.insert(
            body.step_input,
            TensorInfo {
                shape: step_shape,
                element_type: input.element_type,
            },
        );
        for state in &body.states {
            let mut shape = vec![batch];
            shape.extend_from_slice(&state.shape);
            seeds.insert(
                state.input,
                TensorInfo {
                    shape,
                    element_type: ElementType::Float32,
                },
            );
        }
        let errors_before = self.errors.len();
        let body_table = self.infer_graph(&body.graph, seeds.clone());
        if self.errors.len() > errors_before {
            return Err(self.errors.pop().expect("an error was just counted"));
        }
        for state in &body.states {
            let declared = &seeds[&state.input];
            let next = body_table.info(state.next);
            if next.shape != declared.shape {
                let next_node = body.graph.node(state.next);
                return Err(ShapeError::Mismatch {
                    path: context.path.clone(),
                    span: next_node.span,
                    message: format!(
                        "`next {}` has shape {}, but state `{}` is declared as {}",
                        state.name,
                        context.format(&next.shape),
                        state.name,
                        context.format(&declared.shape)
                    ),
                    hint: Some("a state must keep its shape from one step to the next".into()),
                });
            }
        }
        let output = body_table.info(body.output).clone();
        if output.shape.first() != Some(&batch) {
            return Err(ShapeError::Mismatch {
                path: context.path.clone(),
                span: context.span,
                message: format!(
                    "a cell's `out` must keep the batch dimension first, found {}",
                    context.format(&output.shape)
                ),
                hint: None,
            });
        }
        let shape = if sequence {
            let mut shape = vec![batch, input.shape[1]];
            shape.extend_from_slice(&output.shape[1..]);
            shape
        } else {
            output.shape.clone()
        };
        table.scan_bodies.insert(id, body_table);
        Ok((
            TensorInfo {
                shape,
                element_type: output.element_type,
            },
            Vec::new(),
        ))
    }

    /// Adds a layer's parameters to the table, or checks them against an earlier use of the
    /// same (shared) layer.
    fn record_params(&mut self, node: &Node, params: &[ParamTensor]) -> Result<(), ShapeError> {
        match self.params.groups.get_mut(&node.path) {
            Some(group) => {
                if group.tensors != params {
                    return Err(ShapeError::SharedLayerMismatch {
                        path: node.path.to_string(),
                        span: node.span,
                        first: describe_params(&group.tensors),
                        second: describe_params(params),
                        previous: group.span,
                    });
                }
                group.uses += 1;
            }
            None => {
                let group = ParamGroup {
                    tensors: params.to_vec(),
                    uses: 1,
                    span: node.span,
                };
                self.params.groups.insert(node.path.clone(), group);
            }
        }
        Ok(())
    }
}

fn describe_params(params: &[ParamTensor]) -> String {
    let parts: Vec<String> = params
        .iter()
        .map(|param| format!("{} {:?}", param.name, param.shape))
        .collect();
    parts.join(", ")
}

/// Tensors beyond 2^48 elements (a petabyte of floats) are mistakes, and keeping counts below
/// it keeps every cost sum far from 64-bit overflow.
pub const MAX_ELEMENTS: u64 = 1 << 48;

/// Every output and parameter tensor must have at most [`MAX_ELEMENTS`] elements.
fn check_size(
    info: &TensorInfo,
    params: &[ParamTensor],
    context: &rules::RuleContext,
) -> Result<(), ShapeError> {
    let too_large = |what: String, elements: Option<u128>| ShapeError::TooLarge {
        path: context.path.clone(),
        span: context.span,
        what,
        value: elements.map_or_else(|| "more than 2^128".to_string(), |count| count.to_string()),
        limit: MAX_ELEMENTS,
    };
    let sizes: Vec<u64> = info
        .shape
        .iter()
        .map(|dim| context.network.report_size(*dim))
        .collect();
    let elements = exact_product(&sizes);
    if elements.is_none_or(|count| count > u128::from(MAX_ELEMENTS)) {
        return Err(too_large(
            format!("the output {}", context.format(&info.shape)),
            elements,
        ));
    }
    for param in params {
        let elements = exact_product(&param.shape);
        if elements.is_none_or(|count| count > u128::from(MAX_ELEMENTS)) {
            return Err(too_large(
                format!("the parameter `{}` {:?}", param.name, param.shape),
                elements,
            ));
        }
    }
    Ok(())
}

/// The product of sizes, or `None` beyond `u128`.
fn exact_product(sizes: &[u64]) -> Option<u128> {
    sizes.iter().try_fold(1u128, |product, size| {
        product.checked_mul(u128::from(*size))
    })
}
