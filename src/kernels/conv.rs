//! 2-D convolution and transposed convolution (PyTorch semantics, NCHW activations, PyTorch
//! weight layouts), as GEMMs over column matrices.
//!
//! `conv2d`: per chunk of images and per group, im2col copies the input windows into a scratch
//! matrix `[C/g * kh * kw, images * OH * OW]` and one GEMM computes
//! `output[g] (+)= weight[g] (O/g x C/g*kh*kw) x columns`, writing straight into the NCHW output
//! (the GEMM's C layout jumps from one image to the next). A 1x1, stride-1, unpadded convolution
//! skips im2col: the input itself is the column matrix. A depthwise convolution (one input and
//! one output channel per group) runs as direct loops instead, since its GEMM would have a single
//! row. Chunks hold about `TARGET_COLUMNS` columns, so small late-layer images are batched into
//! wide GEMMs while the scratch stays cache-sized.
//!
//! Transposed convolutions are in `conv_transpose.rs`, re-exported here.
//!
//! The bias, when given, is written into the output first and the GEMM accumulates onto it;
//! images smaller than a micro-tile row instead get a gathered GEMM output that is scattered
//! into the images with the bias added (see `gathers_output`).

use super::gemm::{resolve_threads, run_gemm, ColumnLayout, GemmProblem, MatrixLayout};
use super::im2col::{im2col, ConvWindow};
use super::parallel::{part_range, run_parallel, SharedMutPtr};
use super::{check_length, checked_product, KernelError};

pub use super::conv_transpose::{
    conv_transpose2d, conv_transpose2d_with_scratch, ConvTranspose2dGeometry,
};

/// A convolution's sizes. Tensors: input `[batch, in_channels, h, w]`, weight
/// `[out_channels, in_channels / groups, kh, kw]`, bias `[out_channels]`, output
/// `[batch, out_channels, oh, ow]`. Pairs are `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// About this many GEMM columns per chunk of images (see the module doc).
const TARGET_COLUMNS: usize = 1024;
/// The most scratch floats a chunk may need, unless one image alone needs more (16 MiB).
const MAX_SCRATCH_FLOATS: usize = 4 << 20;
/// Images with fewer output positions than this go through a gathered GEMM output (see
/// `gathers_output`); it is the micro-tile width.
const GATHER_BELOW_GRID_LEN: usize = 16;

pub(super) const AXES: [&str; 2] = ["height", "width"];

impl Conv2dGeometry {
    /// The output's `[height, width]`, or why the geometry is invalid.
    pub fn out_size(&self) -> Result<[usize; 2], KernelError> {
        check_positive(&[("batch", self.batch), ("groups", self.groups)])?;
        check_window(self.kernel, self.stride, self.dilation)?;
        check_groups(self.in_channels, self.out_channels, self.groups)?;
        let mut out_size = [0; 2];
        for axis in 0..2 {
            let padded = self.in_size[axis] + 2 * self.padding[axis];
            let extent = self.dilation[axis] * (self.kernel[axis] - 1) + 1;
            if extent > padded {
                return Err(KernelError::KernelLargerThanInput {
                    axis: AXES[axis],
                    extent,
                    padded,
                });
            }
            out_size[axis] = (padded - extent) / self.stride[axis] + 1;
        }
        Ok(out_size)
    }

    /// The element counts of input, weight and output.
    pub fn tensor_lens(&self) -> Result<[usize; 3], KernelError> {
        let [out_height, out_width] = self.out_size()?;
        Ok([
            checked_product(&[
                self.batch,
                self.in_channels,
                self.in_size[0],
                self.in_size[1],
            ])?,
            checked_product(&[
                self.out_channels,
                self.in_channels / self.groups,
                self.kernel[0],
                self.kernel[1],
            ])?,
            checked_product(&[self.batch, self.out_channels, out_height, out_width])?,
        ])
    }

    /// The scratch floats `conv2d_with_scratch` needs.
    pub fn scratch_len(&self) -> Result<usize, KernelError> {
        self.tensor_lens()?;
        if self.is_depthwise() {
            return Ok(0);
        }
        let [rows, grid_len] = self.column_matrix_size();
        let chunk = images_per_chunk(self.batch, rows, grid_len);
        let columns = if self.is_pointwise() {
            0
        } else {
            rows * grid_len * chunk
        };
        let gathered = if gathers_output(grid_len, chunk) {
            self.out_channels / self.groups * grid_len * chunk
        } else {
            0
        };
        Ok(columns + gathered)
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    fn is_depthwise(&self) -> bool {
        self.in_channels == self.groups && self.out_channels == self.groups
    }

    /// Rows of the column matrix, and its columns per image.
    fn column_matrix_size(&self) -> [usize; 2] {
        let [out_height, out_width] = self.out_size().unwrap_or([0, 0]);
        [
            self.in_channels / self.groups * self.kernel[0] * self.kernel[1],
            out_height * out_width,
        ]
    }
}

/// A 2-D convolution, allocating its scratch. See [`conv2d_with_scratch`].
pub fn conv2d(
    geometry: &Conv2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let mut scratch = vec![0.0; geometry.scratch_len()?];
    conv2d_with_scratch(geometry, input, weight, bias, output, &mut scratch, threads)
}

/// A 2-D convolution on up to `threads` threads (0: all cores), bit-identical for any count.
/// `scratch` needs at least [`Conv2dGeometry::scratch_len`] floats.
pub fn conv2d_with_scratch(
    geometry: &Conv2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    check_conv_buffers(
        geometry.tensor_lens()?,
        geometry.out_channels,
        geometry.scratch_len()?,
        ConvBuffers {
            input,
            weight,
            bias,
            output: &*output,
            scratch: &*scratch,
        },
    )?;
    let threads = resolve_threads(threads);
    let out_size = geometry.out_size()?;
    if geometry.is_depthwise() {
        depthwise_conv2d(geometry, out_size, input, weight, bias, output, threads);
        return Ok(());
    }
    let [rows, grid_len] = geometry.column_matrix_size();
    let chunk = images_per_chunk(geometry.batch, rows, grid_len);
    let gather = gathers_output(grid_len, chunk);
    if let (Some(bias), false) = (bias, gather) {
        fill_with_bias(output, bias, out_size[0] * out_size[1]);
    }
    let column_matrix_len = if geometry.is_pointwise() {
        0
    } else {
        rows * grid_len * chunk
    };
    let (columns_scratch, gathered_scratch) = scratch.split_at_mut(column_matrix_len);
    let in_plane = geometry.in_size[0] * geometry.in_size[1];
    let (group_in, group_out) = (
        geometry.in_channels / geometry.groups,
        geometry.out_channels / geometry.groups,
    );
    let window = ConvWindow {
        image_size: geometry.in_size,
        grid_size: out_size,
        kernel: geometry.kernel,
        stride: geometry.stride,
        padding: geometry.padding,
        dilation: geometry.dilation,
    };
    for first_image in (0..geometry.batch).step_by(chunk) {
        let images = chunk.min(geometry.batch - first_image);
        for group in 0..geometry.groups {
            let input_start =
                first_image * geometry.in_channels * in_plane + group * group_in * in_plane;
            let (b, b_layout) = if geometry.is_pointwise() {
                let layout = MatrixLayout {
                    row_stride: in_plane,
                    columns: ColumnLayout::grouped(in_plane, geometry.in_channels * in_plane),
                };
                (input[input_start..].as_ptr(), layout)
            } else {
                // SAFETY: the buffers were checked against the geometry above.
                unsafe {
                    im2col(
                        &window,
                        input[input_start..].as_ptr(),
                        geometry.in_channels * in_plane,
                        (group_in, images),
                        columns_scratch.as_mut_ptr(),
                        threads,
                    )
                };
                (
                    columns_scratch.as_ptr(),
                    MatrixLayout::strided(images * grid_len, 1),
                )
            };
            let output_start =
                first_image * geometry.out_channels * grid_len + group * group_out * grid_len;
            let (c, c_layout) = if gather {
                (
                    gathered_scratch.as_mut_ptr(),
                    MatrixLayout::strided(images * grid_len, 1),
                )
            } else {
                let layout = MatrixLayout {
                    row_stride: grid_len,
                    columns: ColumnLayout::grouped(grid_len, geometry.out_channels * grid_len),
                };
                (output[output_start..].as_mut_ptr(), layout)
            };
            let problem = GemmProblem {
                m: group_out,
                n: images * grid_len,
                k: rows,
                a: weight[group * group_out * rows..].as_ptr(),
                a_layout: MatrixLayout::strided(rows, 1),
                b,
                b_layout,
                c,
                c_layout,
                accumulate: bias.is_some() && !gather,
            };
            // SAFETY: the layouts address only this chunk's and group's part of each buffer.
            unsafe { run_gemm(&problem, threads) };
            if gather {
                let group_bias = bias.map(|bias| &bias[group * group_out..(group + 1) * group_out]);
                let gathered = &gathered_scratch[..group_out * images * grid_len];
                scatter_into_images(
                    gathered,
                    group_out,
                    group_bias,
                    grid_len,
                    geometry.out_channels * grid_len,
                    &mut output[output_start..],
                );
            }
        }
    }
    Ok(())
}

/// Whether a chunk's GEMM writes a row-major scratch that is then scattered into the images:
/// when images are smaller than a micro-tile row, writing C in place would scatter every tile
/// element by element once per k block, while the scratch is written with whole vectors.
fn gathers_output(grid_len: usize, images_per_chunk: usize) -> bool {
    grid_len < GATHER_BELOW_GRID_LEN && images_per_chunk > 1
}

/// `images[image][channel] = bias[channel] + gathered[channel][image]`, where `gathered` is
/// `[channels, images * grid_len]` and consecutive images are `image_stride` apart.
fn scatter_into_images(
    gathered: &[f32],
    channels: usize,
    bias: Option<&[f32]>,
    grid_len: usize,
    image_stride: usize,
    images: &mut [f32],
) {
    let row_len = gathered.len() / channels;
    for channel in 0..channels {
        let channel_bias = bias.map_or(0.0, |bias| bias[channel]);
        for (image, source) in gathered[channel * row_len..(channel + 1) * row_len]
            .chunks_exact(grid_len)
            .enumerate()
        {
            let target = &mut images[image * image_stride + channel * grid_len..][..grid_len];
            for (target, &value) in target.iter_mut().zip(source) {
                *target = channel_bias + value;
            }
        }
    }
}

/// Images per GEMM: enough for about `TARGET_COLUMNS` columns, within the scratch budget, and a
/// function of the sizes alone.
pub(super) fn images_per_chunk(batch: usize, rows: usize, grid_len: usize) -> usize {
    let for_columns = TARGET_COLUMNS.div_ceil(grid_len.max(1));
    let for_scratch = MAX_SCRATCH_FLOATS / (rows * grid_len).max(1);
    for_columns.min(for_scratch).min(batch).max(1)
}

/// Depthwise convolution by direct loops: each output plane starts at its bias and adds one
/// kernel tap at a time over the whole plane, so every element sums its taps in the same order.
fn depthwise_conv2d(
    geometry: &Conv2dGeometry,
    out_size: [usize; 2],
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    threads: usize,
) {
    let channels = geometry.in_channels;
    let planes = geometry.batch * channels;
    let (in_plane, out_plane) = (
        geometry.in_size[0] * geometry.in_size[1],
        out_size[0] * out_size[1],
    );
    let taps = geometry.kernel[0] * geometry.kernel[1];
    let window = ConvWindow {
        image_size: geometry.in_size,
        grid_size: out_size,
        kernel: geometry.kernel,
        stride: geometry.stride,
        padding: geometry.padding,
        dilation: geometry.dilation,
    };
    let output_data = SharedMutPtr(output.as_mut_ptr());
    let parts = threads.min(planes).max(1);
    run_parallel(parts, &|part| {
        for plane_index in part_range(planes, parts, part) {
            let channel = plane_index % channels;
            // SAFETY: each part writes only its own planes of the checked output.
            let plane = unsafe {
                std::slice::from_raw_parts_mut(
                    output_data.get().add(plane_index * out_plane),
                    out_plane,
                )
            };
            plane.fill(bias.map_or(0.0, |bias| bias[channel]));
            let source = &input[plane_index * in_plane..(plane_index + 1) * in_plane];
            for tap in 0..taps {
                let tap_weight = weight[channel * taps + tap];
                window.add_tap_products(
                    source,
                    (tap / geometry.kernel[1], tap % geometry.kernel[1]),
                    tap_weight,
                    plane,
                );
            }
        }
    });
}

pub(super) fn fill_with_bias(output: &mut [f32], bias: &[f32], plane_len: usize) {
    for (plane_index, plane) in output.chunks_exact_mut(plane_len.max(1)).enumerate() {
        plane.fill(bias[plane_index % bias.len()]);
    }
}

pub(super) fn check_positive(values: &[(&'static str, usize)]) -> Result<(), KernelError> {
    match values.iter().find(|(_, value)| *value == 0) {
        Some(&(what, _)) => Err(KernelError::ZeroParameter { what }),
        None => Ok(()),
    }
}

pub(super) fn check_window(
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Result<(), KernelError> {
    check_positive(&[("kernel height", kernel[0]), ("kernel width", kernel[1])])?;
    check_positive(&[
        ("stride", stride[0].min(stride[1])),
        ("dilation", dilation[0].min(dilation[1])),
    ])
}

pub(super) fn check_groups(
    in_channels: usize,
    out_channels: usize,
    groups: usize,
) -> Result<(), KernelError> {
    check_positive(&[("in channels", in_channels), ("out channels", out_channels)])?;
    for (which, channels) in [("input", in_channels), ("output", out_channels)] {
        if channels % groups != 0 {
            return Err(KernelError::GroupsDoNotDivide {
                which,
                channels,
                groups,
            });
        }
    }
    Ok(())
}

pub(super) fn check_buffers(buffers: &[(&'static str, usize, usize)]) -> Result<(), KernelError> {
    buffers
        .iter()
        .try_for_each(|&(buffer, expected, actual)| check_length(buffer, expected, actual))
}

/// The buffers of a (transposed) convolution call, for one length check shared by both.
pub(super) struct ConvBuffers<'a> {
    pub input: &'a [f32],
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub output: &'a [f32],
    pub scratch: &'a [f32],
}

/// Checks every buffer against the lengths the geometry needs (`[input, weight, output]`),
/// the bias against the output channels, and the scratch against its minimum.
pub(super) fn check_conv_buffers(
    [input_len, weight_len, output_len]: [usize; 3],
    out_channels: usize,
    scratch_len: usize,
    buffers: ConvBuffers<'_>,
) -> Result<(), KernelError> {
    check_buffers(&[
        ("input", input_len, buffers.input.len()),
        ("weight", weight_len, buffers.weight.len()),
    ])?;
    check_buffers(&[
        ("output", output_len, buffers.output.len()),
        (
            "bias",
            out_channels,
            buffers.bias.map_or(out_channels, <[f32]>::len),
        ),
    ])?;
    if buffers.scratch.len() < scratch_len {
        return Err(KernelError::BufferLength {
            buffer: "scratch",
            expected: scratch_len,
            actual: buffers.scratch.len(),
        });
    }
    Ok(())
}
