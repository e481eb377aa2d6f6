//! Convolutions as the runtime calls them: the kernels' geometry from a node's params and
//! operand shapes, explicit padding for uneven ("same") padding, scratch from the memory plan,
//! and the batch split across threads.
//!
//! Why the runtime splits the batch: the kernels parallelize inside each GEMM, and a
//! convolution runs one GEMM per chunk of about a thousand output positions, so a small
//! convolution wakes the other thread dozens of times for a few microseconds of work each
//! (lenet5's first convolution at batch 64 took 2.5-3 ms on two threads against 0.5 ms on one).
//! Giving each thread whole images makes one dispatch per convolution. Results do not change:
//! every output element is the same dot product, summed in the same order by the micro-kernel
//! whatever chunk or thread computes it, and a bias is added to the finished sum either way.

use std::ops::Range;
use std::sync::Mutex;

use super::execute::Operand;
use super::RuntimeError;
use crate::kernels::conv::{
    conv2d_with_scratch, conv_transpose2d_with_scratch, Conv2dGeometry, ConvTranspose2dGeometry,
};
use crate::kernels::conv_weight_gradient::{conv2d_weight_gradient, Conv2dWeightGradientGeometry};
use crate::kernels::gemm::resolve_threads;
use crate::kernels::parallel::run_parallel;
use crate::prim::{
    Conv2dParams, Conv2dWeightGradientParams, ConvTranspose2dParams, PrimNode, PrimOp,
};

/// Runs the convolution `node` into `output`, on up to `threads` threads.
pub(super) fn run(
    node: &PrimNode,
    input: &Operand<'_>,
    weight: &Operand<'_>,
    bias: Option<&[f32]>,
    output: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<(), RuntimeError> {
    let call = ConvCall::new(node, input.shape, weight.shape, threads)?;
    let mut owned = Vec::new();
    let scratch = if scratch.len() >= call.scratch_len()? {
        scratch
    } else {
        owned.resize(call.scratch_len()?, 0.0);
        &mut owned[..]
    };
    let (padded, scratch) = scratch.split_at_mut(call.padded_len());
    let input_data: &[f32] = match &call.padding {
        Some(padding) => {
            padding.fill(input, padded);
            padded
        }
        None => input.data,
    };
    if call.parts == 1 {
        return call
            .geometry
            .run(input_data, weight.data, bias, output, scratch, threads);
    }
    let batch = call.geometry.batch();
    let (image_in, image_out) = (input_data.len() / batch, output.len() / batch);
    let part_scratch = call.part_scratch_len()?;
    let ranges: Vec<Range<usize>> = (0..call.parts)
        .map(|part| part * batch / call.parts..(part + 1) * batch / call.parts)
        .collect();
    let mut pieces = Vec::with_capacity(call.parts);
    let (mut output_rest, mut scratch_rest) = (output, scratch);
    for range in &ranges {
        let (output_part, output_after) = output_rest.split_at_mut(range.len() * image_out);
        let (scratch_part, scratch_after) = scratch_rest.split_at_mut(part_scratch);
        pieces.push(Mutex::new((output_part, scratch_part)));
        (output_rest, scratch_rest) = (output_after, scratch_after);
    }
    let failure: Mutex<Option<RuntimeError>> = Mutex::new(None);
    run_parallel(call.parts, &|part| {
        let range = &ranges[part];
        let mut piece = pieces[part]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (output_part, scratch_part) = &mut *piece;
        let geometry = call.geometry.with_batch(range.len());
        let images = &input_data[range.start * image_in..range.end * image_in];
        if let Err(error) = geometry.run(images, weight.data, bias, output_part, scratch_part, 1) {
            *failure
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
        }
    });
    match failure
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
    {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The scratch floats [`run`] uses for `node` at `threads`.
pub(super) fn scratch_len(
    node: &PrimNode,
    input_shape: &[usize],
    weight_shape: &[usize],
    threads: usize,
) -> Result<usize, RuntimeError> {
    ConvCall::new(node, input_shape, weight_shape, threads)?.scratch_len()
}

/// Computes a convolution's weight gradient from its input and output gradient (operand
/// shapes as the node's shape rule checked them).
pub(super) fn run_weight_gradient(
    params: &Conv2dWeightGradientParams,
    input: &Operand<'_>,
    output_gradient: &Operand<'_>,
    weight_gradient: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<(), RuntimeError> {
    let geometry = weight_gradient_geometry(params, input.shape, output_gradient.shape)?;
    let mut owned = Vec::new();
    let scratch = if scratch.len() >= geometry.scratch_len()? {
        scratch
    } else {
        owned.resize(geometry.scratch_len()?, 0.0);
        &mut owned[..]
    };
    conv2d_weight_gradient(
        &geometry,
        input.data,
        output_gradient.data,
        weight_gradient,
        scratch,
        threads,
    )?;
    Ok(())
}

/// The scratch floats [`run_weight_gradient`] uses.
pub(super) fn weight_gradient_scratch_len(
    params: &Conv2dWeightGradientParams,
    input_shape: &[usize],
    output_gradient_shape: &[usize],
) -> Result<usize, RuntimeError> {
    Ok(weight_gradient_geometry(params, input_shape, output_gradient_shape)?.scratch_len()?)
}

fn weight_gradient_geometry(
    params: &Conv2dWeightGradientParams,
    input_shape: &[usize],
    output_gradient_shape: &[usize],
) -> Result<Conv2dWeightGradientGeometry, RuntimeError> {
    let ([batch, in_channels, height, width], [_, out_channels, _, _]) =
        match (input_shape, output_gradient_shape) {
            (&[n, c, h, w], &[_, o, _, _]) => ([n, c, h, w], [0, o, 0, 0]),
            _ => {
                return Err(RuntimeError::internal(
                    "a weight gradient whose operands are not 4-D",
                ))
            }
        };
    Ok(Conv2dWeightGradientGeometry {
        batch,
        in_channels,
        out_channels,
        in_size: [height, width],
        kernel: params.kernel,
        stride: params.conv.stride,
        padding: params.conv.padding,
        dilation: params.conv.dilation,
        groups: params.conv.groups,
    })
}

/// How one convolution runs: its geometry, explicit padding, and the parts of the batch.
struct ConvCall {
    geometry: Geometry,
    padding: Option<ExplicitPadding>,
    parts: usize,
}

#[derive(Clone, Copy)]
enum Geometry {
    Conv(Conv2dGeometry),
    Transpose(ConvTranspose2dGeometry),
}

/// Uneven padding, done by copying the input into a zeroed larger buffer.
struct ExplicitPadding {
    padded_shape: [usize; 4],
    top: usize,
    left: usize,
}

impl ConvCall {
    fn new(
        node: &PrimNode,
        input: &[usize],
        weight: &[usize],
        threads: usize,
    ) -> Result<ConvCall, RuntimeError> {
        let (geometry, padding) = match &node.op {
            PrimOp::Conv2d(params) => conv2d_geometry(params, input, weight),
            PrimOp::ConvTranspose2d(params) => (
                Geometry::Transpose(conv_transpose_geometry(
                    params,
                    input,
                    weight,
                    &node.ty.shape,
                )?),
                None,
            ),
            _ => {
                return Err(RuntimeError::internal(
                    "a convolution call for a node that is not one",
                ))
            }
        };
        let batch = geometry.batch();
        let parts = if batch >= 2 {
            resolve_threads(threads).min(batch)
        } else {
            1
        };
        Ok(ConvCall {
            geometry,
            padding,
            parts,
        })
    }

    fn padded_len(&self) -> usize {
        self.padding
            .as_ref()
            .map_or(0, |padding| padding.padded_shape.iter().product())
    }

    /// Scratch for the largest part of the batch.
    fn part_scratch_len(&self) -> Result<usize, RuntimeError> {
        let largest = self.geometry.batch().div_ceil(self.parts);
        self.geometry.with_batch(largest).scratch_len()
    }

    fn scratch_len(&self) -> Result<usize, RuntimeError> {
        let per_part = if self.parts == 1 {
            self.geometry.scratch_len()?
        } else {
            self.part_scratch_len()?
        };
        Ok(self.padded_len() + self.parts * per_part)
    }
}

impl Geometry {
    fn batch(&self) -> usize {
        match self {
            Geometry::Conv(geometry) => geometry.batch,
            Geometry::Transpose(geometry) => geometry.batch,
        }
    }

    fn with_batch(&self, batch: usize) -> Geometry {
        match *self {
            Geometry::Conv(geometry) => Geometry::Conv(Conv2dGeometry { batch, ..geometry }),
            Geometry::Transpose(geometry) => {
                Geometry::Transpose(ConvTranspose2dGeometry { batch, ..geometry })
            }
        }
    }

    fn scratch_len(&self) -> Result<usize, RuntimeError> {
        Ok(match self {
            Geometry::Conv(geometry) => geometry.scratch_len()?,
            Geometry::Transpose(geometry) => geometry.scratch_len()?,
        })
    }

    fn run(
        &self,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        output: &mut [f32],
        scratch: &mut [f32],
        threads: usize,
    ) -> Result<(), RuntimeError> {
        match self {
            Geometry::Conv(geometry) => {
                conv2d_with_scratch(geometry, input, weight, bias, output, scratch, threads)?
            }
            Geometry::Transpose(geometry) => conv_transpose2d_with_scratch(
                geometry, input, weight, bias, output, scratch, threads,
            )?,
        }
        Ok(())
    }
}

impl ExplicitPadding {
    fn fill(&self, input: &Operand<'_>, padded: &mut [f32]) {
        let [batch, channels, height, width] = [
            input.shape[0],
            input.shape[1],
            input.shape[2],
            input.shape[3],
        ];
        padded.fill(0.0);
        for plane in 0..batch * channels {
            for row in 0..height {
                let from = (plane * height + row) * width;
                let to = (plane * self.padded_shape[2] + row + self.top) * self.padded_shape[3]
                    + self.left;
                padded[to..to + width].copy_from_slice(&input.data[from..from + width]);
            }
        }
    }
}

/// The kernel geometry; uneven padding becomes explicit padding and a geometry without any.
fn conv2d_geometry(
    params: &Conv2dParams,
    input: &[usize],
    weight: &[usize],
) -> (Geometry, Option<ExplicitPadding>) {
    let [[top, bottom], [left, right]] = params.padding;
    let even = top == bottom && left == right;
    let (in_size, padding, explicit) = if even {
        ([input[2], input[3]], [top, left], None)
    } else {
        let padded_shape = [
            input[0],
            input[1],
            input[2] + top + bottom,
            input[3] + left + right,
        ];
        let explicit = ExplicitPadding {
            padded_shape,
            top,
            left,
        };
        ([padded_shape[2], padded_shape[3]], [0, 0], Some(explicit))
    };
    let geometry = Conv2dGeometry {
        batch: input[0],
        in_channels: input[1],
        out_channels: weight[0],
        in_size,
        kernel: [weight[2], weight[3]],
        stride: params.stride,
        padding,
        dilation: params.dilation,
        groups: params.groups,
    };
    (Geometry::Conv(geometry), explicit)
}

fn conv_transpose_geometry(
    params: &ConvTranspose2dParams,
    input: &[usize],
    weight: &[usize],
    output_shape: &[usize],
) -> Result<ConvTranspose2dGeometry, RuntimeError> {
    Ok(ConvTranspose2dGeometry {
        batch: input[0],
        in_channels: input[1],
        out_channels: output_shape[1],
        in_size: [input[2], input[3]],
        kernel: [weight[2], weight[3]],
        stride: params.stride,
        padding: params.padding,
        out_size: params.output_size,
        dilation: params.dilation,
        groups: params.groups,
    })
}
