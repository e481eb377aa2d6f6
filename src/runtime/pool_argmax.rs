//! The runtime's `max_pool2d_argmax`: for every max-pooling window, the flat index into the
//! whole input of its first maximal tap, as a float-coded integer (int64 tensors travel as f32
//! at run time, exact below 2^24). Split across threads by whole output planes; every plane is
//! computed by one thread alone, so the result does not depend on the thread count.

use super::RuntimeError;
use crate::kernels::parallel::{part_range, run_parallel, SharedMutPtr};
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
    let [height, width] = [input_shape[2], input_shape[3]];
    let out_plane = output_shape[2] * output_shape[3];
    if out_plane == 0 || output.is_empty() {
        return Ok(());
    }
    let planes = output.len() / out_plane;
    let rows = windows(params, 0, height, output_shape[2]);
    let columns = windows(params, 1, width, output_shape[3]);
    let plane = |index: usize, out: &mut [f32]| {
        let offset = index * height * width;
        let in_plane = &input[offset..offset + height * width];
        for ((row_start, row_taps), out_row) in rows.iter().zip(out.chunks_exact_mut(columns.len()))
        {
            for ((column_start, column_taps), target) in columns.iter().zip(out_row.iter_mut()) {
                let mut best: Option<(f32, usize)> = None;
                for tap_row in row_taps.clone() {
                    let y = (row_start + (tap_row * params.dilation[0]) as isize) as usize;
                    for tap_column in column_taps.clone() {
                        let x =
                            (column_start + (tap_column * params.dilation[1]) as isize) as usize;
                        let value = in_plane[y * width + x];
                        // PyTorch's rule: a larger value or a NaN replaces the maximum.
                        let replaces =
                            best.map_or(true, |(maximum, _)| value > maximum || value.is_nan());
                        if replaces {
                            best = Some((value, y * width + x));
                        }
                    }
                }
                let (_, at) = best.unwrap_or((0.0, 0));
                *target = (offset + at) as f32;
            }
        }
    };
    let output_data = SharedMutPtr(output.as_mut_ptr());
    let threads = crate::kernels::gemm::resolve_threads(threads);
    // A plane of a few dozen outputs is not worth waking a thread for.
    let parts = threads.min(planes * out_plane / 4096).max(1);
    run_parallel(parts, &|part| {
        for index in part_range(planes, parts, part) {
            // SAFETY: each part writes only its own planes of the output buffer, whose length
            // is `planes * out_plane`.
            let out = unsafe {
                std::slice::from_raw_parts_mut(output_data.get().add(index * out_plane), out_plane)
            };
            plane(index, out);
        }
    });
    Ok(())
}

/// For every output position along `axis`: the first input position of its window (possibly
/// negative) and the taps that land inside the input.
fn windows(
    params: &Pool2dParams,
    axis: usize,
    size: usize,
    out_len: usize,
) -> Vec<(isize, std::ops::Range<usize>)> {
    let dilation = params.dilation[axis] as isize;
    (0..out_len)
        .map(|out| {
            let start = (out * params.stride[axis]) as isize - params.padding[axis] as isize;
            let inside =
                |tap: &usize| (0..size as isize).contains(&(start + *tap as isize * dilation));
            let first = (0..params.kernel[axis]).find(inside).unwrap_or(0);
            let end = (0..params.kernel[axis])
                .rev()
                .find(inside)
                .map_or(first, |last| last + 1);
            (start, first..end)
        })
        .collect()
}
