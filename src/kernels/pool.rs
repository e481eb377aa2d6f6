//! 2-D max and average pooling with PyTorch's semantics (NCHW), as direct loops over output
//! planes, split across threads by whole planes.
//!
//! Output size along an axis, as PyTorch computes it:
//! `out = (in + 2 * pad - dilation * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0)) / stride + 1`,
//! minus one if `ceil_mode` and the last window would start in the right padding
//! (`(out - 1) * stride >= in + pad`). Padding may be at most half the (dilated) kernel.
//! Max pooling pads with -inf and propagates NaN; average pooling divides by the window's size
//! clipped to the padded input (`count_include_pad`) or to the input, or by `divisor_override`.

use super::parallel::{part_range, run_parallel, SharedMutPtr};
use super::{check_length, checked_product, KernelError};

/// A pooling's sizes: input `[batch, channels, h, w]`, output `[batch, channels, oh, ow]`.
/// Pairs are `[height, width]`; PyTorch's default stride is the kernel size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    pub batch: usize,
    pub channels: usize,
    pub in_size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
}

impl Pool2dGeometry {
    /// The output's `[height, width]`, or why the geometry is invalid.
    pub fn out_size(&self) -> Result<[usize; 2], KernelError> {
        Ok([self.out_extent(0)?, self.out_extent(1)?])
    }

    /// The element counts of input and output.
    pub fn tensor_lens(&self) -> Result<[usize; 2], KernelError> {
        let [out_height, out_width] = self.out_size()?;
        Ok([
            checked_product(&[self.batch, self.channels, self.in_size[0], self.in_size[1]])?,
            checked_product(&[self.batch, self.channels, out_height, out_width])?,
        ])
    }

    fn out_extent(&self, axis: usize) -> Result<usize, KernelError> {
        let axis_name = ["height", "width"][axis];
        let (input, kernel, stride) = (self.in_size[axis], self.kernel[axis], self.stride[axis]);
        let (padding, dilation) = (self.padding[axis], self.dilation[axis]);
        for (what, value) in [
            ("pooling kernel size", kernel),
            ("pooling stride", stride),
            ("pooling dilation", dilation),
        ] {
            if value == 0 {
                return Err(KernelError::ZeroParameter { what });
            }
        }
        let extent = dilation * (kernel - 1) + 1;
        if padding > extent / 2 {
            return Err(KernelError::PaddingTooLarge {
                axis: axis_name,
                padding,
                extent,
            });
        }
        let padded = input + 2 * padding;
        if extent > padded {
            return Err(KernelError::KernelLargerThanInput {
                axis: axis_name,
                extent,
                padded,
            });
        }
        let rounding = if self.ceil_mode { stride - 1 } else { 0 };
        let mut out = (padded - extent + rounding) / stride + 1;
        if self.ceil_mode && (out - 1) * stride >= input + padding {
            out -= 1;
        }
        Ok(out)
    }

    /// For every output position along `axis`: the first input position of its window (possibly
    /// negative), and the range of taps that land inside the input.
    fn windows(&self, axis: usize, out_len: usize) -> Vec<(isize, std::ops::Range<usize>)> {
        let (input, kernel, dilation) = (
            self.in_size[axis] as isize,
            self.kernel[axis],
            self.dilation[axis] as isize,
        );
        (0..out_len)
            .map(|out| {
                let start = (out * self.stride[axis]) as isize - self.padding[axis] as isize;
                let inside = |tap: &usize| (0..input).contains(&(start + *tap as isize * dilation));
                let first = (0..kernel).find(inside).unwrap_or(kernel);
                let end = (0..kernel)
                    .rev()
                    .find(inside)
                    .map_or(first, |last| last + 1);
                (start, first..end.max(first))
            })
            .collect()
    }
}

/// Max pooling on up to `threads` threads (0: all cores).
pub fn max_pool2d(
    geometry: &Pool2dGeometry,
    input: &[f32],
    output: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let out_size = check_buffers(geometry, input, output)?;
    let [rows, cols] = [
        geometry.windows(0, out_size[0]),
        geometry.windows(1, out_size[1]),
    ];
    let dilation = geometry.dilation;
    for_each_plane(
        geometry,
        out_size,
        input,
        output,
        threads,
        &|in_plane, out_plane| {
            let in_width = geometry.in_size[1];
            for ((row_start, row_taps), out_row) in
                rows.iter().zip(out_plane.chunks_exact_mut(out_size[1]))
            {
                for ((col_start, col_taps), target) in cols.iter().zip(out_row.iter_mut()) {
                    let mut maximum = f32::NEG_INFINITY;
                    for tap_row in row_taps.clone() {
                        let in_row = (row_start + (tap_row * dilation[0]) as isize) as usize;
                        for tap_col in col_taps.clone() {
                            let in_col = (col_start + (tap_col * dilation[1]) as isize) as usize;
                            let value = in_plane[in_row * in_width + in_col];
                            // PyTorch's rule: NaN wins, otherwise the larger value.
                            if value > maximum || value.is_nan() {
                                maximum = value;
                            }
                        }
                    }
                    *target = maximum;
                }
            }
        },
    );
    Ok(())
}

/// Average pooling on up to `threads` threads (0: all cores). As in PyTorch, average pooling has
/// no dilation, so `geometry.dilation` must be `[1, 1]`.
pub fn avg_pool2d(
    geometry: &Pool2dGeometry,
    count_include_pad: bool,
    divisor_override: Option<usize>,
    input: &[f32],
    output: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    if geometry.dilation != [1, 1] {
        return Err(KernelError::Unsupported {
            what: "dilation in average pooling",
        });
    }
    if divisor_override == Some(0) {
        return Err(KernelError::ZeroParameter {
            what: "divisor override",
        });
    }
    let out_size = check_buffers(geometry, input, output)?;
    let [rows, cols] = [
        geometry.windows(0, out_size[0]),
        geometry.windows(1, out_size[1]),
    ];
    // The window clipped to the padded input, as PyTorch counts it with count_include_pad.
    let padded_extent = |axis: usize, start: isize| {
        let end = (start + geometry.kernel[axis] as isize)
            .min((geometry.in_size[axis] + geometry.padding[axis]) as isize);
        (end - start) as usize
    };
    for_each_plane(
        geometry,
        out_size,
        input,
        output,
        threads,
        &|in_plane, out_plane| {
            let in_width = geometry.in_size[1];
            for ((row_start, row_taps), out_row) in
                rows.iter().zip(out_plane.chunks_exact_mut(out_size[1]))
            {
                for ((col_start, col_taps), target) in cols.iter().zip(out_row.iter_mut()) {
                    if row_taps.is_empty() || col_taps.is_empty() {
                        *target = 0.0;
                        continue;
                    }
                    let mut sum = 0.0f32;
                    for tap_row in row_taps.clone() {
                        let in_row = (row_start + tap_row as isize) as usize;
                        let start =
                            in_row * in_width + (col_start + col_taps.start as isize) as usize;
                        sum += in_plane[start..start + col_taps.len()].iter().sum::<f32>();
                    }
                    let divisor = match divisor_override {
                        Some(divisor) => divisor,
                        None if count_include_pad => {
                            padded_extent(0, *row_start) * padded_extent(1, *col_start)
                        }
                        None => row_taps.len() * col_taps.len(),
                    };
                    *target = sum / divisor as f32;
                }
            }
        },
    );
    Ok(())
}

fn check_buffers(
    geometry: &Pool2dGeometry,
    input: &[f32],
    output: &[f32],
) -> Result<[usize; 2], KernelError> {
    let [input_len, output_len] = geometry.tensor_lens()?;
    check_length("input", input_len, input.len())?;
    check_length("output", output_len, output.len())?;
    geometry.out_size()
}

/// Runs `pool_plane(input plane, output plane)` for every (image, channel), planes split across
/// threads.
fn for_each_plane(
    geometry: &Pool2dGeometry,
    out_size: [usize; 2],
    input: &[f32],
    output: &mut [f32],
    threads: usize,
    pool_plane: &(dyn Fn(&[f32], &mut [f32]) + Sync),
) {
    let planes = geometry.batch * geometry.channels;
    let (in_plane_len, out_plane_len) = (
        geometry.in_size[0] * geometry.in_size[1],
        out_size[0] * out_size[1],
    );
    if out_plane_len == 0 {
        return;
    }
    let output_data = SharedMutPtr(output.as_mut_ptr());
    let threads = crate::kernels::gemm::resolve_threads(threads);
    // A plane of a few dozen outputs is not worth waking a thread for.
    let parts = threads.min(planes * out_plane_len / 4096).max(1);
    run_parallel(parts, &|part| {
        for plane in part_range(planes, parts, part) {
            // SAFETY: each part writes only its own planes of the checked output buffer.
            let out_plane = unsafe {
                std::slice::from_raw_parts_mut(
                    output_data.get().add(plane * out_plane_len),
                    out_plane_len,
                )
            };
            pool_plane(
                &input[plane * in_plane_len..(plane + 1) * in_plane_len],
                out_plane,
            );
        }
    });
}
