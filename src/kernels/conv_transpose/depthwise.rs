//! Depthwise transposed convolutions (one input and one output channel per group) by direct
//! loops over planes, without the GEMM and col2im of the general path. The gradient of average
//! pooling is one (a transposed convolution by ones, one group per channel), and there the
//! general path runs one-row GEMMs into a column matrix of `k * k` values per input value only
//! to add them back with col2im.
//!
//! Each output plane starts at its bias (or 0) and receives the products `weight * input` in tap
//! order (row-major), as col2im adds them, so an output element is the same sum either way.
//! When the stride equals the kernel, without dilation, the windows do not overlap: each output
//! element receives at most one product, so it is written once, as `bias + weight * input`.

use super::ConvTranspose2dGeometry;
use crate::kernels::parallel::{part_range, run_parallel, SharedMutPtr};

/// Whether `geometry` has one input and one output channel per group.
pub(super) fn is_depthwise(geometry: &ConvTranspose2dGeometry) -> bool {
    geometry.groups == geometry.in_channels && geometry.groups == geometry.out_channels
}

/// A depthwise transposed convolution on up to `threads` threads (already resolved), planes
/// split across them. The caller has checked every buffer (and the bias) against the geometry.
pub(super) fn conv_transpose2d_depthwise(
    geometry: &ConvTranspose2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    threads: usize,
) {
    let channels = geometry.out_channels;
    let planes = geometry.batch * channels;
    let in_plane_len = geometry.in_size[0] * geometry.in_size[1];
    let out_plane_len = geometry.out_size[0] * geometry.out_size[1];
    let taps = geometry.kernel[0] * geometry.kernel[1];
    assert!(
        input.len() == planes * in_plane_len
            && weight.len() == channels * taps
            && output.len() == planes * out_plane_len,
        "internal error (a bug in nnc): depthwise buffers that do not match their geometry"
    );
    let windows_may_overlap = geometry.stride != geometry.kernel || geometry.dilation != [1, 1];
    let columns = ColumnSpread::new(geometry);
    let output_data = SharedMutPtr(output.as_mut_ptr());
    // A plane of a few dozen outputs is not worth waking a thread for.
    let parts = threads.min(planes * out_plane_len / 4096).max(1);
    run_parallel(parts, &|part| {
        for plane in part_range(planes, parts, part) {
            let channel = plane % channels;
            let fill = bias.map_or(0.0, |bias| bias[channel]);
            let kernel = &weight[channel * taps..(channel + 1) * taps];
            let in_plane = &input[plane * in_plane_len..(plane + 1) * in_plane_len];
            // SAFETY: each part writes only its own planes of the checked output buffer.
            let out_plane = unsafe {
                std::slice::from_raw_parts_mut(
                    output_data.get().add(plane * out_plane_len),
                    out_plane_len,
                )
            };
            if windows_may_overlap {
                scatter_plane(geometry, in_plane, kernel, fill, out_plane);
            } else {
                spread_plane(geometry, &columns, in_plane, kernel, fill, out_plane);
            }
        }
    });
}

/// Windows that may overlap: the plane starts at `fill`, then every tap adds its products to the
/// output positions it reaches, one tap after another.
fn scatter_plane(
    geometry: &ConvTranspose2dGeometry,
    in_plane: &[f32],
    kernel: &[f32],
    fill: f32,
    out_plane: &mut [f32],
) {
    out_plane.fill(fill);
    let [in_width, out_width] = [geometry.in_size[1], geometry.out_size[1]];
    let column_stride = geometry.stride[1];
    for tap_row in 0..geometry.kernel[0] {
        let (rows, first_out_row) = reached_positions(geometry, 0, tap_row);
        for tap_column in 0..geometry.kernel[1] {
            let tap_weight = kernel[tap_row * geometry.kernel[1] + tap_column];
            let (columns, first_out_column) = reached_positions(geometry, 1, tap_column);
            if columns.is_empty() {
                continue;
            }
            for (row_index, in_row) in rows.clone().enumerate() {
                let out_row = first_out_row + row_index * geometry.stride[0];
                let values = &in_plane[in_row * in_width..][columns.clone()];
                let targets = &mut out_plane[out_row * out_width..(out_row + 1) * out_width];
                let targets = &mut targets[first_out_column..];
                if column_stride == 1 {
                    for (target, &value) in targets.iter_mut().zip(values) {
                        *target += tap_weight * value;
                    }
                } else {
                    for (target, &value) in targets.iter_mut().step_by(column_stride).zip(values) {
                        *target += tap_weight * value;
                    }
                }
            }
        }
    }
}

/// The input positions along `axis` whose product with tap `tap` lands inside the output, and
/// the output position the first of them lands on (when there is one). Input position `i` lands on
/// `i * stride + tap * dilation - padding`.
fn reached_positions(
    geometry: &ConvTranspose2dGeometry,
    axis: usize,
    tap: usize,
) -> (std::ops::Range<usize>, usize) {
    let stride = geometry.stride[axis];
    let offset = (tap * geometry.dilation[axis]) as isize - geometry.padding[axis] as isize;
    let first = if offset >= 0 {
        0
    } else {
        offset.unsigned_abs().div_ceil(stride)
    };
    let last_out = geometry.out_size[axis] as isize - 1 - offset;
    let end = if last_out < 0 {
        0
    } else {
        (last_out as usize / stride + 1).min(geometry.in_size[axis])
    };
    let first = first.min(end);
    // Meaningful only when the range is not empty (it is then at least 0).
    let first_out = ((first * stride) as isize + offset).max(0) as usize;
    (first..end, first_out)
}

/// Windows that do not overlap (stride equals kernel, no dilation): output row `y` is kernel row
/// `(y + padding) % k` times input row `(y + padding) / k`, and likewise for columns; output
/// positions past the last window hold `fill`. Rows are walked with running counters, and the
/// column split is worked out once per call, because divisions cost more than a short row's
/// arithmetic.
fn spread_plane(
    geometry: &ConvTranspose2dGeometry,
    columns: &ColumnSpread,
    in_plane: &[f32],
    kernel: &[f32],
    fill: f32,
    out_plane: &mut [f32],
) {
    let [in_height, in_width] = geometry.in_size;
    let [kernel_rows, kernel_columns] = geometry.kernel;
    let padding = geometry.padding[0];
    let (mut in_row, mut tap_row) = (padding / kernel_rows, padding % kernel_rows);
    for targets in out_plane.chunks_exact_mut(geometry.out_size[1]) {
        if in_row >= in_height {
            targets.fill(fill);
            continue;
        }
        columns.spread_row(
            &in_plane[in_row * in_width..(in_row + 1) * in_width],
            &kernel[tap_row * kernel_columns..(tap_row + 1) * kernel_columns],
            fill,
            targets,
        );
        tap_row += 1;
        if tap_row == kernel_rows {
            (in_row, tap_row) = (in_row + 1, 0);
        }
    }
}

/// How every output row of [`spread_plane`] splits into columns: `targets[x] = fill +
/// taps[(x + padding) % k] * values[(x + padding) / k]` where that input exists, `fill` past it.
struct ColumnSpread {
    kernel: usize,
    /// The input whose window the padding cuts into (or the first whole one), and the first of
    /// its taps that lands in the output.
    first_value: usize,
    first_tap: usize,
    /// Output columns of the cut window (0 when the padding cuts none).
    cut_len: usize,
    /// Output columns some input reaches.
    covered: usize,
}

impl ColumnSpread {
    fn new(geometry: &ConvTranspose2dGeometry) -> Self {
        let (kernel, padding) = (geometry.kernel[1], geometry.padding[1]);
        let covered = (geometry.in_size[1] * kernel)
            .saturating_sub(padding)
            .min(geometry.out_size[1]);
        let first_tap = padding % kernel;
        ColumnSpread {
            kernel,
            first_value: padding / kernel,
            first_tap,
            cut_len: ((kernel - first_tap) % kernel).min(covered),
            covered,
        }
    }

    fn spread_row(&self, values: &[f32], taps: &[f32], fill: f32, targets: &mut [f32]) {
        let (targets, uncovered) = targets.split_at_mut(self.covered);
        uncovered.fill(fill);
        if self.covered == 0 {
            return;
        }
        let (cut_window, targets) = targets.split_at_mut(self.cut_len);
        for (target, &tap) in cut_window.iter_mut().zip(&taps[self.first_tap..]) {
            *target = fill + tap * values[self.first_value];
        }
        // Whole windows follow, from the input after the cut one. (Some output is covered, so
        // `values.len() * k > padding`, and that input index is at most `values.len()`.)
        let values = &values[self.first_value + usize::from(self.first_tap != 0)..];
        if let Ok(&pair) = <&[f32; 2]>::try_from(taps) {
            spread_windows_of_two(values, pair, fill, targets);
        } else {
            for (window, &value) in targets.chunks_mut(self.kernel).zip(values) {
                for (target, &tap) in window.iter_mut().zip(taps) {
                    *target = fill + tap * value;
                }
            }
        }
    }
}

/// [`ColumnSpread::spread_row`]'s whole windows for a kernel of width 2 (average pooling by 2, by far the most
/// common), with the window width known at compile time so the loop vectorizes.
fn spread_windows_of_two(values: &[f32], taps: [f32; 2], fill: f32, targets: &mut [f32]) {
    let (windows, cut) = targets.as_chunks_mut::<2>();
    for (window, &value) in windows.iter_mut().zip(values) {
        *window = [fill + taps[0] * value, fill + taps[1] * value];
    }
    if let [target] = cut {
        *target = fill + taps[0] * values[windows.len()];
    }
}
