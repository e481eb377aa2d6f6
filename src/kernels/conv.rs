//! 2-D convolution and transposed convolution (PyTorch semantics, NCHW activations, PyTorch
//! weight layouts), as GEMMs.
//!
//! `conv2d`: per chunk of images and per group, one GEMM computes
//! `output[g] (+)= weight[g] (O/g x C/g*kh*kw) x columns`, writing straight into the NCHW output
//! (the GEMM's C layout jumps from one image to the next). The column matrix is never written:
//! its element for row `(channel, tap row, tap column)` and column `(image, out row, out
//! column)` lives at the sum of one offset per row and one per column in the input (after a
//! zero-padded copy of the chunk when the convolution pads), so the GEMM packs its B panels
//! straight from the input through two offset tables ("implicit GEMM"). An im2col copy used to
//! cost as much as the GEMM's arithmetic on the weight gradients, whose column matrices are nine
//! times their input (resnet18 training step at 3x32x32, batch 32: 166 -> see BENCHMARKS.md).
//! A 1x1, stride-1, unpadded convolution reads the input as a grouped matrix. A depthwise
//! convolution (one input and one output channel per group) runs as direct loops instead, since
//! its GEMM would have a single row.
//!
//! Transposed convolutions are in `conv_transpose.rs`, re-exported here.
//!
//! The bias, when given, is added by the GEMM as it writes each tile (`OutputStart::RowBias`);
//! images smaller than a micro-tile row get a gathered GEMM output (bias included) that is
//! scattered into the images (see `gathers_output`).

use super::gemm::{
    resolve_threads, run_gemm, run_gemm_from_offsets, ColumnLayout, GemmProblem, MatrixLayout,
    OffsetTables, OperandTables, OutputStart, TilePost,
};
use super::im2col::ConvWindow;
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

/// About this many GEMM columns per chunk of images in a transposed convolution, whose column
/// matrix is written (see `conv_transpose.rs`).
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
        if self.is_depthwise()
            || super::conv_direct::applies(self)
            || super::conv_direct_channels::applies(self)
        {
            return Ok(0);
        }
        let [_, grid_len] = self.column_matrix_size();
        let chunk = self.images_per_chunk();
        let gathered = if gathers_output(grid_len, chunk) {
            self.out_channels / self.groups * grid_len * chunk
        } else {
            0
        };
        Ok(self.padded_image_len() * chunk + gathered)
    }

    fn pads(&self) -> bool {
        self.padding != [0, 0]
    }

    /// The floats of one zero-padded input image, or 0 when the convolution does not pad.
    fn padded_image_len(&self) -> usize {
        if !self.pads() {
            return 0;
        }
        let [height, width] = self.padded_size();
        self.in_channels * height * width
    }

    /// The padding as `[[top, bottom], [left, right]]`.
    pub(super) fn padding_pairs(&self) -> [[usize; 2]; 2] {
        [[self.padding[0]; 2], [self.padding[1]; 2]]
    }

    fn padded_size(&self) -> [usize; 2] {
        [
            self.in_size[0] + 2 * self.padding[0],
            self.in_size[1] + 2 * self.padding[1],
        ]
    }

    /// Images per GEMM: the whole batch, unless the padded copies would exceed the scratch
    /// budget; a function of the sizes alone.
    fn images_per_chunk(&self) -> usize {
        match self.padded_image_len() {
            0 => self.batch.max(1),
            image_len => (MAX_SCRATCH_FLOATS / image_len).clamp(1, self.batch.max(1)),
        }
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
    let weight = ConvWeight::Plain(weight);
    conv2d_with_weight(geometry, input, weight, bias, output, scratch, threads)
}

/// How a convolution's weight `[O, C/g, kh, kw]` is stored.
#[derive(Clone, Copy)]
pub(super) enum ConvWeight<'a> {
    /// As it is.
    Plain(&'a [f32]),
    /// As a transposed convolution's weight `[C, O/g, kh, kw]` with its taps in reverse order:
    /// element `[g*O/g + o, c, t]` is `[g*C/g + c, o, kh*kw-1-t]` here (see
    /// `conv_transpose_stride_one.rs`). Not for depthwise convolutions.
    TransposedAndFlipped(&'a [f32]),
}

impl<'a> ConvWeight<'a> {
    fn data(&self) -> &'a [f32] {
        match *self {
            ConvWeight::Plain(data) | ConvWeight::TransposedAndFlipped(data) => data,
        }
    }
}

/// [`conv2d_with_scratch`] with the weight stored as `weight` says.
pub(super) fn conv2d_with_weight(
    geometry: &Conv2dGeometry,
    input: &[f32],
    weight_storage: ConvWeight<'_>,
    bias: Option<&[f32]>,
    output: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let weight = weight_storage.data();
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
        if let ConvWeight::TransposedAndFlipped(_) = weight_storage {
            return Err(KernelError::Unsupported {
                what: "a transposed and flipped weight in a depthwise convolution",
            });
        }
        depthwise_conv2d(geometry, out_size, input, weight, bias, output, threads);
        return Ok(());
    }
    if let ConvWeight::Plain(weight) = weight_storage {
        if super::conv_direct::applies(geometry) {
            super::conv_direct::direct_conv2d(geometry, input, weight, bias, output, threads);
            return Ok(());
        }
    }
    if super::conv_direct_channels::applies(geometry) {
        let storage = weight_storage;
        super::conv_direct_channels::direct_conv2d(geometry, input, storage, bias, output, threads);
        return Ok(());
    }
    let weight_tables = WeightTables::new(geometry, weight_storage);
    let [rows, grid_len] = geometry.column_matrix_size();
    let chunk = geometry.images_per_chunk();
    let gather = gathers_output(grid_len, chunk);
    let (padded_scratch, gathered_scratch) =
        scratch.split_at_mut(geometry.padded_image_len() * chunk);
    let in_image_len = geometry.in_channels * geometry.in_size[0] * geometry.in_size[1];
    let (group_in, group_out) = (
        geometry.in_channels / geometry.groups,
        geometry.out_channels / geometry.groups,
    );
    for first_image in (0..geometry.batch).step_by(chunk) {
        let images = chunk.min(geometry.batch - first_image);
        let chunk_input = &input[first_image * in_image_len..(first_image + images) * in_image_len];
        let source = if geometry.is_pointwise() {
            None
        } else if geometry.pads() {
            let padded = &mut padded_scratch[..geometry.padded_image_len() * images];
            copy_padded_planes(
                chunk_input,
                geometry.in_size,
                geometry.padding_pairs(),
                padded,
            );
            Some(ColumnSource::new(geometry, padded, images, out_size))
        } else {
            Some(ColumnSource::new(geometry, chunk_input, images, out_size))
        };
        for group in 0..geometry.groups {
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
            let mut problem = GemmProblem {
                m: group_out,
                n: images * grid_len,
                k: rows,
                // Both weight storages hold one group's weights after another, O/g * C/g * taps
                // floats each.
                a: weight[group * group_out * rows..].as_ptr(),
                a_layout: MatrixLayout::strided(rows, 1),
                b: chunk_input.as_ptr(),
                b_layout: MatrixLayout::strided(0, 0),
                c,
                c_layout,
                // The bias goes in as each tile's first k block is written, into the gathered
                // output too: a bias added after the whole sum would round differently when k
                // has several blocks, and whether the output is gathered depends on how many
                // images a thread has.
                start: match bias {
                    Some(bias) => OutputStart::RowBias(bias[group * group_out..].as_ptr()),
                    None => OutputStart::Zero,
                },
                post: TilePost::NONE,
            };
            match &source {
                // A pointwise convolution reads its input as a grouped matrix.
                None => {
                    let in_plane = geometry.in_size[0] * geometry.in_size[1];
                    problem.b = chunk_input[group * group_in * in_plane..].as_ptr();
                    problem.b_layout = MatrixLayout {
                        row_stride: in_plane,
                        columns: ColumnLayout::grouped(in_plane, in_image_len),
                    };
                }
                Some(source) => problem.b = source.group_start(group),
            }
            let tables = OperandTables {
                a: weight_tables.as_ref().map(WeightTables::tables),
                b: source.as_ref().map(ColumnSource::tables),
                packed_b: None,
            };
            // SAFETY: the layouts and tables address only this chunk's and group's part of the
            // (padded) input and of the weight (checked against the geometry above, the tables
            // as `ColumnSource::new` and `WeightTables::new` built them), and C likewise.
            unsafe {
                if tables.a.is_none() && tables.b.is_none() {
                    run_gemm(&problem, threads)
                } else {
                    run_gemm_from_offsets(&problem, tables, threads)
                }
            };
            if gather {
                let gathered = &gathered_scratch[..group_out * images * grid_len];
                scatter_into_images(
                    gathered,
                    group_out,
                    grid_len,
                    geometry.out_channels * grid_len,
                    &mut output[output_start..],
                );
            }
        }
    }
    Ok(())
}

/// The column matrix of one chunk, as offset tables into its (padded) input: row
/// `(channel, tap row, tap column)` of a group sits at `channel * plane + tap row * dilation *
/// width + tap column * dilation`, column `(image, out row, out column)` at `image * image_len +
/// out row * stride * width + out column * stride`, where `width` and `plane` are the (padded)
/// image's.
struct ColumnSource<'a> {
    images: &'a [f32],
    group_len: usize,
    row_offsets: Vec<usize>,
    column_offsets: Vec<usize>,
}

impl<'a> ColumnSource<'a> {
    fn new(
        geometry: &Conv2dGeometry,
        images: &'a [f32],
        image_count: usize,
        out_size: [usize; 2],
    ) -> ColumnSource<'a> {
        let [height, width] = if geometry.pads() {
            geometry.padded_size()
        } else {
            geometry.in_size
        };
        let plane = height * width;
        let group_in = geometry.in_channels / geometry.groups;
        let [kernel_height, kernel_width] = geometry.kernel;
        let mut row_offsets = Vec::with_capacity(group_in * kernel_height * kernel_width);
        for channel in 0..group_in {
            for tap_row in 0..kernel_height {
                for tap_col in 0..kernel_width {
                    row_offsets.push(
                        channel * plane
                            + tap_row * geometry.dilation[0] * width
                            + tap_col * geometry.dilation[1],
                    );
                }
            }
        }
        let image_len = geometry.in_channels * plane;
        let mut column_offsets = Vec::with_capacity(image_count * out_size[0] * out_size[1]);
        for image in 0..image_count {
            for out_row in 0..out_size[0] {
                let row_start = image * image_len + out_row * geometry.stride[0] * width;
                column_offsets.extend(
                    (0..out_size[1]).map(|out_col| row_start + out_col * geometry.stride[1]),
                );
            }
        }
        ColumnSource {
            images,
            group_len: group_in * plane,
            row_offsets,
            column_offsets,
        }
    }

    fn group_start(&self, group: usize) -> *const f32 {
        self.images[group * self.group_len..].as_ptr()
    }

    fn tables(&self) -> OffsetTables {
        OffsetTables {
            rows: self.row_offsets.as_ptr(),
            columns: self.column_offsets.as_ptr(),
        }
    }
}

/// A transposed and flipped weight as offset tables over one group's weights: row `o` sits at
/// `o * taps`, column `(c, t)` at `c * O/g * taps + taps - 1 - t`.
struct WeightTables {
    row_offsets: Vec<usize>,
    column_offsets: Vec<usize>,
}

impl WeightTables {
    /// The tables, or `None` for a plain weight (read through its row-major layout).
    fn new(geometry: &Conv2dGeometry, weight: ConvWeight<'_>) -> Option<WeightTables> {
        let ConvWeight::TransposedAndFlipped(_) = weight else {
            return None;
        };
        let taps = geometry.kernel[0] * geometry.kernel[1];
        let group_in = geometry.in_channels / geometry.groups;
        let group_out = geometry.out_channels / geometry.groups;
        let row_offsets = (0..group_out)
            .map(|out_channel| out_channel * taps)
            .collect();
        let column_offsets = (0..group_in)
            .flat_map(|in_channel| {
                (0..taps).map(move |tap| in_channel * group_out * taps + taps - 1 - tap)
            })
            .collect();
        Some(WeightTables {
            row_offsets,
            column_offsets,
        })
    }

    fn tables(&self) -> OffsetTables {
        OffsetTables {
            rows: self.row_offsets.as_ptr(),
            columns: self.column_offsets.as_ptr(),
        }
    }
}

/// Copies planes of `in_size` into `padded`, each surrounded by zeros: `padding` is
/// `[[top, bottom], [left, right]]`, and `padded` holds as many planes of the padded size. The
/// convolutions, their weight gradients and the direct loops all read such copies.
pub(super) fn copy_padded_planes(
    planes: &[f32],
    [height, width]: [usize; 2],
    [[top, bottom], [left, right]]: [[usize; 2]; 2],
    padded: &mut [f32],
) {
    let padded_width = left + width + right;
    let padded_plane = (top + height + bottom) * padded_width;
    for (source_plane, target_plane) in planes
        .chunks_exact(height * width)
        .zip(padded.chunks_exact_mut(padded_plane))
    {
        target_plane[..top * padded_width].fill(0.0);
        target_plane[(top + height) * padded_width..].fill(0.0);
        for (source_row, target_row) in source_plane.chunks_exact(width).zip(
            target_plane[top * padded_width..(top + height) * padded_width]
                .chunks_exact_mut(padded_width),
        ) {
            target_row[..left].fill(0.0);
            target_row[left..left + width].copy_from_slice(source_row);
            target_row[left + width..].fill(0.0);
        }
    }
}

/// Whether a chunk's GEMM writes a row-major scratch that is then scattered into the images:
/// when images are smaller than a micro-tile row, writing C in place would scatter every tile
/// element by element once per k block, while the scratch is written with whole vectors.
fn gathers_output(grid_len: usize, images_per_chunk: usize) -> bool {
    grid_len < GATHER_BELOW_GRID_LEN && images_per_chunk > 1
}

/// `images[image][channel] = gathered[channel][image]`, where `gathered` is
/// `[channels, images * grid_len]` and consecutive images are `image_stride` apart. The loop
/// runs image by image, so the writes are contiguous and each gathered row is read in order
/// across consecutive images: with channel-major loops the weight gradients' scatter (millions of
/// 9-float rows per resnet18 training step) missed the cache on every write.
fn scatter_into_images(
    gathered: &[f32],
    channels: usize,
    grid_len: usize,
    image_stride: usize,
    images: &mut [f32],
) {
    // The weight gradients of 3x3 convolutions have 9-position grids: a copy of known length
    // avoids a loop setup per 9 floats.
    match grid_len {
        9 => scatter_grids::<9>(gathered, channels, 9, image_stride, images),
        _ => scatter_grids::<0>(gathered, channels, grid_len, image_stride, images),
    }
}

/// [`scatter_into_images`] for grids of `GRID_LEN` positions, or any `grid_len` when it is 0.
fn scatter_grids<const GRID_LEN: usize>(
    gathered: &[f32],
    channels: usize,
    grid_len: usize,
    image_stride: usize,
    images: &mut [f32],
) {
    let grid_len = if GRID_LEN == 0 { grid_len } else { GRID_LEN };
    let row_len = gathered.len() / channels;
    let image_count = row_len / grid_len.max(1);
    for image in 0..image_count {
        let image_block = &mut images[image * image_stride..][..channels * grid_len];
        for (channel, target) in image_block.chunks_exact_mut(grid_len).enumerate() {
            target.copy_from_slice(&gathered[channel * row_len + image * grid_len..][..grid_len]);
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
