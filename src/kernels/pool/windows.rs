//! The loops that reduce every window of an output plane, reading a plane that holds every
//! window whole (the input, or a padded copy of it; see `PaddedLayout`). Without clipping, a
//! window's taps sit at fixed offsets from its first tap; for the kernel sizes networks use
//! (2x2 and 3x3, column stride 1 or 2, no dilation) those offsets are compile-time constants, so
//! the taps unroll and blocks of neighbouring windows vectorize, and pooling is bound by memory
//! rather than by per-window bookkeeping. Other sizes take a loop with run-time offsets.

use super::Pool2dGeometry;

/// How a pooling combines a window's taps, in row-major window order.
pub(super) trait WindowReduction {
    /// The accumulator before the first tap, and what a padded plane's border holds: combining
    /// it leaves any accumulator the reduction can reach unchanged, bit for bit.
    const IDENTITY: f32;

    /// The accumulator after one more tap.
    fn combine(accumulator: f32, value: f32) -> f32;
}

/// Max pooling's rule, PyTorch's: a tap replaces the maximum when it is larger or NaN, so the
/// result is NaN when any tap is. A -inf tap never replaces anything.
pub(super) struct Maximum;

impl WindowReduction for Maximum {
    const IDENTITY: f32 = f32::NEG_INFINITY;

    #[inline(always)]
    fn combine(maximum: f32, value: f32) -> f32 {
        if value > maximum || value.is_nan() {
            value
        } else {
            maximum
        }
    }
}

/// Average pooling's sum, before the division. A sum that starts at +0 is never -0 (x + y is -0
/// only when both are), so adding a +0 tap changes no bit of it.
pub(super) struct Sum;

impl WindowReduction for Sum {
    const IDENTITY: f32 = 0.0;

    #[inline(always)]
    fn combine(sum: f32, value: f32) -> f32 {
        sum + value
    }
}

/// Reduces every window of one output plane: `(geometry, plane to read, its width, output
/// plane, output width)`. Window `(oy, ox)` starts at row `oy * stride[0]` and column
/// `ox * stride[1]` of the plane it reads.
pub(super) type PlaneLoop = fn(&Pool2dGeometry, &[f32], usize, &mut [f32], usize);

/// The fastest loop for the geometry's kernel, column stride and dilation.
pub(super) fn plane_loop<R: WindowReduction>(geometry: &Pool2dGeometry) -> PlaneLoop {
    if geometry.dilation != [1, 1] {
        return reduce_any_windows::<R>;
    }
    match (geometry.kernel, geometry.stride[1]) {
        ([2, 2], 2) => reduce_windows::<R, 2, 2, 2>,
        ([2, 2], 1) => reduce_windows::<R, 2, 2, 1>,
        ([3, 3], 2) => reduce_windows::<R, 3, 3, 2>,
        ([3, 3], 1) => reduce_windows::<R, 3, 3, 1>,
        _ => reduce_any_windows::<R>,
    }
}

/// How many neighbouring windows [`reduce_windows`] reduces together, as fixed-size arrays the
/// compiler turns into vector operations. (Its loop vectorizer leaves rows of fewer than about
/// 16 windows, as in small feature maps, to scalar code, which is 3-4 times slower per window.)
const BLOCK_WINDOWS: usize = 8;

/// Windows of `KERNEL_ROWS x KERNEL_COLUMNS` taps, `COLUMN_STRIDE` apart, without dilation.
fn reduce_windows<
    R: WindowReduction,
    const KERNEL_ROWS: usize,
    const KERNEL_COLUMNS: usize,
    const COLUMN_STRIDE: usize,
>(
    geometry: &Pool2dGeometry,
    plane: &[f32],
    plane_width: usize,
    out_plane: &mut [f32],
    out_width: usize,
) {
    let Some(last_column) = out_width.checked_sub(1) else {
        return;
    };
    // The columns one row of windows covers; every row is cut to exactly this span.
    let span = last_column * COLUMN_STRIDE + KERNEL_COLUMNS;
    for (out_row_index, out_row) in out_plane.chunks_exact_mut(out_width).enumerate() {
        let first_row = out_row_index * geometry.stride[0];
        let rows: [&[f32]; KERNEL_ROWS] = std::array::from_fn(|tap_row| {
            let start = (first_row + tap_row) * plane_width;
            &plane[start..start + span]
        });
        if out_width < BLOCK_WINDOWS {
            for (column, target) in out_row.iter_mut().enumerate() {
                let [value] =
                    reduce_block::<R, KERNEL_ROWS, KERNEL_COLUMNS, COLUMN_STRIDE, 1>(&rows, column);
                *target = value;
            }
            continue;
        }
        // Blocks from the left; the last one ends at the row's end and may overlap the one
        // before it, whose overlapping windows it computes again with the same result.
        for block_start in (0..out_width).step_by(BLOCK_WINDOWS) {
            let first_column = block_start.min(out_width - BLOCK_WINDOWS);
            let block = reduce_block::<R, KERNEL_ROWS, KERNEL_COLUMNS, COLUMN_STRIDE, BLOCK_WINDOWS>(
                &rows,
                first_column,
            );
            out_row[first_column..first_column + BLOCK_WINDOWS].copy_from_slice(&block);
        }
    }
}

/// The windows starting at columns `first_column * COLUMN_STRIDE`, `(first_column + 1) *
/// COLUMN_STRIDE`, ... of `rows`, `BLOCK` of them, each reduced tap by tap in row-major order.
#[inline(always)]
fn reduce_block<
    R: WindowReduction,
    const KERNEL_ROWS: usize,
    const KERNEL_COLUMNS: usize,
    const COLUMN_STRIDE: usize,
    const BLOCK: usize,
>(
    rows: &[&[f32]; KERNEL_ROWS],
    first_column: usize,
) -> [f32; BLOCK] {
    let block_end = (first_column + BLOCK - 1) * COLUMN_STRIDE + KERNEL_COLUMNS;
    assert!(
        rows.iter().all(|row| row.len() >= block_end),
        "a block past its rows"
    );
    let mut accumulators = [R::IDENTITY; BLOCK];
    for row in rows {
        for tap_column in 0..KERNEL_COLUMNS {
            for (lane, accumulator) in accumulators.iter_mut().enumerate() {
                let position = (first_column + lane) * COLUMN_STRIDE + tap_column;
                // SAFETY: the position is below `block_end`, which the assert keeps within the
                // row. (Checked indexing keeps the strided loads from vectorizing.)
                let value = unsafe { *row.get_unchecked(position) };
                *accumulator = R::combine(*accumulator, value);
            }
        }
    }
    accumulators
}

/// Windows of any size, stride and dilation, taken from the geometry at run time.
fn reduce_any_windows<R: WindowReduction>(
    geometry: &Pool2dGeometry,
    plane: &[f32],
    plane_width: usize,
    out_plane: &mut [f32],
    out_width: usize,
) {
    let [kernel_rows, kernel_columns] = geometry.kernel;
    let [row_step, column_step] = [geometry.dilation[0] * plane_width, geometry.dilation[1]];
    for (out_row_index, out_row) in out_plane.chunks_exact_mut(out_width).enumerate() {
        let row_start = out_row_index * geometry.stride[0] * plane_width;
        for (index, target) in out_row.iter_mut().enumerate() {
            let window_start = row_start + index * geometry.stride[1];
            let mut accumulator = R::IDENTITY;
            for tap_row in 0..kernel_rows {
                let tap_row_start = window_start + tap_row * row_step;
                for tap_column in 0..kernel_columns {
                    let value = plane[tap_row_start + tap_column * column_step];
                    accumulator = R::combine(accumulator, value);
                }
            }
            *target = accumulator;
        }
    }
}
