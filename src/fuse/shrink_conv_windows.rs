//! Convolution windows shrunk to the taps that can reach the input.
//!
//! A kernel row (or column) whose every position, over all output positions, falls in the zero
//! padding only ever multiplies zeros. That happens when the input is small next to the kernel:
//! resnet18 on 32x32 images ends on 1x1 feature maps, where a 3x3 convolution with padding 1
//! uses only its centre tap, and the GEMM over the full window does nine times the work. The
//! rewrite slices the dead rows and columns off the weight (a parameter-only value, so the
//! slices are folded at bind time) and reduces the padding by what was cut, keeping the output
//! size:
//!
//! ```text
//! conv2d[pad=1](x: [N, C, 1, 1], W: [O, C, 3, 3])  ==>  conv2d(x, W[:, :, 1..2, 1..2])
//! ```
//! Results are the same up to summation order (the dropped terms were products with zero; only
//! a weight that is infinite or NaN, where `0 * w` is NaN, would have contributed).

use super::graph_edit::{parameter_only, replace_operand, schedule};
use super::{FuseError, FuseState};
use crate::prim::{infer_type, Conv2dParams, PrimGraph, PrimNodeId, PrimOp};

pub fn run(state: &mut FuseState) -> Result<bool, FuseError> {
    let foldable = parameter_only(&state.graph);
    let mut changed = false;
    for id in schedule(&state.graph) {
        let PrimOp::Conv2d(params) = &state.graph.node(id).op else {
            continue;
        };
        let operands = state.graph.operands(id);
        if !foldable.contains(&operands[1]) {
            continue;
        }
        if let Some(shrunk) = shrink(&state.graph, id, params) {
            apply(&mut state.graph, id, operands[1], shrunk)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The new params and the kept tap range of each spatial axis, when some taps are dead.
struct Shrunk {
    params: Conv2dParams,
    taps: [(usize, usize); 2],
}

fn shrink(graph: &PrimGraph, id: PrimNodeId, params: &Conv2dParams) -> Option<Shrunk> {
    let operands = graph.operands(id);
    let (input, weight) = (
        &graph.node(operands[0]).ty.shape,
        &graph.node(operands[1]).ty.shape,
    );
    let output = &graph.node(id).ty.shape;
    let mut shrunk = Shrunk {
        params: params.clone(),
        taps: [(0, weight[2]), (0, weight[3])],
    };
    for axis in 0..2 {
        let (size, kernel, out) = (input[2 + axis], weight[2 + axis], output[2 + axis]);
        let (stride, dilation, [top, _]) = (
            params.stride[axis],
            params.dilation[axis],
            params.padding[axis],
        );
        // Tap `t` reads padded row `o * stride + t * dilation`, inside the input when that is in
        // `top..top + size`.
        let live = |tap: usize| {
            (0..out)
                .any(|position| (top..top + size).contains(&(position * stride + tap * dilation)))
        };
        let first = (0..kernel).find(|tap| live(*tap))?;
        let last = (0..kernel).rfind(|tap| live(*tap))?;
        if (first, last + 1) == (0, kernel) {
            continue;
        }
        let new_top = top.checked_sub(first * dilation)?;
        let window = dilation * (last - first) + 1;
        let positions = |bottom: usize| {
            (size + new_top + bottom)
                .checked_sub(window)
                .map(|span| span / stride + 1)
        };
        // Even padding if it keeps the output size (uneven padding costs a copy of the input),
        // else the least bottom padding that does.
        let needed = (out - 1) * stride + window;
        let new_bottom = if positions(new_top) == Some(out) {
            new_top
        } else {
            needed.saturating_sub(size + new_top)
        };
        if positions(new_bottom) != Some(out) {
            return None;
        }
        shrunk.taps[axis] = (first, last + 1);
        shrunk.params.padding[axis] = [new_top, new_bottom];
    }
    (shrunk.taps != [(0, weight[2]), (0, weight[3])]).then_some(shrunk)
}

fn apply(
    graph: &mut PrimGraph,
    conv: PrimNodeId,
    weight: PrimNodeId,
    shrunk: Shrunk,
) -> Result<(), FuseError> {
    let origin = graph.node(conv).origin.clone();
    let mut sliced = weight;
    for (axis, (start, end)) in shrunk.taps.into_iter().enumerate() {
        if (start, end) != (0, graph.node(sliced).ty.shape[2 + axis]) {
            sliced = graph.add(
                PrimOp::Slice {
                    axis: 2 + axis,
                    start,
                    end,
                },
                &[sliced],
                origin.clone(),
            )?;
        }
    }
    let op = PrimOp::Conv2d(shrunk.params);
    let input = graph.operands(conv)[0];
    let ty = infer_type(&op, &[&graph.node(input).ty, &graph.node(sliced).ty])?;
    if ty != graph.node(conv).ty {
        return Err(FuseError::Internal(format!(
            "shrinking the window of %{} changed its type",
            conv.index()
        )));
    }
    graph.petgraph_mut()[conv.0].op = op;
    replace_operand(graph, conv, 1, sliced);
    Ok(())
}
