//! The parameter layout of a compiled spec: every state_dict tensor with its shape, its PyTorch
//! name and how PyTorch's default constructor initializes it.
//!
//! The initializer depends on the layer that owns the tensor, so this walks the layer graph (and
//! the bodies of recurrent cells), reads each node's parameters from the shape table, and keys
//! them by state_dict name; a shared layer owns its tensors once.

use std::collections::HashMap;

use crate::ir::{Graph, InstancePath, Node, Op};
use crate::shape::{ParamTensor, ShapeTable};
use crate::syntax::SourceId;
use crate::Compilation;

/// How a tensor's initial values are drawn, as PyTorch's modules do in `reset_parameters`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every element equal to the value (batch norm's weight 1, bias 0, running_var 1, ...).
    Constant(f32),
    /// U(-bound, bound): kaiming_uniform(a = sqrt(5)) gives `bound = 1/sqrt(fan_in)`, xavier
    /// uniform gives `sqrt(6 / (fan_in + fan_out))`, recurrent layers `1/sqrt(hidden)`.
    Uniform { bound: f64 },
    /// N(0, std²): embeddings use std 1.
    Normal { std: f64 },
}

/// One tensor of a spec's state_dict.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    /// nnc's state_dict key, `layer1.0.conv1.weight`.
    pub name: String,
    /// PyTorch's key: the same, except `in_proj_weight`/`in_proj_bias` for the prelude's
    /// attention, where nnc has the layer `in_proj` with `weight` and `bias`.
    pub pytorch_name: String,
    pub shape: Vec<usize>,
    /// `false` for buffers (batch norm's running statistics).
    pub trainable: bool,
    pub init: Init,
}

/// Every parameter and buffer tensor of the spec, in state_dict (path) order.
pub fn param_layout(compilation: &Compilation) -> Vec<ParamEntry> {
    let network = &compilation.network;
    let block_names: HashMap<&InstancePath, &str> = network
        .block_instances
        .iter()
        .map(|(path, block)| (path, block.as_str()))
        .collect();
    let mut walker = OwnerWalk {
        block_names,
        owned: HashMap::new(),
    };
    walker.walk(&network.graph, &compilation.shapes.table);
    let entries = compilation.shapes.params.state_dict_entries();
    entries
        .into_iter()
        .map(|(name, shape, trainable)| {
            let Some((init, pytorch_name)) = walker.owned.remove(&name) else {
                panic!("internal error (a bug in nnc): parameter `{name}` has no owning node");
            };
            ParamEntry {
                name,
                pytorch_name,
                shape: shape.iter().map(|&size| to_usize(size)).collect(),
                trainable,
                init,
            }
        })
        .collect()
}

/// The fan-in PyTorch's `_calculate_fan_in_and_fan_out` computes for a weight:
/// `size(1) * prod(size[2..])`. For `conv_transpose2d`, whose weight is
/// `[in, out/groups, kh, kw]`, that is `out/groups * kh * kw`, as in PyTorch.
pub fn fan_in(weight_shape: &[u64]) -> u64 {
    weight_shape.get(1).copied().unwrap_or(1) * receptive_field(weight_shape)
}

/// PyTorch's fan-out: `size(0) * prod(size[2..])`.
pub fn fan_out(weight_shape: &[u64]) -> u64 {
    weight_shape.first().copied().unwrap_or(1) * receptive_field(weight_shape)
}

fn receptive_field(weight_shape: &[u64]) -> u64 {
    weight_shape.iter().skip(2).product()
}

/// Sizes are below 2^48 after a successful shape pass, so they fit a 64-bit `usize`.
fn to_usize(size: u64) -> usize {
    usize::try_from(size)
        .expect("internal error (a bug in nnc): a size beyond usize passed the shape pass")
}

struct OwnerWalk<'a> {
    /// The block name of each block application, to recognise the prelude's attention.
    block_names: HashMap<&'a InstancePath, &'a str>,
    /// state_dict name -> (initializer, PyTorch name).
    owned: HashMap<String, (Init, String)>,
}

impl OwnerWalk<'_> {
    fn walk(&mut self, graph: &Graph, table: &ShapeTable) {
        for id in graph.node_ids() {
            let node = graph.node(id);
            if let Some(params) = table.node_params.get(&id) {
                for tensor in params {
                    let name = format!("{}.{}", node.path, tensor.name);
                    if !self.owned.contains_key(&name) {
                        let owned = self.initializer(node, tensor, params);
                        self.owned.insert(name, owned);
                    }
                }
            }
            if let (Op::Scan { body, .. }, Some(body_table)) =
                (&node.op, table.scan_bodies.get(&id))
            {
                self.walk(&body.graph, body_table);
            }
        }
    }

    /// The initializer and PyTorch name of one tensor of `node`; `siblings` are all its tensors.
    fn initializer(
        &self,
        node: &Node,
        tensor: &ParamTensor,
        siblings: &[ParamTensor],
    ) -> (Init, String) {
        let nnc_name = format!("{}.{}", node.path, tensor.name);
        let attention = self.attention_role(node);
        let init = match &node.op {
            Op::Conv2d(_) | Op::ConvTranspose2d(_) | Op::Dense { .. } => {
                let weight = siblings
                    .iter()
                    .find(|sibling| sibling.name == "weight")
                    .expect("internal error (a bug in nnc): a layer with a bias has no weight");
                linear_like(&tensor.name, &weight.shape, attention)
            }
            Op::BatchNorm { .. } => match tensor.name.as_str() {
                "weight" | "running_var" => Init::Constant(1.0),
                _ => Init::Constant(0.0),
            },
            Op::LayerNorm { .. } => match tensor.name.as_str() {
                "weight" => Init::Constant(1.0),
                _ => Init::Constant(0.0),
            },
            Op::Embedding { .. } => Init::Normal { std: 1.0 },
            // nn.RNN, nn.LSTM and nn.GRU draw every weight and bias from U(-k, k), k = 1/sqrt(hidden).
            Op::Recurrent(attrs) => Init::Uniform {
                bound: inverse_sqrt(attrs.hidden),
            },
            Op::Input { .. }
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d { .. }
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Transpose { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Scalar { .. }
            | Op::Softmax { .. }
            | Op::Dropout { .. }
            | Op::Concat { .. }
            | Op::Slice { .. }
            | Op::Select { .. }
            | Op::MatMul
            | Op::Reduce { .. }
            | Op::CausalMask
            | Op::RandomNormal
            | Op::Identity
            | Op::Loss(_)
            | Op::Scan { .. } => panic!(
                "internal error (a bug in nnc): `{}` has parameters, but {} layers have none",
                nnc_name,
                node.op.name()
            ),
        };
        let pytorch_name = match attention {
            Some(AttentionRole::InProjection) => {
                format!(
                    "{}.in_proj_{}",
                    node.path.prefix(node.path.depth() - 1),
                    tensor.name
                )
            }
            _ => nnc_name,
        };
        (init, pytorch_name)
    }

    /// Whether `node` is the input or output projection of the prelude's
    /// `multi_head_attention`, which nn.MultiheadAttention initializes its own way. A spec that
    /// defines its own block of that name gets ordinary dense layers.
    fn attention_role(&self, node: &Node) -> Option<AttentionRole> {
        let prelude_dense =
            node.span.source == SourceId::Prelude && matches!(node.op, Op::Dense { .. });
        let last = node.path.0.last().filter(|_| prelude_dense)?;
        let block = node.path.prefix(node.path.depth() - 1);
        if self.block_names.get(&block) != Some(&"multi_head_attention") {
            return None;
        }
        match last.as_str() {
            "in_proj" => Some(AttentionRole::InProjection),
            "out_proj" => Some(AttentionRole::OutProjection),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum AttentionRole {
    InProjection,
    OutProjection,
}

/// Conv, transposed conv and dense: PyTorch's kaiming_uniform(a = sqrt(5)) weight and
/// U(±1/sqrt(fan_in)) bias, except in nn.MultiheadAttention, whose `_reset_parameters` draws
/// `in_proj_weight` by xavier_uniform and zeroes `in_proj_bias` and `out_proj.bias`
/// (`out_proj.weight` keeps nn.Linear's default).
fn linear_like(tensor: &str, weight_shape: &[u64], attention: Option<AttentionRole>) -> Init {
    match (attention, tensor) {
        (Some(AttentionRole::InProjection), "weight") => {
            // xavier_uniform with gain 1: bound = sqrt(6 / (fan_in + fan_out)).
            let fans = fan_in(weight_shape) + fan_out(weight_shape);
            let bound = if fans == 0 {
                0.0
            } else {
                (6.0 / fans as f64).sqrt()
            };
            Init::Uniform { bound }
        }
        (Some(_), "bias") => Init::Constant(0.0),
        // kaiming_uniform(a = sqrt(5)): gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in)
        // = 1/sqrt(fan_in); the bias uses the same bound (0 for an empty weight, as PyTorch).
        _ => Init::Uniform {
            bound: inverse_sqrt(fan_in(weight_shape)),
        },
    }
}

/// `1/sqrt(n)`, or 0 for `n = 0` (PyTorch leaves zero-element tensors alone).
fn inverse_sqrt(n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        1.0 / (n as f64).sqrt()
    }
}
