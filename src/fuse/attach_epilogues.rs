//! Epilogues: the second half of building the [`KernelPlan`]. A matmul or convolution whose
//! only reader is an elementwise group of its own shape becomes one kernel with that group:
//! the GEMM writes into the group's output buffer and the group's JIT function then runs in
//! place over it (element `i` is read before it is written), so the product never makes a round
//! trip through a buffer of its own.
//!
//! When the epilogue starts by adding a per-output-channel bias (`[O, 1, 1]` over a
//! convolution's NCHW output, `[P]` over a matmul's `[..., P]`), the GEMM adds it itself as it
//! writes each tile (or while scattering small images); when that was the whole epilogue, no
//! epilogue pass runs at all.
//!
//! Matmuls and convolutions without an elementwise reader become producer kernels without an
//! epilogue, so every GEMM runs through the same path.

use super::graph_edit::{sole_user, varies_only_along};
use super::kernel_plan::{build_group, ElementwiseGroup};
use super::{FuseError, Kernel, KernelKind, KernelPlan, ProducerKernel, ProducerPost};
use crate::prim::{BinaryFn, PrimGraph, PrimNodeId, PrimOp, UnaryFn};

pub fn run(graph: &PrimGraph, plan: &mut KernelPlan) -> Result<(), FuseError> {
    let mut merged_into: Vec<Option<usize>> = vec![None; plan.kernels.len()];
    let kernel_of_node = plan.kernel_of_node();
    for (index, kernel) in plan.kernels.iter().enumerate() {
        let producer = kernel.output;
        let is_gemm = is_gemm_node(&graph.node(producer).op);
        if !matches!(kernel.kind, KernelKind::Primitive) || !is_gemm {
            continue;
        }
        let reader_kernel =
            sole_user(graph, producer).and_then(|user| kernel_of_node.get(&user).copied());
        if let Some(reader) = reader_kernel {
            let same_shape =
                graph.node(plan.kernels[reader].output).ty.shape == graph.node(producer).ty.shape;
            // A group read by two GEMMs (a residual block's two branches) takes the first as
            // its producer; the other runs on its own.
            let taken = merged_into.contains(&Some(reader));
            if matches!(plan.kernels[reader].kind, KernelKind::Elementwise(_))
                && same_shape
                && !taken
            {
                merged_into[index] = Some(reader);
            }
        }
    }
    let mut kernels = Vec::with_capacity(plan.kernels.len());
    let producers_of: Vec<Option<PrimNodeId>> = {
        let mut producers = vec![None; plan.kernels.len()];
        for (index, target) in merged_into.iter().enumerate() {
            if let Some(target) = target {
                producers[*target] = Some(plan.kernels[index].output);
            }
        }
        producers
    };
    for (index, kernel) in std::mem::take(&mut plan.kernels).into_iter().enumerate() {
        if merged_into[index].is_some() {
            continue;
        }
        let is_gemm = matches!(kernel.kind, KernelKind::Primitive)
            && is_gemm_node(&graph.node(kernel.output).op);
        kernels.push(match (producers_of[index], kernel.kind) {
            (Some(producer), KernelKind::Elementwise(group)) => {
                with_epilogue(graph, producer, group)?
            }
            (None, _) if is_gemm => Kernel {
                kind: KernelKind::Producer(ProducerKernel {
                    producer: kernel.output,
                    bias: None,
                    epilogue: None,
                    post: ProducerPost::default(),
                    operand_views: Vec::new(),
                }),
                ..kernel
            },
            (_, kind) => Kernel { kind, ..kernel },
        });
    }
    plan.kernels = kernels;
    Ok(())
}

/// The kernel computing `producer` and then `group` in place.
fn with_epilogue(
    graph: &PrimGraph,
    producer: PrimNodeId,
    group: ElementwiseGroup,
) -> Result<Kernel, FuseError> {
    let output = *group
        .nodes
        .last()
        .ok_or_else(|| FuseError::Internal("an empty elementwise group".into()))?;
    // The GEMM adds the bias as it writes each tile (no pass, no read of C), so it takes the
    // bias whenever the epilogue starts with one; the rest of the epilogue reads the biased
    // product from the output.
    let bias = native_bias(graph, producer, &group);
    let mut members = group.nodes.clone();
    if let Some((add, _)) = bias {
        members.retain(|member| *member != add);
    }
    let result = bias.map_or(producer, |(add, _)| add);
    let post = matmul_post(graph, producer, result, &members, &group);
    if post.is_some() {
        members.clear();
    }
    let epilogue = if members.is_empty() {
        None
    } else {
        Some(build_group(graph, members).ok_or_else(|| {
            FuseError::Internal(format!(
                "the epilogue of %{} has an operand without a layout",
                producer.index()
            ))
        })?)
    };
    let mut covers = vec![producer];
    covers.extend(group.slices_read_in_place);
    covers.extend(group.nodes);
    Ok(Kernel {
        kind: KernelKind::Producer(ProducerKernel {
            producer,
            bias,
            epilogue,
            post: post.unwrap_or_default(),
            operand_views: Vec::new(),
        }),
        output,
        covers,
    })
}

/// The post-operations that compute a matmul's whole epilogue `members` (the group's nodes
/// after the bias) as the GEMM writes its tiles: `result + residual`, `relu(result)` or
/// `relu(result + residual)`, with a residual of the output's shape computed elsewhere.
fn matmul_post(
    graph: &PrimGraph,
    producer: PrimNodeId,
    result: PrimNodeId,
    members: &[PrimNodeId],
    group: &ElementwiseGroup,
) -> Option<ProducerPost> {
    if !matches!(graph.node(producer).op, PrimOp::MatMul) || members.is_empty() {
        return None;
    }
    let shape = &graph.node(producer).ty.shape;
    let residual_of = |add: PrimNodeId| -> Option<PrimNodeId> {
        if !matches!(graph.node(add).op, PrimOp::Binary(BinaryFn::Add)) {
            return None;
        }
        let operands = graph.operands(add);
        let other = match operands[..] {
            [left, right] if left == result && right != result => right,
            [left, right] if right == result && left != result => left,
            _ => return None,
        };
        // A value in memory of its own: not computed here, not read in place as a slice, and
        // not a constant (splat constants are compiled into JIT code, never materialized).
        let outside = !group.nodes.contains(&other)
            && !group.slices_read_in_place.contains(&other)
            && !matches!(graph.node(other).op, PrimOp::Constant(_));
        let same_type = graph.node(other).ty == graph.node(producer).ty;
        (outside && same_type && graph.node(add).ty.shape == *shape).then_some(other)
    };
    let is_relu_of = |node: PrimNodeId, operand: PrimNodeId| {
        matches!(graph.node(node).op, PrimOp::Unary(UnaryFn::Relu))
            && graph.operands(node) == [operand]
    };
    match *members {
        [relu] if is_relu_of(relu, result) => Some(ProducerPost {
            residual: None,
            relu: true,
        }),
        [add] => residual_of(add).map(|residual| ProducerPost {
            residual: Some(residual),
            relu: false,
        }),
        [add, relu] if is_relu_of(relu, add) => residual_of(add).map(|residual| ProducerPost {
            residual: Some(residual),
            relu: true,
        }),
        _ => None,
    }
}

/// Whether the node is computed by the Rust GEMM (and so can take an epilogue).
pub(super) fn is_gemm_node(op: &PrimOp) -> bool {
    matches!(
        op,
        PrimOp::MatMul
            | PrimOp::Conv2d(_)
            | PrimOp::Conv2dWeightGradient(_)
            | PrimOp::ConvTranspose2d(_)
    )
}

/// `(add, bias)` when the group's first use of the product is `add(product, bias)` with a bias
/// of one value per output channel that the GEMM can add itself.
fn native_bias(
    graph: &PrimGraph,
    producer: PrimNodeId,
    group: &ElementwiseGroup,
) -> Option<(PrimNodeId, PrimNodeId)> {
    let add = sole_user(graph, producer)?;
    if !matches!(graph.node(add).op, PrimOp::Binary(BinaryFn::Add)) || !group.nodes.contains(&add) {
        return None;
    }
    let operands = graph.operands(add);
    let bias = if operands[0] == producer {
        operands[1]
    } else {
        operands[0]
    };
    if bias == producer || group.nodes.contains(&bias) {
        return None;
    }
    let shape = &graph.node(producer).ty.shape;
    let channel_axis = match graph.node(producer).op {
        PrimOp::MatMul => shape.len() - 1,
        // A weight gradient has no bias of its own.
        PrimOp::Conv2dWeightGradient(_) => return None,
        _ => 1,
    };
    let bias_shape = &graph.node(bias).ty.shape;
    let channels_ok = bias_shape.iter().product::<usize>() == shape[channel_axis]
        && varies_only_along(bias_shape, shape, channel_axis)
        && graph.node(add).ty.shape == *shape;
    channels_ok.then_some((add, bias))
}
