//! The weight gradient of a 2-D convolution as one GEMM per group that reads both operands in
//! place: `dw[o, (c, ky, kx)] = sum_{(n, oy, ox)} g[n, o, oy, ox] * x[n, c, oy*S - top + ky*D,
//! ox*S - left + kx*D]`, with `M = O/groups`, `N = C/groups * kh * kw` and `K = batch * OH * OW`.
//! A (the output gradient) and B (windows of the input) are offset tables over the tensors as
//! they lie (`gemm/pack.rs`), and C is the row-major weight gradient itself.
//!
//! It used to be a convolution of transposed operands (`x` as `[C, N, H, W]`, `g` as
//! `[O, N, OH, OW]`) whose `[C, O, kh, kw]` output was transposed back: three copies of
//! activations or gradients per convolution, and a scatter of millions of 9-float rows, which cost
//! a resnet18 training step more than these GEMMs' packing does.
//!
//! A padded convolution reads a zero-padded copy of the input, made a chunk of images at a time
//! within a scratch budget; later chunks accumulate onto the first's result. The chunks depend on
//! the sizes alone and the GEMM's sums do not depend on the thread count, so neither does the
//! result.

use super::conv::copy_padded_planes;
use super::gemm::{
    resolve_threads, run_gemm_from_offsets, GemmProblem, MatrixLayout, OffsetTables, OperandTables,
    OutputStart, TilePost,
};
use super::{check_length, checked_product, KernelError};

/// The most floats the padded copy of a chunk of images may take, unless one image needs more
/// (16 MiB).
const MAX_PADDED_FLOATS: usize = 4 << 20;

/// A convolution's weight gradient sizes. Tensors: input `[batch, in_channels, h, w]`, output
/// gradient `[batch, out_channels, oh, ow]`, weight gradient `[out_channels, in_channels /
/// groups, kh, kw]`. Padding is `[[top, bottom], [left, right]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dWeightGradientGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [[usize; 2]; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2dWeightGradientGeometry {
    /// The convolution's output `[height, width]`, or why the geometry is invalid.
    pub fn out_size(&self) -> Result<[usize; 2], KernelError> {
        for (what, value) in [
            ("groups", self.groups),
            ("in channels", self.in_channels),
            ("out channels", self.out_channels),
            ("kernel height", self.kernel[0]),
            ("kernel width", self.kernel[1]),
            ("stride", self.stride[0].min(self.stride[1])),
            ("dilation", self.dilation[0].min(self.dilation[1])),
        ] {
            if value == 0 {
                return Err(KernelError::ZeroParameter { what });
            }
        }
        for (which, channels) in [("input", self.in_channels), ("output", self.out_channels)] {
            if channels % self.groups != 0 {
                return Err(KernelError::GroupsDoNotDivide {
                    which,
                    channels,
                    groups: self.groups,
                });
            }
        }
        let padded = self.padded_size();
        let mut out_size = [0; 2];
        for axis in 0..2 {
            let extent = self.dilation[axis] * (self.kernel[axis] - 1) + 1;
            if extent > padded[axis] {
                return Err(KernelError::KernelLargerThanInput {
                    axis: ["height", "width"][axis],
                    extent,
                    padded: padded[axis],
                });
            }
            out_size[axis] = (padded[axis] - extent) / self.stride[axis] + 1;
        }
        Ok(out_size)
    }

    /// The element counts of input, output gradient and weight gradient.
    pub fn tensor_lens(&self) -> Result<[usize; 3], KernelError> {
        let [out_height, out_width] = self.out_size()?;
        Ok([
            checked_product(&[
                self.batch,
                self.in_channels,
                self.in_size[0],
                self.in_size[1],
            ])?,
            checked_product(&[self.batch, self.out_channels, out_height, out_width])?,
            checked_product(&[
                self.out_channels,
                self.in_channels / self.groups,
                self.kernel[0],
                self.kernel[1],
            ])?,
        ])
    }

    /// The scratch floats [`conv2d_weight_gradient`] needs: a chunk of padded images.
    pub fn scratch_len(&self) -> Result<usize, KernelError> {
        self.tensor_lens()?;
        Ok(self.padded_image_len() * self.images_per_chunk())
    }

    fn pads(&self) -> bool {
        self.padding != [[0, 0], [0, 0]]
    }

    fn padded_size(&self) -> [usize; 2] {
        [
            self.in_size[0] + self.padding[0][0] + self.padding[0][1],
            self.in_size[1] + self.padding[1][0] + self.padding[1][1],
        ]
    }

    /// The floats of one zero-padded input image, or 0 when the convolution does not pad.
    fn padded_image_len(&self) -> usize {
        if !self.pads() {
            return 0;
        }
        let [height, width] = self.padded_size();
        self.in_channels * height * width
    }

    /// Images per GEMM: the whole batch, unless their padded copies exceed the scratch budget.
    fn images_per_chunk(&self) -> usize {
        match self.padded_image_len() {
            0 => self.batch.max(1),
            image_len => (MAX_PADDED_FLOATS / image_len).clamp(1, self.batch.max(1)),
        }
    }
}

/// Writes the weight gradient of the convolution into `weight_gradient`, on up to `threads`
/// threads (0: all cores), bit-identical for any count. `scratch` needs at least
/// [`Conv2dWeightGradientGeometry::scratch_len`] floats.
pub fn conv2d_weight_gradient(
    geometry: &Conv2dWeightGradientGeometry,
    input: &[f32],
    output_gradient: &[f32],
    weight_gradient: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let [input_len, gradient_len, weight_len] = geometry.tensor_lens()?;
    check_length("input", input_len, input.len())?;
    check_length("output gradient", gradient_len, output_gradient.len())?;
    check_length("weight gradient", weight_len, weight_gradient.len())?;
    let scratch_len = geometry.scratch_len()?;
    if scratch.len() < scratch_len {
        return Err(KernelError::BufferLength {
            buffer: "scratch",
            expected: scratch_len,
            actual: scratch.len(),
        });
    }
    let threads = resolve_threads(threads);
    let out_size = geometry.out_size()?;
    let positions = out_size[0] * out_size[1];
    if geometry.batch == 0 || positions == 0 {
        weight_gradient.fill(0.0);
        return Ok(());
    }
    let (group_in, group_out) = (
        geometry.in_channels / geometry.groups,
        geometry.out_channels / geometry.groups,
    );
    let taps = geometry.kernel[0] * geometry.kernel[1];
    let in_image_len = geometry.in_channels * geometry.in_size[0] * geometry.in_size[1];
    let gradient_image_len = geometry.out_channels * positions;
    let [height, width] = if geometry.pads() {
        geometry.padded_size()
    } else {
        geometry.in_size
    };
    let plane = height * width;
    let image_len = geometry.in_channels * plane;
    // B's columns: one window tap of one input channel, relative to the group's first channel.
    let mut tap_offsets = Vec::with_capacity(group_in * taps);
    for channel in 0..group_in {
        for tap_row in 0..geometry.kernel[0] {
            for tap_col in 0..geometry.kernel[1] {
                tap_offsets.push(
                    channel * plane
                        + tap_row * geometry.dilation[0] * width
                        + tap_col * geometry.dilation[1],
                );
            }
        }
    }
    // A's rows: one output channel of the group.
    let channel_offsets: Vec<usize> = (0..group_out).map(|out| out * positions).collect();
    let chunk = geometry.images_per_chunk();
    // Few channel pairs: direct loops, which pack nothing (`conv_weight_gradient_direct.rs`).
    let direct = super::conv_weight_gradient_direct::applies(geometry);
    for first_image in (0..geometry.batch).step_by(chunk) {
        let images = chunk.min(geometry.batch - first_image);
        let chunk_input = &input[first_image * in_image_len..(first_image + images) * in_image_len];
        let source: &[f32] = if geometry.pads() {
            let padded = &mut scratch[..geometry.padded_image_len() * images];
            copy_padded_planes(chunk_input, geometry.in_size, geometry.padding, padded);
            padded
        } else {
            chunk_input
        };
        let gradient_chunk = &output_gradient[first_image * gradient_image_len..];
        if direct {
            super::conv_weight_gradient_direct::accumulate_weight_gradient(
                geometry,
                (source, [height, width]),
                gradient_chunk,
                images,
                (weight_gradient, first_image == 0),
                threads,
            );
            continue;
        }
        // B's rows and A's columns: one output position of one image.
        let mut window_offsets = Vec::with_capacity(images * positions);
        let mut position_offsets = Vec::with_capacity(images * positions);
        for image in 0..images {
            for out_row in 0..out_size[0] {
                for out_col in 0..out_size[1] {
                    window_offsets.push(
                        image * image_len
                            + out_row * geometry.stride[0] * width
                            + out_col * geometry.stride[1],
                    );
                    position_offsets
                        .push(image * gradient_image_len + out_row * out_size[1] + out_col);
                }
            }
        }
        for group in 0..geometry.groups {
            let columns = group_in * taps;
            let problem = GemmProblem {
                m: group_out,
                n: columns,
                k: images * positions,
                a: gradient_chunk[group * group_out * positions..].as_ptr(),
                a_layout: MatrixLayout::strided(0, 0),
                b: source[group * group_in * plane..].as_ptr(),
                b_layout: MatrixLayout::strided(0, 0),
                c: weight_gradient[group * group_out * columns..].as_mut_ptr(),
                c_layout: MatrixLayout::strided(columns, 1),
                start: if first_image > 0 {
                    OutputStart::Existing
                } else {
                    OutputStart::Zero
                },
                post: TilePost::NONE,
            };
            let tables = OperandTables {
                a: Some(OffsetTables {
                    rows: channel_offsets.as_ptr(),
                    columns: position_offsets.as_ptr(),
                }),
                b: Some(OffsetTables {
                    rows: window_offsets.as_ptr(),
                    columns: tap_offsets.as_ptr(),
                }),
                packed_b: None,
            };
            // SAFETY: the tables address only this chunk's images of the checked (padded) input
            // and output gradient, within this group's channels; C is this group's rows of the
            // checked weight gradient.
            unsafe { run_gemm_from_offsets(&problem, tables, threads) };
        }
    }
    Ok(())
}
