//! The cost of primitive nodes: multiply-accumulates (MACs) and other floating-point
//! operations, with the conventions of the layer-level report (`src/report/cost.rs`,
//! docs/report.md), so that the two can be compared and the backward pass, which exists only as
//! primitives, can be counted the same way.
//!
//! Conventions: 1 MAC = 2 FLOPs ([`Cost::flops`]). `macs` counts the products of matmuls and
//! (transposed) convolutions; `other_flops` counts everything else once per element:
//! elementwise functions (transcendentals and comparisons count 1) per output element, random
//! numbers per element drawn, reductions per input element (mean: plus one division per output),
//! pooling per window tap (max: `kh*kw - 1` compares, average: `kh*kw` adds and the division),
//! scatter-add one add per update element. Data movement (inputs, parameters, constants,
//! reshape, transpose, slice, concat, gather) costs 0. A scan costs its body's cost once per
//! step.
//!
//! The counts are of what the graph computes, not of a layer's textbook cost: a batch norm at
//! inference costs whatever arithmetic its lowering emits, and a gradient's one-hot matmul
//! counts its MACs like any matmul.

use super::*;
pub use crate::report::cost::Cost;

/// The cost of node `id` of `graph`.
pub fn node_cost(graph: &PrimGraph, id: PrimNodeId) -> Cost {
    let node = graph.node(id);
    let operand_shapes: Vec<&[usize]> = graph
        .operands(id)
        .iter()
        .map(|operand| graph.node(*operand).ty.shape.as_slice())
        .collect();
    let out_elements = count(&node.ty.shape);
    let in_elements = operand_shapes.first().map_or(0, |shape| count(shape));
    let elementwise = |per_element: u64| Cost {
        macs: 0,
        other_flops: out_elements.saturating_mul(per_element),
    };
    let products = |macs: u64| Cost {
        macs,
        other_flops: 0,
    };
    match &node.op {
        PrimOp::Input { .. }
        | PrimOp::Parameter { .. }
        | PrimOp::Constant(_)
        | PrimOp::Reshape { .. }
        | PrimOp::Transpose { .. }
        | PrimOp::Slice { .. }
        | PrimOp::Concat { .. }
        | PrimOp::Gather => Cost::default(),
        PrimOp::RandomNormal { .. }
        | PrimOp::RandomUniform { .. }
        | PrimOp::Unary(_)
        | PrimOp::Binary(_) => elementwise(1),
        // One add per update element into its row.
        PrimOp::ScatterAdd { .. } => Cost {
            macs: 0,
            other_flops: in_elements,
        },
        // [..., M, K] x [..., K, P]: K products per output element.
        PrimOp::MatMul => {
            let inner = operand_shapes[0].last().copied().unwrap_or(1) as u64;
            products(out_elements.saturating_mul(inner))
        }
        // Weight [O, C/groups, KH, KW]: one window of C/groups * KH * KW per output element.
        PrimOp::Conv2d(_) => {
            let window = count(&operand_shapes[1][1..]);
            products(out_elements.saturating_mul(window))
        }
        // Output gradient [N, O, OH, OW]: every weight element sums N * OH * OW products.
        PrimOp::Conv2dWeightGradient(_) => {
            let positions = count(operand_shapes[1]) / (operand_shapes[1][1].max(1) as u64);
            products(out_elements.saturating_mul(positions))
        }
        // Weight [C, O/groups, KH, KW]: each input element scatters O/groups * KH * KW products.
        PrimOp::ConvTranspose2d(_) => {
            let fan_out = count(&operand_shapes[1][1..]);
            products(in_elements.saturating_mul(fan_out))
        }
        // The same comparisons as the max pooling whose window it scans.
        PrimOp::MaxPool2dArgmax(params) => {
            let taps = (params.kernel[0] as u64).saturating_mul(params.kernel[1] as u64);
            elementwise(taps.saturating_sub(1))
        }
        PrimOp::Pool2d(params) => {
            let taps = (params.kernel[0] as u64).saturating_mul(params.kernel[1] as u64);
            match params.kind {
                PoolKind::Max => elementwise(taps.saturating_sub(1)),
                PoolKind::Average { .. } => elementwise(taps),
            }
        }
        PrimOp::Reduce {
            op: ReduceFn::Mean, ..
        } => Cost {
            macs: 0,
            other_flops: in_elements.saturating_add(out_elements),
        },
        PrimOp::Reduce { .. } => Cost {
            macs: 0,
            other_flops: in_elements,
        },
        PrimOp::Scan { body, axis, .. } => {
            let steps = node.ty.shape.get(*axis).copied().unwrap_or(1) as u64;
            let step = graph_cost(&body.graph);
            Cost {
                macs: step.macs.saturating_mul(steps),
                other_flops: step.other_flops.saturating_mul(steps),
            }
        }
    }
}

/// The summed cost of every node of `graph`.
pub fn graph_cost(graph: &PrimGraph) -> Cost {
    nodes_cost(graph, graph.node_ids())
}

/// The summed cost of some nodes of `graph` (the backward part of a gradient graph, say).
pub fn nodes_cost(graph: &PrimGraph, ids: impl IntoIterator<Item = PrimNodeId>) -> Cost {
    let mut total = Cost::default();
    for id in ids {
        total.add(node_cost(graph, id));
    }
    total
}

/// Element count as u64; shapes are bounded (2^48 elements), saturation is a second guard.
fn count(shape: &[usize]) -> u64 {
    shape
        .iter()
        .fold(1u64, |product, dim| product.saturating_mul(*dim as u64))
}
