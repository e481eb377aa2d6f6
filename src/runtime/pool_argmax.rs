//! The runtime's `max_pool2d_argmax`: for every max-pooling window, the flat index into the
//! whole input of its first maximal tap, as a float-coded integer (int64 tensors travel as f32
//! at run time, exact below 2^24). Split across threads by whole output planes; every plane is
//! computed by one thread alone, so the result does not depend on the thread count.
//!
//! Like max pooling itself (`kernels/pool.rs`), windows that reach past the input read a copy of
//! the plane padded with -inf, which never replaces a maximum, so every window is a plain
//! fixed-size window; the loops for 2x2 and 3x3 kernels have their sizes fixed at compile time and
//! reduce eight neighbouring windows at once, which vectorizes. Each window's index starts at its
//! first tap inside the input, so a window whose taps are all -inf picks that tap, and padding
//! never wins.

use super::RuntimeError;
use crate::kernels::pool::{for_each_plane, PaddedLayout, Pool2dGeometry};
use crate::prim::Pool2dParams;

/// Fills `output` (`[N, C, OH, OW]`) from `input` (`[N, C, H, W]`) on up to `threads` threads.
pub fn max_pool2d_argmax(
    params: &Pool2dParams,
    input: &[f32],
    input_shape: &[usize],
    output: &mut [f32],
    output_shape: &[usize],
    threads: usize,
) -> Result<(), RuntimeError> {
    if input.len() > 1 << 24 {
        return Err(RuntimeError::internal(
            "max-pool indices beyond 2^24 are not exact in f32 (the gradient splits the batch)",
        ));
    }
    let geometry = Pool2dGeometry {
        batch: input_shape[0],
        channels: input_shape[1],
        in_size: [input_shape[2], input_shape[3]],
        kernel: params.kernel,
        stride: params.stride,
        padding: params.padding,
        dilation: params.dilation,
        ceil_mode: params.ceil_mode,
    };
    let out_size = geometry.out_size()?;
    let lengths_match = geometry.tensor_lens()? == [input.len(), output.len()];
    if out_size != [output_shape[2], output_shape[3]] || !lengths_match {
        return Err(RuntimeError::internal(
            "max_pool2d_argmax buffers do not match the pooling geometry",
        ));
    }
    let layout = PaddedLayout::new(&geometry, out_size);
    let windows = ArgmaxWindows {
        geometry: &geometry,
        plane_width: layout.size[1],
        out_width: out_size[1],
        first_taps_inside: first_taps_inside(&geometry, out_size),
    };
    let reduce_plane = windows.plane_loop();
    let in_plane_len = geometry.in_size[0] * geometry.in_size[1];
    let pool_plane = |plane: usize, in_plane: &[f32], out_plane: &mut [f32]| {
        // Below 2^24, so the plane's offset and every index fit an i32 and an f32 exactly.
        reduce_plane(&windows, (plane * in_plane_len) as i32, in_plane, out_plane);
    };
    for_each_plane(
        &layout,
        f32::NEG_INFINITY,
        input,
        output,
        threads,
        &pool_plane,
    );
    Ok(())
}

/// What every plane's windows share: the geometry, the width of the plane they read and of the
/// output, and each window's first tap inside the input (its index within the plane).
struct ArgmaxWindows<'a> {
    geometry: &'a Pool2dGeometry,
    plane_width: usize,
    out_width: usize,
    first_taps_inside: Vec<i32>,
}

/// Writes one plane's indices: `(windows, the plane's offset in the input, plane to read,
/// output plane)`.
type ArgmaxPlaneLoop = fn(&ArgmaxWindows, i32, &[f32], &mut [f32]);

impl ArgmaxWindows<'_> {
    /// The fastest loop for the geometry's kernel, column stride and dilation.
    fn plane_loop(&self) -> ArgmaxPlaneLoop {
        if self.geometry.dilation != [1, 1] {
            return argmax_any_windows;
        }
        match (self.geometry.kernel, self.geometry.stride[1]) {
            ([2, 2], 2) => argmax_windows::<2, 2, 2>,
            ([2, 2], 1) => argmax_windows::<2, 2, 1>,
            ([3, 3], 2) => argmax_windows::<3, 3, 2>,
            ([3, 3], 1) => argmax_windows::<3, 3, 1>,
            _ => argmax_any_windows,
        }
    }

    /// The index within the input plane of the tap at `[row, column]` of the plane read (which
    /// is negative or past the row for padding, where it never wins).
    fn input_index(&self, [row, column]: [usize; 2]) -> i32 {
        let [top, left] = self.geometry.padding;
        let in_width = self.geometry.in_size[1] as i32;
        (row as i32 - top as i32) * in_width + column as i32 - left as i32
    }
}

/// How many neighbouring windows [`argmax_windows`] handles together, as fixed-size arrays the
/// compiler turns into vector operations (as in `kernels/pool/windows.rs`).
const BLOCK_WINDOWS: usize = 8;

/// Windows of `KERNEL_ROWS x KERNEL_COLUMNS` taps, `COLUMN_STRIDE` apart, without dilation.
fn argmax_windows<
    const KERNEL_ROWS: usize,
    const KERNEL_COLUMNS: usize,
    const COLUMN_STRIDE: usize,
>(
    windows: &ArgmaxWindows,
    plane_offset: i32,
    plane: &[f32],
    out_plane: &mut [f32],
) {
    let out_width = windows.out_width;
    let Some(last_column) = out_width.checked_sub(1) else {
        return;
    };
    let span = last_column * COLUMN_STRIDE + KERNEL_COLUMNS;
    for (out_row_index, out_row) in out_plane.chunks_exact_mut(out_width).enumerate() {
        let first_row = out_row_index * windows.geometry.stride[0];
        let rows: [&[f32]; KERNEL_ROWS] = std::array::from_fn(|tap_row| {
            let start = (first_row + tap_row) * windows.plane_width;
            &plane[start..start + span]
        });
        let row_indices: [i32; KERNEL_ROWS] =
            std::array::from_fn(|tap_row| windows.input_index([first_row + tap_row, 0]));
        let first_taps = &windows.first_taps_inside[out_row_index * out_width..][..out_width];
        if out_width < BLOCK_WINDOWS {
            for (column, target) in out_row.iter_mut().enumerate() {
                let [index] = argmax_block::<KERNEL_ROWS, KERNEL_COLUMNS, COLUMN_STRIDE, 1>(
                    &rows,
                    row_indices,
                    column,
                    [first_taps[column]],
                );
                *target = (plane_offset + index) as f32;
            }
            continue;
        }
        // Blocks from the left; the last one ends at the row's end and may overlap the one
        // before it, whose overlapping windows it computes again with the same result.
        for block_start in (0..out_width).step_by(BLOCK_WINDOWS) {
            let first_column = block_start.min(out_width - BLOCK_WINDOWS);
            let columns = first_column..first_column + BLOCK_WINDOWS;
            let indices = argmax_block::<KERNEL_ROWS, KERNEL_COLUMNS, COLUMN_STRIDE, BLOCK_WINDOWS>(
                &rows,
                row_indices,
                first_column,
                first_taps[columns.clone()]
                    .try_into()
                    .expect("a block of first taps"),
            );
            for (target, index) in out_row[columns].iter_mut().zip(indices) {
                *target = (plane_offset + index) as f32;
            }
        }
    }
}

/// The maxima's indices of the `BLOCK` windows starting at columns `first_column *
/// COLUMN_STRIDE`, ... of `rows`, whose tap rows start at input indices `row_indices`; each
/// window's index starts at its first tap inside the input.
#[inline(always)]
fn argmax_block<
    const KERNEL_ROWS: usize,
    const KERNEL_COLUMNS: usize,
    const COLUMN_STRIDE: usize,
    const BLOCK: usize,
>(
    rows: &[&[f32]; KERNEL_ROWS],
    row_indices: [i32; KERNEL_ROWS],
    first_column: usize,
    first_taps: [i32; BLOCK],
) -> [i32; BLOCK] {
    let block_end = (first_column + BLOCK - 1) * COLUMN_STRIDE + KERNEL_COLUMNS;
    assert!(
        rows.iter().all(|row| row.len() >= block_end),
        "a block past its rows"
    );
    let mut maxima = [f32::NEG_INFINITY; BLOCK];
    let mut indices = first_taps;
    for (row, row_index) in rows.iter().zip(row_indices) {
        for tap_column in 0..KERNEL_COLUMNS {
            for lane in 0..BLOCK {
                let column = (first_column + lane) * COLUMN_STRIDE + tap_column;
                // SAFETY: the column is below `block_end`, which the assert keeps within the
                // row. (Checked indexing keeps the strided loads from vectorizing.)
                let value = unsafe { *row.get_unchecked(column) };
                // PyTorch's rule: a larger value or a NaN replaces the maximum.
                if value > maxima[lane] || value.is_nan() {
                    maxima[lane] = value;
                    indices[lane] = row_index + column as i32;
                }
            }
        }
    }
    indices
}

/// Windows of any size, stride and dilation, taken from the geometry at run time.
fn argmax_any_windows(
    windows: &ArgmaxWindows,
    plane_offset: i32,
    plane: &[f32],
    out_plane: &mut [f32],
) {
    let geometry = windows.geometry;
    for (index, target) in out_plane.iter_mut().enumerate() {
        let first_tap = [
            index / windows.out_width * geometry.stride[0],
            index % windows.out_width * geometry.stride[1],
        ];
        let (mut maximum, mut best) = (f32::NEG_INFINITY, windows.first_taps_inside[index]);
        for tap_row in 0..geometry.kernel[0] {
            let row = first_tap[0] + tap_row * geometry.dilation[0];
            for tap_column in 0..geometry.kernel[1] {
                let column = first_tap[1] + tap_column * geometry.dilation[1];
                let value = plane[row * windows.plane_width + column];
                // PyTorch's rule: a larger value or a NaN replaces the maximum.
                if value > maximum || value.is_nan() {
                    maximum = value;
                    best = windows.input_index([row, column]);
                }
            }
        }
        *target = (plane_offset + best) as f32;
    }
}

/// Every window's first tap inside the input in row-major window order, as an index within the
/// input plane (`[oh * ow]` row-major); 0 for a window with no tap inside (possible with
/// dilation, where all taps can fall in the padding).
fn first_taps_inside(geometry: &Pool2dGeometry, out_size: [usize; 2]) -> Vec<i32> {
    let first_positions = [0, 1].map(|axis| {
        let (input, padding) = (geometry.in_size[axis], geometry.padding[axis]);
        (0..out_size[axis])
            .map(|out| {
                let start = out * geometry.stride[axis];
                (0..geometry.kernel[axis])
                    .map(|tap| start + tap * geometry.dilation[axis])
                    .find(|&position| position >= padding && position < padding + input)
                    .map(|position| position - padding)
            })
            .collect::<Vec<Option<usize>>>()
    });
    let in_width = geometry.in_size[1];
    first_positions[0]
        .iter()
        .flat_map(|row| {
            first_positions[1]
                .iter()
                .map(move |column| match (row, column) {
                    (Some(row), Some(column)) => (row * in_width + column) as i32,
                    _ => 0,
                })
        })
        .collect()
}
