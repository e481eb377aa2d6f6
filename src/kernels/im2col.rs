//! col2im: the scatter-add that turns a transposed convolution's GEMM output into images, and
//! the window geometry it shares with the direct (depthwise) convolution loops. Convolutions
//! themselves read their column matrix in place through offset tables (`conv.rs`).
//!
//! A convolution window relates an *image* (the convolution's input, or a transposed
//! convolution's output) to a *grid* of window positions (the convolution's output, or the
//! transposed convolution's input): grid position `o` with kernel tap `t` touches image position
//! `o * stride + t * dilation - padding` along each axis, when that lies inside the image.
//!
//! The column matrix has one row per (channel, tap row, tap column) and one column per (image in
//! the chunk, grid position), row-major, as the GEMM writes it.

use std::ops::Range;

use super::parallel::{part_range, run_parallel, SharedMutPtr};

/// The geometry shared by im2col and col2im, along [height, width].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvWindow {
    pub image_size: [usize; 2],
    pub grid_size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl ConvWindow {
    fn grid_len(&self) -> usize {
        self.grid_size[0] * self.grid_size[1]
    }

    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// The grid positions along `axis` whose image position for tap `tap` is inside the image,
    /// and the image position of grid position 0 (possibly negative).
    fn valid_grid_range(&self, axis: usize, tap: usize) -> (Range<usize>, isize) {
        let offset = (tap * self.dilation[axis]) as isize - self.padding[axis] as isize;
        let stride = self.stride[axis];
        let first = if offset >= 0 {
            0
        } else {
            offset.unsigned_abs().div_ceil(stride)
        };
        let last_image = self.image_size[axis] as isize - 1 - offset;
        let end = if last_image < 0 {
            0
        } else {
            last_image as usize / stride + 1
        };
        let grid_len = self.grid_size[axis];
        (
            first.min(grid_len)..end.min(grid_len).max(first.min(grid_len)),
            offset,
        )
    }

    /// `grid_plane[o] += tap_weight * image_plane[position of o for this tap]` over the grid
    /// positions whose window tap falls inside the image (a depthwise convolution's inner loop).
    pub(crate) fn add_tap_products(
        &self,
        image_plane: &[f32],
        (tap_row, tap_col): (usize, usize),
        tap_weight: f32,
        grid_plane: &mut [f32],
    ) {
        let (valid_rows, row_offset) = self.valid_grid_range(0, tap_row);
        let (valid_cols, col_offset) = self.valid_grid_range(1, tap_col);
        if valid_cols.is_empty() {
            return;
        }
        let (image_width, stride_col) = (self.image_size[1], self.stride[1]);
        for grid_row in valid_rows {
            let image_row = ((grid_row * self.stride[0]) as isize + row_offset) as usize;
            let first_image_col = ((valid_cols.start * stride_col) as isize + col_offset) as usize;
            let image_start = image_row * image_width + first_image_col;
            let targets = &mut grid_plane[grid_row * self.grid_size[1]..][valid_cols.clone()];
            if stride_col == 1 {
                let sources = &image_plane[image_start..image_start + targets.len()];
                for (target, &source) in targets.iter_mut().zip(sources) {
                    *target += tap_weight * source;
                }
            } else {
                for (index, target) in targets.iter_mut().enumerate() {
                    *target += tap_weight * image_plane[image_start + index * stride_col];
                }
            }
        }
    }
}

/// Adds `columns` (`channels * taps` rows of `images * grid_len`) into `images` images of
/// `channels` channels starting at `image_data`, consecutive images `image_stride` apart. Threads
/// take whole image planes, and every plane adds its taps in the same order, so the result does
/// not depend on the thread count.
///
/// # Safety
/// `image_data` addresses every element of those images and `columns` the whole column matrix;
/// the two do not overlap.
pub(crate) unsafe fn col2im_add(
    window: &ConvWindow,
    columns: *const f32,
    (channels, images): (usize, usize),
    image_data: *mut f32,
    image_stride: usize,
    threads: usize,
) {
    let planes = channels * images;
    let row_len = images * window.grid_len();
    let columns = columns as usize;
    let image_data = SharedMutPtr(image_data);
    let parts = threads.min(planes).max(1);
    run_parallel(parts, &|part| {
        for plane_index in part_range(planes, parts, part) {
            let (image, channel) = (plane_index / channels, plane_index % channels);
            let plane_start =
                image * image_stride + channel * window.image_size[0] * window.image_size[1];
            let plane = unsafe { image_data.get().add(plane_start) };
            for tap in 0..window.taps() {
                let row = channel * window.taps() + tap;
                let source = unsafe {
                    (columns as *const f32).add(row * row_len + image * window.grid_len())
                };
                unsafe {
                    add_column_row(
                        window,
                        source,
                        (tap / window.kernel[1], tap % window.kernel[1]),
                        plane,
                    )
                };
            }
        }
    });
}

/// The adjoint of `fill_column_row`: adds one tap's values back to the image positions they
/// came from.
unsafe fn add_column_row(
    window: &ConvWindow,
    source: *const f32,
    (tap_row, tap_col): (usize, usize),
    plane: *mut f32,
) {
    let grid_width = window.grid_size[1];
    let image_width = window.image_size[1];
    let (valid_rows, row_offset) = window.valid_grid_range(0, tap_row);
    let (valid_cols, col_offset) = window.valid_grid_range(1, tap_col);
    let stride_col = window.stride[1];
    for grid_row in valid_rows {
        let image_row = (grid_row * window.stride[0]) as isize + row_offset;
        let first_image_col = (valid_cols.start * stride_col) as isize + col_offset;
        let target = unsafe { plane.offset(image_row * image_width as isize + first_image_col) };
        let source_row = unsafe { source.add(grid_row * grid_width + valid_cols.start) };
        for index in 0..valid_cols.len() {
            unsafe { *target.add(index * stride_col) += *source_row.add(index) };
        }
    }
}
