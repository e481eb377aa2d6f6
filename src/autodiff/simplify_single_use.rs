//! The rewrites of [`super::simplify`] that depend on a node's users, decided on the source
//! graph before rebuilding it: a value computed only to be cropped or transposed is computed in
//! the form its one user wants instead, which saves the work and the memory of the rest.
//! - A convolution whose only use is a crop of its output (slices `0..end` of the spatial
//!   axes) computes the crop: the weight gradient of a strided convolution computes a window
//!   larger than the kernel when the last input rows meet no forward window, then crops it.
//! - `transpose(a @ b)` over the last two axes, when the product has no other use, is
//!   `transpose(b) @ transpose(a)`: a dense layer's weight gradient `(x^T g)^T` becomes
//!   `g^T x`. The transposes of the factors cost nothing (one cancels `x^T`, the matmul reads
//!   the others through strided views, `fuse/matmul_operand_views.rs`), while the transpose of
//!   the product is a copy of it, even when it is smaller than its factors (the classifier's
//!   `[256, 10]` weight gradient at batch 64).

use std::collections::{HashMap, HashSet};

use crate::prim::*;

/// What the rebuild does differently, by source node.
pub(super) struct SingleUseRewrites {
    pub crops: HashMap<PrimNodeId, Crop>,
    /// Each slice of a crop: the convolution whose new value it is.
    pub cropped_by: HashMap<PrimNodeId, PrimNodeId>,
    /// Transposes of products to build as products of transposes.
    pub transposed_products: HashSet<PrimNodeId>,
}

impl SingleUseRewrites {
    pub fn find(source: &PrimGraph) -> SingleUseRewrites {
        let crops = cropped_convolutions(source);
        let cropped_by = crops
            .iter()
            .flat_map(|(conv, crop)| crop.slices.iter().map(|slice| (*slice, *conv)))
            .collect();
        SingleUseRewrites {
            crops,
            cropped_by,
            transposed_products: transposed_products(source),
        }
    }
}

/// Whether `id` has `user` as its only user and is not a graph output.
fn only_used_by(source: &PrimGraph, id: PrimNodeId, user: PrimNodeId) -> bool {
    source.users(id) == [user] && !source.outputs.iter().any(|(_, output)| *output == id)
}

fn transposed_products(source: &PrimGraph) -> HashSet<PrimNodeId> {
    source
        .node_ids()
        .filter(|id| {
            let PrimOp::Transpose { perm } = &source.node(*id).op else {
                return false;
            };
            let rank = perm.len();
            let swaps_last_two = (0..rank).all(|axis| {
                let expected = match axis {
                    _ if axis + 2 == rank => rank - 1,
                    _ if axis + 1 == rank => rank - 2,
                    _ => axis,
                };
                perm[axis] == expected
            });
            let product = source.operands(*id)[0];
            swaps_last_two
                && matches!(source.node(product).op, PrimOp::MatMul)
                && only_used_by(source, product, *id)
        })
        .collect()
}

/// A convolution whose only use is a crop of its output: slices `0..end` of the spatial axes
/// (the weight gradient of a strided convolution computes a window larger than the kernel
/// when the last input rows meet no forward window, then crops it).
pub(super) struct Crop {
    /// The convolution with less padding at the end of the cropped axes, so that its output
    /// is the crop: output rows `0..end` read the same padded input rows as before, in the
    /// same order, so the values are identical.
    pub params: Conv2dParams,
    /// The slices (one per cropped axis, a chain) whose value the new convolution is.
    pub slices: Vec<PrimNodeId>,
    /// `(axis, rows)`: input rows `0..rows` of an axis, when even without end padding the
    /// input has rows no kept output reads (a copy of the input is cheaper than the products).
    pub input_rows: Vec<(usize, usize)>,
}

fn cropped_convolutions(source: &PrimGraph) -> HashMap<PrimNodeId, Crop> {
    let mut crops = HashMap::new();
    for id in source.node_ids() {
        let PrimOp::Conv2d(params) = &source.node(id).op else {
            continue;
        };
        let operands = source.operands(id);
        let input = &source.node(operands[0]).ty.shape;
        let weight = &source.node(operands[1]).ty.shape;
        let mut params = params.clone();
        let mut slices = Vec::new();
        let mut input_rows = Vec::new();
        let mut value = id;
        while let [user] = source.users(value).as_slice() {
            let PrimOp::Slice {
                axis,
                start: 0,
                end,
            } = source.node(*user).op
            else {
                break;
            };
            let outputs = source.outputs.iter().any(|(_, output)| *output == value);
            if !(2..4).contains(&axis) || outputs {
                break;
            }
            let spatial = axis - 2;
            match end_padding_for(&params, spatial, input[axis], weight[axis], end) {
                Some(end_padding) => params.padding[spatial][1] = end_padding,
                None => {
                    let Some(rows) =
                        input_rows_for(&params, spatial, input[axis], weight[axis], end)
                    else {
                        break;
                    };
                    params.padding[spatial][1] = 0;
                    input_rows.push((axis, rows));
                }
            }
            slices.push(*user);
            value = *user;
        }
        if !slices.is_empty() {
            let crop = Crop {
                params,
                slices,
                input_rows,
            };
            crops.insert(id, crop);
        }
    }
    crops
}

/// The least padding at the end of spatial axis `spatial` (input size `size`, kernel size
/// `kernel`) that gives exactly `rows` output rows, if there is one.
fn end_padding_for(
    params: &Conv2dParams,
    spatial: usize,
    size: usize,
    kernel: usize,
    rows: usize,
) -> Option<usize> {
    let [start_padding, end_padding] = params.padding[spatial];
    let (stride, dilation) = (params.stride[spatial], params.dilation[spatial]);
    let span = dilation * (kernel - 1) + 1;
    (0..=end_padding).find(|padding| {
        let padded = size + start_padding + padding;
        padded >= span && (padded - span) / stride + 1 == rows
    })
}

/// The input rows `0..rows` that, without end padding, give exactly `output_rows` output
/// rows on spatial axis `spatial`, if fewer than the input has.
fn input_rows_for(
    params: &Conv2dParams,
    spatial: usize,
    size: usize,
    kernel: usize,
    output_rows: usize,
) -> Option<usize> {
    let start_padding = params.padding[spatial][0];
    let (stride, dilation) = (params.stride[spatial], params.dilation[spatial]);
    let needed = (output_rows - 1) * stride + dilation * (kernel - 1) + 1;
    let rows = needed.checked_sub(start_padding)?;
    (rows > 0 && rows < size).then_some(rows)
}
