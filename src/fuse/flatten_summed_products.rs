//! A batched product summed over its batches becomes one product over the batches' rows: the
//! weight gradient of a dense layer applied to `[N, T, D]` activations.
//!
//! The gradient of a weight shared by every batch of a matmul is `sum_n x[n]ᵀ g[n]` (then
//! transposed back to the weight's `[out, in]` layout): the vector-Jacobian rule computes the
//! batched product (`N` GEMMs, each with only `T` as its inner dimension) into an `[N, in, out]`
//! buffer, a reduction sums it over `N`, and a transpose copies it once more. The same sum is
//! one product whose inner dimension runs over batches and rows together, which is how PyTorch
//! computes it:
//!
//! ```text
//! reduce_sum[axes=batch](a @ b)     ==>  reshape(a', [M, B*K]) @ reshape(b, [B*K, P])
//! transpose(reduce_sum(a @ b))      ==>  reshape(b, [B*K, P])ᵀ @ reshape(a', [M, B*K])ᵀ
//! ```
//!
//! where `a'` moves `a`'s batch axes between its rows and columns. The reshapes and transposes
//! are strided views of values already in memory (`a` is itself the transposed activation),
//! which the matmul reads in place (`matmul_operand_views`), so the rewritten gradient moves
//! no data besides its result. The sum over batches is reassociated (one running sum instead
//! of a sum per batch, then across batches), which the fusion invariant allows.

use super::graph_edit::{remove_dead_nodes, replace_uses, schedule, sole_user};
use super::{FuseError, FuseState};
use crate::prim::{PrimGraph, PrimNodeId, PrimOp, ReduceFn};

pub fn run(state: &mut FuseState) -> Result<bool, FuseError> {
    let mut changed = false;
    for sum in schedule(&state.graph) {
        if let Some(product) = summed_product(&state.graph, sum) {
            flatten(&mut state.graph, sum, product)?;
            changed = true;
        }
    }
    if changed {
        remove_dead_nodes(&mut state.graph);
    }
    Ok(changed)
}

/// The batched product that `sum` adds up over all its batch axes, when nothing else reads the
/// product and neither factor broadcasts over the batches.
fn summed_product(graph: &PrimGraph, sum: PrimNodeId) -> Option<PrimNodeId> {
    let PrimOp::Reduce {
        op: ReduceFn::Sum,
        axes,
        keepdim: false,
    } = &graph.node(sum).op
    else {
        return None;
    };
    let product = graph.operands(sum)[0];
    if !matches!(graph.node(product).op, PrimOp::MatMul) || sole_user(graph, product) != Some(sum) {
        return None;
    }
    let product_shape = &graph.node(product).ty.shape;
    let batch_rank = product_shape.len().checked_sub(2)?;
    let factors = graph.operands(product);
    let same_batches = factors.iter().all(|factor| {
        let shape = &graph.node(*factor).ty.shape;
        shape.len() == product_shape.len() && shape[..batch_rank] == product_shape[..batch_rank]
    });
    let sums_every_batch = batch_rank > 0 && *axes == (0..batch_rank).collect::<Vec<_>>();
    (same_batches && sums_every_batch).then_some(product)
}

/// Replaces `sum` (or the matrix transpose that is its only reader) by one product.
fn flatten(graph: &mut PrimGraph, sum: PrimNodeId, product: PrimNodeId) -> Result<(), FuseError> {
    let origin = graph.node(sum).origin.clone();
    let [a, b] = graph.operands(product)[..] else {
        return Err(FuseError::Internal("a matmul without two operands".into()));
    };
    let a_shape = graph.node(a).ty.shape.clone();
    let batch_rank = a_shape.len() - 2;
    let batches: usize = a_shape[..batch_rank].iter().product();
    let (m, k) = (a_shape[batch_rank], a_shape[batch_rank + 1]);
    let p = graph.node(b).ty.shape[batch_rank + 1];
    // `a` as `[M, batches..., K]`, then `[M, B*K]`: row `i` holds row `i` of every batch's `a`.
    let mut rows_first: Vec<usize> = vec![batch_rank];
    rows_first.extend(0..batch_rank);
    rows_first.push(batch_rank + 1);
    let a_rows_first = graph.add(PrimOp::Transpose { perm: rows_first }, &[a], origin.clone())?;
    let a_shape = vec![m, batches * k];
    let a_flat = graph.add(
        PrimOp::Reshape { shape: a_shape },
        &[a_rows_first],
        origin.clone(),
    )?;
    let b_shape = vec![batches * k, p];
    let b_flat = graph.add(PrimOp::Reshape { shape: b_shape }, &[b], origin.clone())?;
    let swap = PrimOp::Transpose { perm: vec![1, 0] };
    let transposed_reader = sole_user(graph, sum).filter(
        |user| matches!(&graph.node(*user).op, PrimOp::Transpose { perm } if *perm == [1, 0]),
    );
    match transposed_reader {
        Some(transpose) => {
            let b_columns = graph.add(swap.clone(), &[b_flat], origin.clone())?;
            let a_columns = graph.add(swap, &[a_flat], origin.clone())?;
            let flat = graph.add(PrimOp::MatMul, &[b_columns, a_columns], origin)?;
            replace_uses(graph, transpose, flat);
        }
        None => {
            let flat = graph.add(PrimOp::MatMul, &[a_flat, b_flat], origin)?;
            replace_uses(graph, sum, flat);
        }
    }
    Ok(())
}
