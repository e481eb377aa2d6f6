//! 2-D max and average pooling with PyTorch's semantics (NCHW), as direct loops over output
//! planes, split across threads by whole planes.
//!
//! Output size along an axis, as PyTorch computes it:
//! `out = (in + 2 * pad - dilation * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0)) / stride + 1`,
//! minus one if `ceil_mode` and the last window would start in the right padding
//! (`(out - 1) * stride >= in + pad`). Padding may be at most half the (dilated) kernel.
//! Max pooling pads with -inf and propagates NaN; average pooling divides by the window's size
//! clipped to the padded input (`count_include_pad`) or to the input, or by `divisor_override`.
//!
//! Every window is reduced tap by tap in row-major order, starting from 0 (sum) or -inf (max),
//! as PyTorch's CPU kernels do, so sums round exactly as PyTorch's do. When some window reaches
//! past the input (padding, `ceil_mode`), each plane is first copied into a scratch plane whose
//! border holds that starting value: a padded tap then leaves the sum or the maximum unchanged
//! bit for bit, so every window is a plain fixed-size window, and the loops over windows
//! (`windows.rs`) have no per-window clipping to do.

mod windows;

use super::parallel::{part_range, run_parallel, SharedMutPtr};
use super::{check_length, checked_product, KernelError};
use windows::{plane_loop, Maximum, PlaneLoop, Sum, WindowReduction};

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

    /// The input positions one window spans along `axis`, from its first tap to its last.
    pub(crate) fn extent(&self, axis: usize) -> usize {
        self.dilation[axis] * (self.kernel[axis] - 1) + 1
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
        let extent = self.extent(axis);
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
}

/// Max pooling on up to `threads` threads (0: all cores).
pub fn max_pool2d(
    geometry: &Pool2dGeometry,
    input: &[f32],
    output: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let out_size = check_buffers(geometry, input, output)?;
    let layout = PaddedLayout::new(geometry, out_size);
    let reduce_plane: PlaneLoop = plane_loop::<Maximum>(geometry);
    let pool_plane = |_: usize, in_plane: &[f32], out_plane: &mut [f32]| {
        reduce_plane(geometry, in_plane, layout.size[1], out_plane, out_size[1]);
    };
    for_each_plane(
        &layout,
        Maximum::IDENTITY,
        input,
        output,
        threads,
        &pool_plane,
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
    let layout = PaddedLayout::new(geometry, out_size);
    let divisors = average_divisors(geometry, out_size, count_include_pad, divisor_override);
    let reduce_plane: PlaneLoop = plane_loop::<Sum>(geometry);
    let pool_plane = |_: usize, in_plane: &[f32], out_plane: &mut [f32]| {
        reduce_plane(geometry, in_plane, layout.size[1], out_plane, out_size[1]);
        for (average, divisor) in out_plane.iter_mut().zip(&divisors) {
            *average /= divisor;
        }
    };
    for_each_plane(&layout, Sum::IDENTITY, input, output, threads, &pool_plane);
    Ok(())
}

/// The planes the windows read: the input planes themselves when every window lies inside the
/// input, otherwise copies with a border wide enough for every window.
pub(crate) struct PaddedLayout {
    /// `[rows, columns]` of the planes the windows read; window `(oy, ox)` starts at row
    /// `oy * stride[0]` and column `ox * stride[1]` of them.
    pub(crate) size: [usize; 2],
    /// Where the input starts in a padded plane (the padding before it).
    offset: [usize; 2],
    in_size: [usize; 2],
    planes: usize,
    out_plane_len: usize,
}

impl PaddedLayout {
    pub(crate) fn new(geometry: &Pool2dGeometry, out_size: [usize; 2]) -> Self {
        let size = [0, 1].map(|axis| {
            let windows_end =
                out_size[axis].saturating_sub(1) * geometry.stride[axis] + geometry.extent(axis);
            windows_end.max(geometry.padding[axis] + geometry.in_size[axis])
        });
        PaddedLayout {
            size,
            offset: geometry.padding,
            in_size: geometry.in_size,
            planes: geometry.batch * geometry.channels,
            out_plane_len: out_size[0] * out_size[1],
        }
    }

    /// False when the windows read the input planes in place.
    fn copies(&self) -> bool {
        self.size != self.in_size
    }
}

/// What [`for_each_plane`] runs for every plane: `(plane index, plane to read, output plane)`.
pub(crate) type PlaneTask<'a> = dyn Fn(usize, &[f32], &mut [f32]) + Sync + 'a;

/// Runs `pool_plane(plane index, plane to read, output plane)` for every (image, channel),
/// planes split across threads. The plane to read has `layout.size`; when it is a padded copy,
/// its border holds `border_value`.
pub(crate) fn for_each_plane(
    layout: &PaddedLayout,
    border_value: f32,
    input: &[f32],
    output: &mut [f32],
    threads: usize,
    pool_plane: &PlaneTask<'_>,
) {
    let (planes, out_plane_len) = (layout.planes, layout.out_plane_len);
    let in_plane_len = layout.in_size[0] * layout.in_size[1];
    assert!(
        input.len() == planes * in_plane_len && output.len() == planes * out_plane_len,
        "internal error (a bug in nnc): pooling buffers that do not match their geometry"
    );
    if out_plane_len == 0 {
        return;
    }
    let output_data = SharedMutPtr(output.as_mut_ptr());
    let threads = crate::kernels::gemm::resolve_threads(threads);
    // A plane of a few dozen outputs is not worth waking a thread for.
    let parts = threads.min(planes * out_plane_len / 4096).max(1);
    run_parallel(parts, &|part| {
        // Each part fills its padded plane's border once; copies overwrite only the inside.
        let mut padded = if layout.copies() {
            vec![border_value; layout.size[0] * layout.size[1]]
        } else {
            Vec::new()
        };
        for plane in part_range(planes, parts, part) {
            // SAFETY: each part writes only its own planes of the checked output buffer.
            let out_plane = unsafe {
                std::slice::from_raw_parts_mut(
                    output_data.get().add(plane * out_plane_len),
                    out_plane_len,
                )
            };
            let in_plane = &input[plane * in_plane_len..(plane + 1) * in_plane_len];
            if !layout.copies() {
                pool_plane(plane, in_plane, out_plane);
                continue;
            }
            let [top, left] = layout.offset;
            let in_width = layout.in_size[1];
            // An input of width 0 (a valid geometry when padding alone fits the window) has
            // nothing to copy.
            for (row, values) in in_plane.chunks_exact(in_width.max(1)).enumerate() {
                let start = (top + row) * layout.size[1] + left;
                padded[start..start + in_width].copy_from_slice(values);
            }
            pool_plane(plane, &padded, out_plane);
        }
    });
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

/// Every output position's divisor, `[oh * ow]` row-major: the override, or the window's size
/// clipped to the padded input (`count_include_pad`) or to the input, as PyTorch counts them.
/// Every window of a valid geometry has a tap inside the input; the divisor is kept at least 1
/// anyway, so a window without one would give PyTorch's 0 rather than 0 / 0.
fn average_divisors(
    geometry: &Pool2dGeometry,
    out_size: [usize; 2],
    count_include_pad: bool,
    divisor_override: Option<usize>,
) -> Vec<f32> {
    let counts = [0, 1].map(|axis| {
        let (input, padding) = (
            geometry.in_size[axis] as isize,
            geometry.padding[axis] as isize,
        );
        (0..out_size[axis])
            .map(|out| {
                let start = (out * geometry.stride[axis]) as isize - padding;
                let end = (start + geometry.kernel[axis] as isize).min(input + padding);
                if count_include_pad {
                    (end - start) as usize
                } else {
                    (end.min(input) - start.max(0)).max(0) as usize
                }
            })
            .collect::<Vec<usize>>()
    });
    counts[0]
        .iter()
        .flat_map(|&rows| counts[1].iter().map(move |&columns| rows * columns))
        .map(|count| divisor_override.unwrap_or(count).max(1) as f32)
        .collect()
}
