//! The cost model: multiply-accumulates (MACs) and other floating-point operations of each
//! node's forward pass, at the report values of symbolic dims (batch `N` = 1).
//!
//! Conventions (docs/report.md has the table): 1 MAC = 2 FLOPs. `macs` counts the products of
//! convolutions, dense layers, matmuls (attention included) and recurrent gates; `other_flops`
//! counts everything else once per element: bias adds, activations (transcendentals count 1),
//! pooling (one compare or add per window element), normalization (batch norm at inference is a
//! scale and a shift: 2 per element; layer norm 5 per element plus 2 if affine), softmax (3 per
//! element). Data movement (reshape, permute, slice, concat, embedding lookup) and dropout
//! (identity at inference) cost 0. Losses count per element of their prediction: mse 3
//! (difference, square, sum), cross_entropy 5 (log-softmax 3, the label's term and the sum 2),
//! the binary cross-entropies and gaussian_nll 6 (two transcendentals, products and the sum).

use crate::ir::*;
use crate::shape::ShapeTable;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub macs: u64,
    pub other_flops: u64,
}

impl Cost {
    pub fn flops(&self) -> u64 {
        self.macs.saturating_mul(2).saturating_add(self.other_flops)
    }

    pub fn add(&mut self, other: Cost) {
        self.macs = self.macs.saturating_add(other.macs);
        self.other_flops = self.other_flops.saturating_add(other.other_flops);
    }

    fn scaled(self, factor: u64) -> Cost {
        Cost {
            macs: self.macs.saturating_mul(factor),
            other_flops: self.other_flops.saturating_mul(factor),
        }
    }
}

/// Element count of a shape at report values. Shapes are bounded by the shape pass (2^48
/// elements), so products stay far from overflow; saturation is a second guard.
pub fn element_count(network: &Network, shape: &[Dim]) -> u64 {
    shape.iter().fold(1u64, |product, dim| {
        product.saturating_mul(network.report_size(*dim))
    })
}

/// The forward cost of one node of `graph`.
pub fn node_cost(network: &Network, graph: &Graph, shapes: &ShapeTable, id: NodeId) -> Cost {
    let node = graph.node(id);
    let inputs: Vec<&Shape> = graph
        .inputs(id)
        .iter()
        .map(|input| shapes.shape(*input))
        .collect();
    let output = shapes.shape(id);
    let out_elements = element_count(network, output);
    let in_elements = inputs
        .first()
        .map_or(0, |shape| element_count(network, shape));
    let size = |dim: Dim| network.report_size(dim);
    let elementwise = |per_element: u64| Cost {
        macs: 0,
        other_flops: out_elements.saturating_mul(per_element),
    };
    match &node.op {
        Op::Input { .. }
        | Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Transpose { .. } => Cost::default(),
        Op::Dropout { .. }
        | Op::Identity
        | Op::Embedding { .. }
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Select { .. } => Cost::default(),
        Op::Conv2d(attrs) => {
            let per_output = (size(inputs[0][1]) / attrs.groups)
                .saturating_mul(attrs.kernel[0])
                .saturating_mul(attrs.kernel[1]);
            Cost {
                macs: out_elements.saturating_mul(per_output),
                other_flops: if attrs.bias { out_elements } else { 0 },
            }
        }
        Op::ConvTranspose2d(attrs) => {
            let per_input = (attrs.out_channels / attrs.groups)
                .saturating_mul(attrs.kernel[0])
                .saturating_mul(attrs.kernel[1]);
            Cost {
                macs: in_elements.saturating_mul(per_input),
                other_flops: if attrs.bias { out_elements } else { 0 },
            }
        }
        // Pooling has no weights, so its window is not bounded by the parameter-size check.
        Op::MaxPool2d(attrs) => elementwise(attrs.kernel[0].saturating_mul(attrs.kernel[1]) - 1),
        Op::AvgPool2d(attrs) => elementwise(attrs.kernel[0].saturating_mul(attrs.kernel[1])),
        Op::AdaptiveAvgPool2d { .. } => Cost {
            macs: 0,
            other_flops: in_elements.saturating_add(out_elements),
        },
        Op::Dense { bias, .. } => {
            let features = inputs[0].last().map_or(0, |dim| size(*dim));
            Cost {
                macs: out_elements.saturating_mul(features),
                other_flops: if *bias { out_elements } else { 0 },
            }
        }
        Op::Unary(_) | Op::Binary(_) | Op::Scalar { .. } | Op::CausalMask | Op::RandomNormal => {
            elementwise(1)
        }
        Op::Softmax { .. } => elementwise(3),
        Op::BatchNorm { .. } => elementwise(2),
        Op::LayerNorm { affine, .. } => elementwise(if *affine { 7 } else { 5 }),
        Op::MatMul => {
            let left = inputs[0];
            let inner = size(left[left.len() - 1]);
            Cost {
                macs: out_elements.saturating_mul(inner),
                other_flops: 0,
            }
        }
        Op::Reduce {
            op: ReduceOp::Mean, ..
        } => Cost {
            macs: 0,
            other_flops: in_elements.saturating_add(out_elements),
        },
        Op::Reduce { .. } => Cost {
            macs: 0,
            other_flops: in_elements,
        },
        Op::Recurrent(attrs) => recurrent_cost(network, attrs, inputs[0]),
        Op::Loss(attrs) => {
            let per_element: u64 = match attrs.function {
                LossFunction::MeanSquaredError => 3,
                LossFunction::CrossEntropy { .. } => 5,
                LossFunction::BinaryCrossEntropyWithLogits { .. }
                | LossFunction::BinaryCrossEntropy
                | LossFunction::GaussianNll { .. } => 6,
            };
            Cost {
                macs: 0,
                other_flops: in_elements.saturating_mul(per_element),
            }
        }
        Op::Scan { body, .. } => {
            let body_shapes = shapes
                .scan_bodies
                .get(&id)
                .expect("a checked scan has body shapes");
            let mut step = Cost::default();
            for body_node in body.graph.node_ids() {
                step.add(node_cost(network, &body.graph, body_shapes, body_node));
            }
            step.scaled(size(inputs[0][1]))
        }
    }
}

/// Per step, layer and direction: `N * G*H * (in + H)` MACs for the two gate products, two bias
/// adds of `G*H`, and the gate arithmetic (RNN 2, LSTM 9, GRU 9 per hidden unit).
fn recurrent_cost(network: &Network, attrs: &RecurrentAttrs, input: &Shape) -> Cost {
    let batch = network.report_size(input[0]);
    let steps = network.report_size(input[1]);
    let features = network.report_size(input[2]);
    let directions = if attrs.bidirectional { 2 } else { 1 };
    let gates = attrs.kind.gate_count().saturating_mul(attrs.hidden);
    let gate_arithmetic = match attrs.kind {
        RecurrentKind::Rnn => 2u64,
        RecurrentKind::Lstm | RecurrentKind::Gru => 9,
    }
    .saturating_mul(attrs.hidden);
    let mut cost = Cost::default();
    for layer in 0..attrs.layers {
        let layer_input = if layer == 0 {
            features
        } else {
            directions * attrs.hidden
        };
        let bias_adds = if attrs.bias {
            gates.saturating_mul(2)
        } else {
            0
        };
        let per_step = Cost {
            macs: batch
                .saturating_mul(gates)
                .saturating_mul(layer_input.saturating_add(attrs.hidden)),
            other_flops: batch.saturating_mul(bias_adds.saturating_add(gate_arithmetic)),
        };
        cost.add(per_step.scaled(steps.saturating_mul(directions)));
    }
    cost
}
