//! Stage 4: reports. [`summarize`] gathers, for each layer application, its output shape,
//! parameters, cost and receptive field, plus network totals; `table`, `json` and `dot` render
//! them and [`Budget`] checks them.

pub mod cost;
pub mod dot;
pub mod json;
pub mod receptive_field;
pub mod table;
pub mod tree;

use std::collections::HashSet;

use crate::ir::*;
use crate::Compilation;
use cost::{element_count, node_cost, Cost};
use receptive_field::ReceptiveField;

/// Bytes per element; nnc computes in f32.
pub const BYTES_PER_ELEMENT: u64 = 4;

/// One row of the report: one layer application.
#[derive(Clone, Debug)]
pub struct LayerRow {
    pub node: NodeId,
    pub path: InstancePath,
    pub op: String,
    pub shape: Shape,
    /// Trainable parameters of this layer (including a cell's body); 0 for a repeated use of a
    /// shared layer, whose first use holds the count.
    pub params: u64,
    pub buffers: u64,
    /// This application reuses the weights of an earlier one.
    pub shared: bool,
    pub cost: Cost,
    pub receptive_field: Option<ReceptiveField>,
}

/// Everything the reports print.
#[derive(Clone, Debug)]
pub struct Summary {
    pub rows: Vec<LayerRow>,
    pub params: u64,
    pub buffers: u64,
    pub cost: Cost,
    pub param_bytes: u64,
    pub activation_bytes: u64,
    /// The spec's `loss`, if it declares one. The layers only the loss needs (the loss, its
    /// label inputs) are rows like any other, but not in the forward totals above: inference
    /// does not compute them.
    pub loss: Option<LossSummary>,
}

#[derive(Clone, Debug)]
pub struct LossSummary {
    pub name: String,
    /// The loss functions it calls (`cross_entropy`), or its op when it calls none.
    pub functions: Vec<String>,
    /// The other layers only the loss needs (terms written by hand, such as a KL divergence).
    pub other_layers: usize,
    /// The inputs only the loss reads (labels, targets).
    pub inputs: Vec<String>,
    /// The cost of the layers only the loss needs, at batch 1.
    pub cost: Cost,
}

impl Summary {
    pub fn trainable_params(&self) -> u64 {
        // nnc has no frozen parameters yet: every parameter is trained.
        self.params
    }
}

pub fn summarize(compilation: &Compilation) -> Summary {
    let network = &compilation.network;
    let shapes = &compilation.shapes.table;
    let fields = receptive_field::receptive_fields(network, shapes);
    let mut seen_paths: HashSet<InstancePath> = HashSet::new();
    let mut rows = Vec::new();
    let mut total_cost = Cost::default();
    let mut loss_cost = Cost::default();
    let needed_by_outputs = network.needed_by_outputs();
    let mut activation_elements: u64 = 0;
    for id in network.graph.creation_order() {
        let node = network.graph.node(id);
        let shape = shapes.shape(id).clone();
        let forward = needed_by_outputs[id.index()];
        if forward {
            activation_elements =
                activation_elements.saturating_add(element_count(network, &shape));
        }
        let mut tensors: Vec<_> = shapes.node_params.get(&id).cloned().unwrap_or_default();
        if let Op::Scan { body, .. } = &node.op {
            let body_shapes = &shapes.scan_bodies[&id];
            for body_node in body.graph.node_ids() {
                tensors.extend(
                    body_shapes
                        .node_params
                        .get(&body_node)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
        }
        let has_params = !tensors.is_empty();
        let shared = has_params && !seen_paths.insert(node.path.clone());
        let count = |trainable: bool| -> u64 {
            if shared {
                return 0;
            }
            tensors
                .iter()
                .filter(|tensor| tensor.trainable == trainable)
                .map(|tensor| tensor.element_count())
                .fold(0, u64::saturating_add)
        };
        let cost = node_cost(network, &network.graph, shapes, id);
        if forward {
            total_cost.add(cost);
        } else {
            loss_cost.add(cost);
        }
        rows.push(LayerRow {
            node: id,
            path: node.path.clone(),
            op: node.op.name(),
            shape,
            params: count(true),
            buffers: count(false),
            shared,
            cost,
            receptive_field: fields.get(&id).copied(),
        });
    }
    let params = compilation.shapes.params.trainable_count();
    let buffers = compilation.shapes.params.buffer_count();
    Summary {
        rows,
        params,
        buffers,
        cost: total_cost,
        param_bytes: (params + buffers).saturating_mul(BYTES_PER_ELEMENT),
        activation_bytes: activation_elements.saturating_mul(BYTES_PER_ELEMENT),
        loss: loss_summary(network, &needed_by_outputs, loss_cost),
    }
}

fn loss_summary(network: &Network, needed_by_outputs: &[bool], cost: Cost) -> Option<LossSummary> {
    let (name, loss_node) = network.loss.as_ref()?;
    let loss_only = network
        .graph
        .creation_order()
        .into_iter()
        .filter(|id| !needed_by_outputs[id.index()]);
    let mut functions = Vec::new();
    let mut inputs = Vec::new();
    let mut other_layers = 0;
    for id in loss_only {
        match &network.graph.node(id).op {
            Op::Loss(attrs) => functions.push(attrs.function.name().to_string()),
            Op::Input { name, .. } => inputs.push(name.clone()),
            _ => other_layers += 1,
        }
    }
    if functions.is_empty() {
        // A loss written by hand (`mean(x * x)`): name its last op, which is not one of the
        // other layers then (unless an output needs it too, and it was not counted).
        functions.push(network.graph.node(*loss_node).op.name());
        if !needed_by_outputs[loss_node.index()] {
            other_layers -= 1;
        }
    }
    Some(LossSummary {
        name: name.clone(),
        functions,
        other_layers,
        inputs,
        cost,
    })
}

/// A budget from `--assert`, such as `params <= 12M`.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub metric: Metric,
    pub comparison: Comparison,
    pub limit: f64,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Params,
    TrainableParams,
    Buffers,
    Macs,
    Flops,
    ParamBytes,
    ActivationBytes,
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    Equal,
}

pub const METRIC_NAMES: &[&str] = &[
    "params",
    "trainable_params",
    "buffers",
    "macs",
    "flops",
    "param_bytes",
    "activation_bytes",
    "memory",
];

impl Budget {
    /// Parses `METRIC OP VALUE`, where VALUE takes the suffixes K, M, G, T (powers of 1000) or
    /// KiB, MiB, GiB (powers of 1024), and an optional trailing B for bytes.
    pub fn parse(text: &str) -> Result<Budget, String> {
        let operators = ["<=", ">=", "==", "<", ">"];
        let (position, operator) = operators
            .iter()
            .filter_map(|operator| text.find(operator).map(|position| (position, *operator)))
            .min_by_key(|(position, operator)| (*position, usize::MAX - operator.len()))
            .ok_or_else(|| format!("budget `{text}` needs a comparison such as `params <= 12M`"))?;
        let metric_text = text[..position].trim();
        let value_text = text[position + operator.len()..].trim();
        let metric = match metric_text {
            "params" => Metric::Params,
            "trainable_params" => Metric::TrainableParams,
            "buffers" => Metric::Buffers,
            "macs" => Metric::Macs,
            "flops" => Metric::Flops,
            "param_bytes" => Metric::ParamBytes,
            "activation_bytes" => Metric::ActivationBytes,
            "memory" => Metric::Memory,
            other => {
                return Err(format!(
                    "unknown budget metric `{other}`; expected one of: {}",
                    METRIC_NAMES.join(", ")
                ))
            }
        };
        let comparison = match operator {
            "<=" => Comparison::LessEqual,
            ">=" => Comparison::GreaterEqual,
            "==" => Comparison::Equal,
            "<" => Comparison::Less,
            _ => Comparison::Greater,
        };
        let limit = parse_quantity(value_text).ok_or_else(|| {
            format!("budget `{text}`: `{value_text}` is not a number like 12M, 1.5G or 512MiB")
        })?;
        Ok(Budget {
            metric,
            comparison,
            limit,
            text: text.trim().to_string(),
        })
    }

    /// The metric's value in `summary`.
    pub fn measure(&self, summary: &Summary) -> u64 {
        match self.metric {
            Metric::Params => summary.params,
            Metric::TrainableParams => summary.trainable_params(),
            Metric::Buffers => summary.buffers,
            Metric::Macs => summary.cost.macs,
            Metric::Flops => summary.cost.flops(),
            Metric::ParamBytes => summary.param_bytes,
            Metric::ActivationBytes => summary.activation_bytes,
            Metric::Memory => summary.param_bytes.saturating_add(summary.activation_bytes),
        }
    }

    /// `None` when the budget holds, or a message saying by how much it is broken.
    pub fn check(&self, summary: &Summary) -> Option<String> {
        let value = self.measure(summary) as f64;
        let holds = match self.comparison {
            Comparison::Less => value < self.limit,
            Comparison::LessEqual => value <= self.limit,
            Comparison::Greater => value > self.limit,
            Comparison::GreaterEqual => value >= self.limit,
            Comparison::Equal => value == self.limit,
        };
        if holds {
            None
        } else {
            Some(format!(
                "`{}`: the network has {}",
                self.text,
                table::group_digits(value as u64)
            ))
        }
    }
}

fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let text = text.strip_suffix('B').unwrap_or(text);
    let suffixes: [(&str, f64); 7] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return number
                .trim()
                .replace('_', "")
                .parse::<f64>()
                .ok()
                .filter(|value| value.is_finite())
                .map(|value| value * factor);
        }
    }
    text.replace(['_', ','], "")
        .parse::<f64>()
        .ok()
        .filter(|value| value.is_finite())
}
