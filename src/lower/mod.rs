//! Lowering: the layer graph to the primitive graph ([`crate::prim`]), specialized to concrete
//! sizes for the symbolic dims (`N`, `T`), with inference semantics (dropout is the identity,
//! batch norm uses its running statistics) or training semantics (`training.rs`: dropout draws
//! a mask, batch norm uses the batch's statistics and updates its running ones).
//!
//! The driver walks the layer graph in creation (topological) order and lowers each node that
//! some output needs; one function per group of layers does the work (`basic.rs`: dense, layout,
//! reductions; `conv.rs`: convolutions and pooling; `norm.rs`: normalization and softmax;
//! `recurrent.rs`: rnn/lstm/gru and user cells; `loss.rs`: the loss functions). Every primitive
//! node keeps the instance path and span of the layer it came from. Parameters are `Parameter`
//! nodes named by their `state_dict` key (`<path>.<tensor>`); inside a scan body they become body
//! inputs fed by the scan. The spec's `loss` is lowered only with `LowerOptions::losses`, as one
//! output after the network's; the graph's inputs are those the lowered outputs read, so a label
//! that only the loss reads is an input only then.

mod basic;
mod conv;
mod emit;
mod loss;
mod norm;
mod recurrent;
mod training;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::ir::*;
use crate::prim::*;
use crate::shape::{ShapeTable, MAX_ELEMENTS};
use crate::syntax::Span;
use crate::Compilation;

pub(crate) use emit::Emitter;
pub use training::BUFFER_UPDATE_PREFIX;

/// Concrete values for a network's symbolic dims, by name: `N=2`, `T=7`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolValues {
    values: BTreeMap<String, usize>,
}

impl SymbolValues {
    pub fn new() -> SymbolValues {
        SymbolValues::default()
    }

    pub fn with(mut self, name: &str, value: usize) -> SymbolValues {
        self.set(name, value);
        self
    }

    pub fn set(&mut self, name: &str, value: usize) {
        self.values.insert(name.to_string(), value);
    }

    pub fn get(&self, name: &str) -> Option<usize> {
        self.values.get(name).copied()
    }

    /// The values reports use (`N` is 1, `dim T = 32` is 32) for every symbol.
    pub fn report_values(network: &Network) -> SymbolValues {
        let mut values = SymbolValues::new();
        for symbol in &network.symbols {
            values.set(&symbol.name, symbol.report_value as usize);
        }
        values
    }

    /// Every value names a symbol of the network, every symbol has a value, none is zero.
    fn check(&self, network: &Network) -> Result<(), LowerError> {
        for (name, value) in &self.values {
            let Some(symbol) = network.symbols.iter().find(|symbol| &symbol.name == name) else {
                let known: Vec<&str> = network
                    .symbols
                    .iter()
                    .map(|symbol| symbol.name.as_str())
                    .collect();
                return Err(LowerError::UnknownSymbol {
                    name: name.clone(),
                    known: known.join(", "),
                });
            };
            if *value == 0 {
                return Err(LowerError::ZeroSymbol {
                    name: name.clone(),
                    span: symbol.span,
                });
            }
        }
        match network
            .symbols
            .iter()
            .find(|symbol| !self.values.contains_key(&symbol.name))
        {
            Some(symbol) => Err(LowerError::MissingSymbol {
                name: symbol.name.clone(),
                span: symbol.span,
            }),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error("no value for the symbolic dim `{name}` (give one, for example {name}=1)")]
    MissingSymbol { name: String, span: Span },
    #[error("the symbolic dim `{name}` must be at least 1")]
    ZeroSymbol { name: String, span: Span },
    #[error("`{name}` is not a symbolic dim of this network (its symbols: {known})")]
    UnknownSymbol { name: String, known: String },
    #[error("`{path}` would make a tensor {shape} of more than 2^48 elements")]
    TooLarge {
        path: String,
        span: Span,
        shape: String,
    },
    #[error("`{path}` cannot be lowered in training mode: {message}")]
    Training {
        path: String,
        span: Span,
        message: String,
    },
    #[error("internal error (a bug in nnc) while lowering `{path}`: {message}")]
    Internal {
        path: String,
        span: Span,
        message: String,
    },
}

/// Which semantics the layers get when lowered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LowerMode {
    /// `model.eval()`: dropout is the identity, batch norm uses its running statistics.
    #[default]
    Inference,
    /// `model.train()`: dropout draws a mask, batch norm normalizes with the batch's statistics
    /// and the graph gets outputs with the updated running statistics.
    Training,
}

/// How to lower a network: see [`lower_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowerOptions {
    pub mode: LowerMode,
    /// Also lower the spec's `loss` (an extra scalar output after the network's outputs).
    pub losses: bool,
}

/// Lowers a checked network with the given symbol values to a primitive graph, with inference
/// semantics and without losses.
pub fn lower(compilation: &Compilation, symbols: &SymbolValues) -> Result<PrimGraph, LowerError> {
    lower_with(compilation, symbols, &LowerOptions::default())
}

/// Lowers a checked network with the given symbol values and options to a primitive graph.
pub fn lower_with(
    compilation: &Compilation,
    symbols: &SymbolValues,
    options: &LowerOptions,
) -> Result<PrimGraph, LowerError> {
    let network = &compilation.network;
    symbols.check(network)?;
    let table = &compilation.shapes.table;
    let mut lowering = GraphLowering::new(network, symbols, table, &network.graph, None);
    lowering.options = *options;
    // The loss is lowered only on request; the inputs are those the lowered values read, so a
    // label that only the loss reads is not an input of the inference graph.
    let mut roots: Vec<NodeId> = network.outputs.iter().map(|(_, id)| *id).collect();
    let loss = network.loss.as_ref().filter(|_| options.losses);
    roots.extend(loss.map(|(_, id)| *id));
    let live = live_nodes(&network.graph, &roots);
    for &input in network.inputs.iter().filter(|input| live.contains(input)) {
        let node = network.graph.node(input);
        let Op::Input { name, .. } = &node.op else {
            return Err(lowering.internal_at(node, "a network input is not an input node"));
        };
        let ty = lowering.layer_type(input)?;
        let id = lowering.out.graph.add_input(name, ty, origin_of(node));
        lowering.values.insert(input, id);
    }
    lowering.lower_nodes(&roots)?;
    for (name, id) in network.outputs.iter().chain(loss) {
        let value = lowering.value(*id)?;
        lowering.out.graph.outputs.push((name.clone(), value));
    }
    // Training mode: the new values of batch norm's running statistics, after every other
    // output (the network's, then the loss) as the output contract says.
    lowering.add_buffer_update_outputs();
    let graph = lowering.out.graph;
    if cfg!(debug_assertions) {
        if let Err(error) = verify(&graph) {
            panic!("{error}");
        }
    }
    Ok(graph)
}

fn origin_of(node: &Node) -> Origin {
    Origin {
        path: node.path.clone(),
        span: node.span,
    }
}

/// Lowers one layer graph (the network's, or a cell's body) into one primitive graph.
pub(crate) struct GraphLowering<'a> {
    pub network: &'a Network,
    pub symbols: &'a SymbolValues,
    pub shapes: &'a ShapeTable,
    pub layers: &'a Graph,
    pub out: Emitter,
    values: HashMap<NodeId, PrimNodeId>,
    /// Parameter values by `state_dict` name, so shared layers read one node.
    parameters: BTreeMap<String, PrimNodeId>,
    /// In a scan body: the parameters the body reads, which became body inputs, in input order.
    lifted: Option<Vec<(String, Vec<usize>)>>,
    /// The layer node being lowered.
    current: Option<NodeId>,
    /// Inference or training semantics; cell bodies inherit their network's.
    pub options: LowerOptions,
    /// Training mode: each updated buffer's `state_dict` name and new value (`training.rs`).
    buffer_updates: Vec<(String, PrimNodeId)>,
}

impl<'a> GraphLowering<'a> {
    fn new(
        network: &'a Network,
        symbols: &'a SymbolValues,
        shapes: &'a ShapeTable,
        layers: &'a Graph,
        lifted: Option<Vec<(String, Vec<usize>)>>,
    ) -> GraphLowering<'a> {
        let origin = Origin {
            path: InstancePath::default(),
            span: Span::new(crate::syntax::SourceId::Spec, 0, 0),
        };
        GraphLowering {
            network,
            symbols,
            shapes,
            layers,
            out: Emitter {
                graph: PrimGraph::default(),
                origin,
            },
            values: HashMap::new(),
            parameters: BTreeMap::new(),
            lifted,
            current: None,
            options: LowerOptions::default(),
            buffer_updates: Vec::new(),
        }
    }

    /// Lowers every node that `roots` depend on, in creation order.
    fn lower_nodes(&mut self, roots: &[NodeId]) -> Result<(), LowerError> {
        let layers = self.layers;
        let live = live_nodes(layers, roots);
        for id in layers.creation_order() {
            if self.values.contains_key(&id) || !live.contains(&id) {
                continue;
            }
            let node = layers.node(id);
            self.current = Some(id);
            self.out.origin = origin_of(node);
            let operands = self
                .layers
                .inputs(id)
                .iter()
                .map(|input| self.value(*input))
                .collect::<Result<Vec<_>, _>>()?;
            let value = self.lower_node(id, node, &operands)?;
            let expected = self.layer_type(id)?;
            if self.out.graph.node(value).ty.shape != expected.shape {
                let found = self.out.shape(value);
                let message = format!(
                    "lowered to {found:?}, but its shape is {:?}",
                    expected.shape
                );
                return Err(self.internal_at(node, &message));
            }
            self.values.insert(id, value);
        }
        Ok(())
    }

    fn lower_node(
        &mut self,
        id: NodeId,
        node: &Node,
        operands: &[PrimNodeId],
    ) -> Result<PrimNodeId, LowerError> {
        let Some(&x) = operands.first() else {
            return Err(self.internal_at(node, "a layer without operands inside the graph"));
        };
        match &node.op {
            Op::Input { .. } => Err(self.internal_at(node, "an input node inside the graph")),
            Op::Conv2d(attrs) => conv::conv2d(self, attrs, x),
            Op::ConvTranspose2d(attrs) => conv::conv_transpose2d(self, attrs, x),
            Op::MaxPool2d(attrs) => conv::pool2d(self, attrs, PoolKind::Max, x),
            Op::AvgPool2d(attrs) => {
                let kind = PoolKind::Average {
                    count_include_pad: attrs.count_include_pad,
                };
                conv::pool2d(self, attrs, kind, x)
            }
            Op::AdaptiveAvgPool2d { output } => conv::adaptive_avg_pool2d(self, *output, x),
            Op::Dense { bias, .. } => basic::dense(self, *bias, x),
            Op::Flatten { .. } | Op::Reshape { .. } => {
                let shape = self.layer_type(id)?.shape;
                self.out.reshape(x, shape)
            }
            Op::Permute { dims } => self.out.transpose(x, dims.clone()),
            Op::Transpose { dim0, dim1 } => basic::swap_axes(self, *dim0, *dim1, x),
            Op::Unary(unary) => basic::unary(self, *unary, x),
            Op::Binary(binary) => basic::binary(self, *binary, operands),
            Op::Scalar {
                op,
                scalar,
                scalar_first,
            } => basic::scalar(self, *op, *scalar, *scalar_first, x),
            Op::Softmax { dim, log } => norm::softmax(self, *dim, *log, x),
            Op::Dropout { p } => training::dropout(self, node, *p, x),
            Op::Identity => Ok(x),
            Op::BatchNorm {
                eps,
                momentum,
                affine,
            } => norm::batch_norm(self, *eps, *momentum, *affine, x),
            Op::LayerNorm {
                normalized_dims,
                eps,
                affine,
            } => norm::layer_norm(self, *normalized_dims, *eps, *affine, x),
            Op::Embedding { .. } => {
                let weight = self.parameter("weight")?;
                self.out.emit(PrimOp::Gather, &[weight, x])
            }
            Op::Concat { dim } => {
                let axis = resolve_axis(*dim, self.out.shape(x).len());
                self.out.concat(operands, axis)
            }
            Op::Slice { dim, start, end } => basic::slice(self, *dim, *start, *end, x),
            Op::Select { dim, index } => basic::select(self, *dim, *index, x),
            Op::MatMul => self.out.matmul(x, operands[1]),
            Op::Reduce { op, dims, keepdim } => basic::reduce(self, *op, dims, *keepdim, x),
            Op::CausalMask => basic::causal_mask(self, x),
            Op::RandomNormal => basic::random_normal(self, node, x),
            Op::Recurrent(attrs) => recurrent::recurrent(self, attrs, x),
            Op::Scan { body, sequence } => recurrent::cell(self, id, body, *sequence, x),
            Op::Loss(attrs) => loss::loss(self, attrs, operands),
        }
    }

    /// The primitive value of a lowered layer node.
    fn value(&self, id: NodeId) -> Result<PrimNodeId, LowerError> {
        self.values.get(&id).copied().ok_or_else(|| {
            self.internal_at(self.layers.node(id), "a layer is used before it is lowered")
        })
    }

    /// The concrete type of a layer node, with the symbols specialized.
    pub fn layer_type(&self, id: NodeId) -> Result<TensorType, LowerError> {
        let info = self.shapes.info(id);
        let shape = self.concrete(&info.shape, self.layers.node(id))?;
        Ok(TensorType {
            shape,
            element_type: info.element_type,
        })
    }

    /// Specializes a shape; `node` is blamed when the result is too large.
    pub fn concrete(&self, dims: &[Dim], node: &Node) -> Result<Vec<usize>, LowerError> {
        let mut shape = Vec::with_capacity(dims.len());
        for dim in dims {
            shape.push(match dim {
                Dim::Known(size) => *size as usize,
                Dim::Symbolic(symbol) => {
                    let name = &self.network.symbol(*symbol).name;
                    self.symbols
                        .get(name)
                        .ok_or_else(|| LowerError::MissingSymbol {
                            name: name.clone(),
                            span: self.network.symbol(*symbol).span,
                        })?
                }
            });
        }
        let elements = shape
            .iter()
            .try_fold(1u64, |product, size| product.checked_mul(*size as u64));
        if elements.is_none_or(|count| count > MAX_ELEMENTS) {
            return Err(LowerError::TooLarge {
                path: node.path.to_string(),
                span: node.span,
                shape: format!("{shape:?}"),
            });
        }
        Ok(shape)
    }

    /// The current layer's parameter tensor `tensor` (`weight`, `bias`, `weight_ih_l0`, ...).
    pub fn parameter(&mut self, tensor: &str) -> Result<PrimNodeId, LowerError> {
        let current = self
            .current
            .expect("parameters are read while lowering a node");
        let node = self.layers.node(current);
        let shape = self
            .shapes
            .node_params
            .get(&current)
            .and_then(|params| params.iter().find(|param| param.name == tensor))
            .map(|param| {
                param
                    .shape
                    .iter()
                    .map(|size| *size as usize)
                    .collect::<Vec<_>>()
            })
            .ok_or_else(|| {
                self.internal_at(node, &format!("the layer has no tensor `{tensor}`"))
            })?;
        self.parameter_named(&format!("{}.{tensor}", node.path), shape)
    }

    /// A parameter by `state_dict` name: a `Parameter` node, or in a body, a lifted body input.
    pub fn parameter_named(
        &mut self,
        name: &str,
        shape: Vec<usize>,
    ) -> Result<PrimNodeId, LowerError> {
        if let Some(id) = self.parameters.get(name) {
            return Ok(*id);
        }
        let id = match &mut self.lifted {
            Some(lifted) => {
                lifted.push((name.to_string(), shape.clone()));
                let origin = self.out.origin.clone();
                self.out
                    .graph
                    .add_input(name, TensorType::float(shape), origin)
            }
            None => self.out.emit(
                PrimOp::Parameter {
                    name: name.to_string(),
                    shape,
                },
                &[],
            )?,
        };
        self.parameters.insert(name.to_string(), id);
        Ok(id)
    }

    pub fn internal_at(&self, node: &Node, message: &str) -> LowerError {
        LowerError::Internal {
            path: node.path.to_string(),
            span: node.span,
            message: message.to_string(),
        }
    }
}

/// A possibly negative dim (already checked by the shape pass) as an axis.
pub(crate) fn resolve_axis(dim: i64, rank: usize) -> usize {
    if dim < 0 {
        (dim + rank as i64) as usize
    } else {
        dim as usize
    }
}

/// The nodes that `roots` depend on (dead layers are not lowered).
fn live_nodes(graph: &Graph, roots: &[NodeId]) -> HashSet<NodeId> {
    let mut live = HashSet::new();
    let mut stack: Vec<NodeId> = roots.to_vec();
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(graph.inputs(id));
        }
    }
    live
}
