//! 2-D transposed convolution (PyTorch semantics, NCHW activations, weight
//! `[in_channels, out_channels / groups, kh, kw]`) as a GEMM followed by col2im: per chunk of
//! images and per group, one GEMM computes the column matrix
//! `weight[g]ᵀ (O/g*kh*kw x C/g) x input[g]` (the input read in place, image after image), and
//! col2im adds each column back to the output positions its window covers. The output starts as
//! the bias (or zero). Stride-1 transposed convolutions run as convolutions instead
//! (`conv_transpose_stride_one.rs`), and depthwise ones (average pooling's gradient) by direct
//! loops without a column matrix (`conv_transpose/depthwise.rs`).

mod depthwise;

use super::conv::{
    check_conv_buffers, check_groups, check_positive, check_window, fill_with_bias,
    images_per_chunk, ConvBuffers, AXES,
};
use super::conv_transpose_stride_one::StrideOneTransposedConvolution;
use super::gemm::{
    resolve_threads, run_gemm, ColumnLayout, GemmProblem, MatrixLayout, OutputStart, TilePost,
};
use super::im2col::{col2im_add, ConvWindow};
use super::{checked_product, KernelError};

/// A transposed convolution's sizes. Tensors: input `[batch, in_channels, h, w]`, weight
/// `[in_channels, out_channels / groups, kh, kw]`, bias `[out_channels]`, output
/// `[batch, out_channels, out_size[0], out_size[1]]`. Input row `iy` with tap `ky` scatters to
/// output row `iy * stride - padding + ky * dilation` (likewise columns); scattered positions
/// outside the output are dropped and output positions no window reaches hold the bias (or 0).
/// PyTorch's sizes are [`ConvTranspose2dGeometry::pytorch_out_size`]; gradients of
/// convolutions need others (a crop or a few extra rows), so any size is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub out_size: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl ConvTranspose2dGeometry {
    /// PyTorch's output size along one axis: `(size - 1) * stride - 2 * padding +
    /// dilation * (kernel - 1) + output_padding + 1`, or `None` when the padding eats it all.
    pub fn pytorch_out_size(
        size: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        output_padding: usize,
    ) -> Option<usize> {
        let full = (size.max(1) - 1) * stride + dilation * (kernel.max(1) - 1) + output_padding + 1;
        full.checked_sub(2 * padding).filter(|&out| out > 0)
    }

    /// The output's `[height, width]`, or why the geometry is invalid.
    pub fn out_size(&self) -> Result<[usize; 2], KernelError> {
        check_positive(&[("batch", self.batch), ("groups", self.groups)])?;
        check_window(self.kernel, self.stride, self.dilation)?;
        check_groups(self.in_channels, self.out_channels, self.groups)?;
        for (axis, name) in AXES.iter().enumerate() {
            if self.in_size[axis] == 0 || self.out_size[axis] == 0 {
                return Err(KernelError::EmptyTransposedConvolution { axis: name });
            }
        }
        Ok(self.out_size)
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
                self.in_channels,
                self.out_channels / self.groups,
                self.kernel[0],
                self.kernel[1],
            ])?,
            checked_product(&[self.batch, self.out_channels, out_height, out_width])?,
        ])
    }

    /// The scratch floats `conv_transpose2d_with_scratch` needs (none for a depthwise one).
    pub fn scratch_len(&self) -> Result<usize, KernelError> {
        self.tensor_lens()?;
        if depthwise::is_depthwise(self) {
            return Ok(0);
        }
        if let Some(convolution) = StrideOneTransposedConvolution::new(self) {
            return convolution.scratch_len();
        }
        let rows = self.out_channels / self.groups * self.kernel[0] * self.kernel[1];
        let grid_len = self.in_size[0] * self.in_size[1];
        Ok(rows * grid_len * images_per_chunk(self.batch, rows, grid_len))
    }
}

/// A 2-D transposed convolution, allocating its scratch. See [`conv_transpose2d_with_scratch`].
pub fn conv_transpose2d(
    geometry: &ConvTranspose2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let mut scratch = vec![0.0; geometry.scratch_len()?];
    conv_transpose2d_with_scratch(geometry, input, weight, bias, output, &mut scratch, threads)
}

/// A 2-D transposed convolution on up to `threads` threads (0: all cores), bit-identical for any
/// count. `scratch` needs at least [`ConvTranspose2dGeometry::scratch_len`] floats.
pub fn conv_transpose2d_with_scratch(
    geometry: &ConvTranspose2dGeometry,
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
    if depthwise::is_depthwise(geometry) {
        let threads = resolve_threads(threads);
        depthwise::conv_transpose2d_depthwise(geometry, input, weight, bias, output, threads);
        return Ok(());
    }
    if let Some(convolution) = StrideOneTransposedConvolution::new(geometry) {
        return convolution.run(input, weight, bias, output, scratch, threads);
    }
    let threads = resolve_threads(threads);
    let out_size = geometry.out_size()?;
    let out_plane = out_size[0] * out_size[1];
    match bias {
        Some(bias) => fill_with_bias(output, bias, out_plane),
        None => output.fill(0.0),
    }
    let (group_in, group_out) = (
        geometry.in_channels / geometry.groups,
        geometry.out_channels / geometry.groups,
    );
    let rows = group_out * geometry.kernel[0] * geometry.kernel[1];
    let grid_len = geometry.in_size[0] * geometry.in_size[1];
    let window = ConvWindow {
        image_size: out_size,
        grid_size: geometry.in_size,
        kernel: geometry.kernel,
        stride: geometry.stride,
        padding: geometry.padding,
        dilation: geometry.dilation,
    };
    let chunk = images_per_chunk(geometry.batch, rows, grid_len);
    for first_image in (0..geometry.batch).step_by(chunk) {
        let images = chunk.min(geometry.batch - first_image);
        for group in 0..geometry.groups {
            let input_start =
                first_image * geometry.in_channels * grid_len + group * group_in * grid_len;
            let problem = GemmProblem {
                m: rows,
                n: images * grid_len,
                k: group_in,
                // Weight group g is `[C/g, O/g*kh*kw]` row-major; the GEMM reads its transpose.
                a: weight[group * group_in * rows..].as_ptr(),
                a_layout: MatrixLayout::strided(1, rows),
                b: input[input_start..].as_ptr(),
                b_layout: MatrixLayout {
                    row_stride: grid_len,
                    columns: ColumnLayout::grouped(grid_len, geometry.in_channels * grid_len),
                },
                c: scratch.as_mut_ptr(),
                c_layout: MatrixLayout::strided(images * grid_len, 1),
                start: OutputStart::Zero,
                post: TilePost::NONE,
            };
            // SAFETY: the buffers were checked against the geometry above.
            unsafe {
                run_gemm(&problem, threads);
                let output_start =
                    first_image * geometry.out_channels * out_plane + group * group_out * out_plane;
                let output_images = output[output_start..].as_mut_ptr();
                col2im_add(
                    &window,
                    scratch.as_ptr(),
                    (group_out, images),
                    output_images,
                    geometry.out_channels * out_plane,
                    threads,
                );
            }
        }
    }
    Ok(())
}
