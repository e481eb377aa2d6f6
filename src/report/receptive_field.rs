//! Receptive field and effective stride of each spatial (`[N, C, H, W]`) node's output, in
//! input pixels, per axis: `rf = rf_in + (k_eff - 1) * jump_in` and `jump = jump_in * stride`
//! through convolutions and pools (`k_eff = dilation * (k - 1) + 1`). A transposed convolution
//! divides the jump by its stride. Global pooling sees the whole input. Nodes that are not
//! spatial, or that mix positions (dense, reshape), have none.

use std::collections::HashMap;

use crate::ir::*;
use crate::shape::ShapeTable;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReceptiveField {
    /// `[height, width]` in input pixels.
    pub size: [f64; 2],
    /// Distance in input pixels between neighbouring outputs.
    pub jump: [f64; 2],
    /// The field covers the whole input (after global or adaptive pooling).
    pub global: bool,
}

pub fn receptive_fields(network: &Network, shapes: &ShapeTable) -> HashMap<NodeId, ReceptiveField> {
    let graph = &network.graph;
    let mut fields = HashMap::new();
    for id in graph.creation_order() {
        let spatial = shapes.shape(id).len() == 4;
        let inputs: Vec<Option<ReceptiveField>> = graph
            .inputs(id)
            .iter()
            .map(|input| fields.get(input).copied())
            .collect();
        let first = inputs.first().copied().flatten();
        let window =
            |input: ReceptiveField, kernel: [u64; 2], stride: [u64; 2], dilation: [u64; 2]| {
                let mut field = input;
                for axis in 0..2 {
                    let effective = dilation[axis] as f64 * (kernel[axis] - 1) as f64 + 1.0;
                    field.size[axis] += (effective - 1.0) * input.jump[axis];
                    field.jump[axis] *= stride[axis] as f64;
                }
                field
            };
        let field = match (&graph.node(id).op, first) {
            (Op::Input { .. }, _) if spatial => Some(ReceptiveField {
                size: [1.0; 2],
                jump: [1.0; 2],
                global: false,
            }),
            (_, None) => None,
            (_, Some(_)) if !spatial => None,
            (Op::Conv2d(attrs), Some(input)) => {
                Some(window(input, attrs.kernel, attrs.stride, attrs.dilation))
            }
            (Op::MaxPool2d(attrs) | Op::AvgPool2d(attrs), Some(input)) => {
                Some(window(input, attrs.kernel, attrs.stride, attrs.dilation))
            }
            (Op::ConvTranspose2d(attrs), Some(input)) => {
                let mut field = input;
                for axis in 0..2 {
                    let stride = attrs.stride[axis] as f64;
                    let taps = (attrs.kernel[axis] as f64 / stride).ceil();
                    field.size[axis] += (taps - 1.0) * input.jump[axis];
                    field.jump[axis] /= stride;
                }
                Some(field)
            }
            (Op::AdaptiveAvgPool2d { .. }, Some(input)) => Some(ReceptiveField {
                global: true,
                ..input
            }),
            (Op::Binary(_) | Op::Concat { .. }, Some(_)) => {
                let known: Vec<ReceptiveField> = inputs.iter().flatten().copied().collect();
                let mut field = known[0];
                for other in &known[1..] {
                    for axis in 0..2 {
                        field.size[axis] = field.size[axis].max(other.size[axis]);
                        field.jump[axis] = field.jump[axis].max(other.jump[axis]);
                    }
                    field.global |= other.global;
                }
                Some(field)
            }
            (
                Op::Unary(_)
                | Op::Scalar { .. }
                | Op::Dropout { .. }
                | Op::BatchNorm { .. }
                | Op::Identity
                | Op::Softmax { dim: 1, .. },
                Some(input),
            ) => Some(input),
            _ => None,
        };
        if let Some(field) = field {
            fields.insert(id, field);
        }
    }
    fields
}

/// `7` for a square field, `7x3` otherwise; `global` after global pooling.
pub fn format_pair(values: [f64; 2]) -> String {
    let one = |value: f64| {
        if value.fract() == 0.0 {
            format!("{value}")
        } else {
            format!("{value:.2}")
        }
    };
    if values[0] == values[1] {
        one(values[0])
    } else {
        format!("{}x{}", one(values[0]), one(values[1]))
    }
}
