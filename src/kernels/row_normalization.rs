//! Row-wise softmax and layer norm over f32 rows, for the runtime's fused softmax and layer-norm
//! kernels: a transformer's attention softmax runs over rows of 64 scores and its layer norm over
//! rows of 128 features, with hundreds to thousands of rows per call. Written as separate JIT
//! stages, each would stream the whole tensor through memory several times (max, exp, sum,
//! divide); here each row is short enough to stay in L1 while a few passes run over it.
//!
//! Per row, softmax makes three passes: the row maximum, then `e = exp(x - max)` written to the
//! output while summing it, then a multiplication by `1 / sum` (one division per row). Layer norm
//! follows PyTorch's biased variance in two statistics passes: `mean = sum(x) / cols`, then
//! `var = sum((x - mean)^2) / cols`, then an output pass computing
//! `(x - mean) * (1 / sqrt(var + epsilon))`, times `scale[j]` and plus `shift[j]` when given.
//!
//! Numerics. With AVX-512F each sum (and the maximum) is accumulated in sixteen lane-wise partial
//! results, the row's tail entering through a masked load, and then reduced by one fixed
//! horizontal tree; the portable path accumulates sixteen partial sums in the same lane layout
//! and adds them in a fixed order. Either way, the order depends only on `cols`, so a row gives
//! the same bits wherever it sits and however rows are split between threads. exp on the AVX-512
//! path is the crate's own vector exp ([`crate::codegen::vector_library`], the Cephes polynomial
//! that the JIT uses too); the portable path uses `f32::exp`. The two paths therefore agree to a
//! few ulps, not bit for bit. NaN and infinite inputs are not checked: they propagate as IEEE
//! arithmetic makes them (a row holding a NaN or an infinity comes out as NaN), without panics.

use super::gemm::resolve_threads;
use super::parallel::{part_range, run_parallel, SharedMutPtr};
use super::KernelError;

/// Sixteen f32 lanes: the AVX-512 vector width, and the number of partial sums each row keeps.
const LANES: usize = 16;

/// The fewest elements worth a part of their own. Waking a pool worker costs a few microseconds,
/// and a softmax over 8K elements takes about as long, so smaller calls stay on the calling
/// thread; a call needs at least twice this (16K elements) before it is split at all.
const MINIMUM_ELEMENTS_PER_PART: usize = 8192;

/// Softmax of each row of `cols` values: `output[r][j] = exp(x[r][j] - max_r) / sum_j exp(x[r][j] - max_r)`.
/// `input.len() == output.len()`, a multiple of `cols` (else Err). Rows are split across up to
/// `threads` threads (0 = all cores, via crate::kernels::gemm::resolve_threads); results identical for any thread count.
pub fn softmax_rows(
    input: &[f32],
    output: &mut [f32],
    cols: usize,
    threads: usize,
) -> Result<(), KernelError> {
    softmax_rows_on_path(input, output, cols, threads, InstructionPath::fastest())
}

/// Layer norm of each row of `cols` values, PyTorch's biased variance, two passes like
/// `mean = sum(x)/cols; centered = x - mean; var = sum(centered^2)/cols; y = centered * (1/sqrt(var + epsilon))`,
/// then `y * scale[j]` if scale is Some and `+ shift[j]` if shift is Some (each `cols` long, else Err).
pub fn layer_norm_rows(
    input: &[f32],
    output: &mut [f32],
    cols: usize,
    epsilon: f32,
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
    threads: usize,
) -> Result<(), KernelError> {
    let parameters = LayerNormParameters {
        cols,
        epsilon,
        scale,
        shift,
    };
    layer_norm_rows_on_path(
        input,
        output,
        parameters,
        threads,
        InstructionPath::fastest(),
    )
}

/// Which implementation computes the rows. Tests pick one explicitly to compare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InstructionPath {
    /// Plain Rust, for any CPU.
    Portable,
    /// Sixteen-lane AVX-512F intrinsics; only chosen when the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl InstructionPath {
    /// The fastest path this CPU can run (the feature check is cached by the standard library).
    fn fastest() -> InstructionPath {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return InstructionPath::Avx512;
            }
        }
        InstructionPath::Portable
    }
}

/// What a layer norm needs besides its rows; `scale` and `shift`, when given, are `cols` long.
#[derive(Clone, Copy, Debug)]
struct LayerNormParameters<'a> {
    cols: usize,
    epsilon: f32,
    scale: Option<&'a [f32]>,
    shift: Option<&'a [f32]>,
}

/// `softmax_rows` on a chosen path (which the caller has checked this CPU can run).
fn softmax_rows_on_path(
    input: &[f32],
    output: &mut [f32],
    cols: usize,
    threads: usize,
    path: InstructionPath,
) -> Result<(), KernelError> {
    let Some(rows) = check_row_buffers(input, output, cols)? else {
        return Ok(());
    };
    for_each_row_part(
        input,
        output,
        rows,
        cols,
        threads,
        &|input_rows, output_rows| {
            match path {
                InstructionPath::Portable => softmax_rows_portable(input_rows, output_rows, cols),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Avx512` is chosen only when the CPU has AVX-512F.
                InstructionPath::Avx512 => unsafe {
                    avx512::softmax_rows(input_rows, output_rows, cols)
                },
            }
        },
    );
    Ok(())
}

/// `layer_norm_rows` on a chosen path (which the caller has checked this CPU can run).
fn layer_norm_rows_on_path(
    input: &[f32],
    output: &mut [f32],
    parameters: LayerNormParameters<'_>,
    threads: usize,
    path: InstructionPath,
) -> Result<(), KernelError> {
    let cols = parameters.cols;
    // Checked before the early return, so a wrong scale is refused even for an empty input.
    if let Some(scale) = parameters.scale {
        super::check_length("scale", cols, scale.len())?;
    }
    if let Some(shift) = parameters.shift {
        super::check_length("shift", cols, shift.len())?;
    }
    let Some(rows) = check_row_buffers(input, output, cols)? else {
        return Ok(());
    };
    for_each_row_part(
        input,
        output,
        rows,
        cols,
        threads,
        &|input_rows, output_rows| {
            match path {
                InstructionPath::Portable => {
                    layer_norm_rows_portable(input_rows, output_rows, &parameters)
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Avx512` is chosen only when the CPU has AVX-512F.
                InstructionPath::Avx512 => unsafe {
                    avx512::layer_norm_rows(input_rows, output_rows, &parameters)
                },
            }
        },
    );
    Ok(())
}

/// Checks that `output` matches `input` and that `input` holds whole rows of `cols`, and returns
/// the row count, or `None` when there is nothing to compute (no columns or no elements).
fn check_row_buffers(
    input: &[f32],
    output: &[f32],
    cols: usize,
) -> Result<Option<usize>, KernelError> {
    super::check_length("output", input.len(), output.len())?;
    if cols == 0 || input.is_empty() {
        return Ok(None);
    }
    if !input.len().is_multiple_of(cols) {
        // The nearest whole number of rows above what was given.
        let whole_rows = input.len() / cols + 1;
        return Err(KernelError::BufferLength {
            buffer: "input",
            expected: whole_rows.saturating_mul(cols),
            actual: input.len(),
        });
    }
    Ok(Some(input.len() / cols))
}

/// Splits the rows into contiguous parts, one per thread (a single part for small calls), and
/// runs `compute_rows(input_rows, output_rows)` on each part's whole rows. Which rows share a part
/// changes nothing in how each row is computed, so the result is the same for any split.
fn for_each_row_part(
    input: &[f32],
    output: &mut [f32],
    rows: usize,
    cols: usize,
    threads: usize,
    compute_rows: &(dyn Fn(&[f32], &mut [f32]) + Sync),
) {
    let parts_worth_waking = input.len() / MINIMUM_ELEMENTS_PER_PART;
    let parts = resolve_threads(threads)
        .min(parts_worth_waking)
        .min(rows)
        .max(1);
    if parts == 1 {
        compute_rows(input, output);
        return;
    }
    let output_pointer = SharedMutPtr(output.as_mut_ptr());
    run_parallel(parts, &|part| {
        let part_rows = part_range(rows, parts, part);
        let elements = part_rows.start * cols..part_rows.end * cols;
        // SAFETY: the parts' row ranges are disjoint and within `rows`, so each part writes its
        // own elements of `output`, which outlives `run_parallel`; nothing else reads or writes
        // `output` meanwhile, since this function holds its only mutable borrow.
        let output_rows = unsafe {
            std::slice::from_raw_parts_mut(output_pointer.get().add(elements.start), elements.len())
        };
        compute_rows(&input[elements], output_rows);
    });
}

/// The sum of `term(value)` over `values` in the lane layout the AVX-512 path uses: element `j`
/// goes to partial sum `j % LANES`, and the partial sums are added pairwise at the end. Keeping a
/// fixed lane layout also keeps the rounding error of long rows down, compared with one running
/// sum, and walking whole chunks of sixteen lets the compiler vectorize the loop.
#[inline]
fn lane_partial_sum(values: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut partial_sums = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (partial_sum, &value) in partial_sums.iter_mut().zip(chunk) {
            *partial_sum += term(value);
        }
    }
    for (partial_sum, &value) in partial_sums.iter_mut().zip(tail) {
        *partial_sum += term(value);
    }
    pairwise_sum(&partial_sums)
}

/// Adds the sixteen partial sums as a balanced tree, in a fixed order.
#[inline]
fn pairwise_sum(partial_sums: &[f32; LANES]) -> f32 {
    let mut width = LANES;
    let mut sums = *partial_sums;
    while width > 1 {
        width /= 2;
        for lane in 0..width {
            sums[lane] += sums[lane + width];
        }
    }
    sums[0]
}

/// Softmax of each row on any CPU.
fn softmax_rows_portable(input: &[f32], output: &mut [f32], cols: usize) {
    for (input_row, output_row) in input.chunks_exact(cols).zip(output.chunks_exact_mut(cols)) {
        let row_max = input_row
            .iter()
            .fold(f32::NEG_INFINITY, |running, &value| running.max(value));
        for (exponential, &value) in output_row.iter_mut().zip(input_row) {
            *exponential = (value - row_max).exp();
        }
        let sum = lane_partial_sum(output_row, |exponential| exponential);
        let reciprocal = 1.0 / sum;
        for value in output_row.iter_mut() {
            *value *= reciprocal;
        }
    }
}

/// Layer norm of each row on any CPU.
fn layer_norm_rows_portable(
    input: &[f32],
    output: &mut [f32],
    parameters: &LayerNormParameters<'_>,
) {
    let cols = parameters.cols;
    let column_count = cols as f32;
    for (input_row, output_row) in input.chunks_exact(cols).zip(output.chunks_exact_mut(cols)) {
        let mean = lane_partial_sum(input_row, |value| value) / column_count;
        let variance = lane_partial_sum(input_row, |value| {
            let centered = value - mean;
            centered * centered
        }) / column_count;
        let inverse_deviation = 1.0 / (variance + parameters.epsilon).sqrt();
        for (normalized, &value) in output_row.iter_mut().zip(input_row) {
            *normalized = (value - mean) * inverse_deviation;
        }
        // Separate passes rather than a branch per element, so each loop vectorizes.
        if let Some(scale) = parameters.scale {
            for (normalized, &factor) in output_row.iter_mut().zip(scale) {
                *normalized *= factor;
            }
        }
        if let Some(shift) = parameters.shift {
            for (normalized, &offset) in output_row.iter_mut().zip(shift) {
                *normalized += offset;
            }
        }
    }
}

/// The AVX-512F path: sixteen lanes per instruction, the row's last `cols % 16` elements through
/// masked loads and stores, so no row needs padding or a scalar tail loop.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{LayerNormParameters, LANES};
    use crate::codegen::vector_library::exp_avx512_vector;
    use std::arch::x86_64::*;

    /// How a row of `cols` splits into full vectors and a masked tail.
    #[derive(Clone, Copy)]
    struct RowShape {
        full_vectors: usize,
        /// The lanes of the tail vector that hold row elements (0 when there is no tail).
        tail_mask: __mmask16,
    }

    impl RowShape {
        fn new(cols: usize) -> RowShape {
            let tail = cols % LANES;
            RowShape {
                full_vectors: cols / LANES,
                tail_mask: ((1u32 << tail) - 1) as __mmask16,
            }
        }

        /// The element index where the tail vector starts.
        fn tail_start(self) -> usize {
            self.full_vectors * LANES
        }
    }

    /// Softmax of each row.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `cols` > 0 and `input` and `output` both hold whole rows of `cols`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_rows(input: &[f32], output: &mut [f32], cols: usize) {
        let shape = RowShape::new(cols);
        for (input_row, output_row) in input.chunks_exact(cols).zip(output.chunks_exact_mut(cols)) {
            // SAFETY: each row slice holds exactly `cols` elements, as `shape` describes.
            unsafe { softmax_row(input_row.as_ptr(), output_row.as_mut_ptr(), shape) };
        }
    }

    /// Softmax of one row: a max pass, an exp pass that stores `exp(x - max)` and sums it, and a
    /// pass scaling the stored values by `1 / sum`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `source` is readable and `destination` writable for the
    /// `full_vectors * 16` elements plus the tail lanes of `shape`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_row(source: *const f32, destination: *mut f32, shape: RowShape) {
        let RowShape {
            full_vectors,
            tail_mask,
        } = shape;
        let tail_start = shape.tail_start();
        unsafe {
            let mut running_max = _mm512_set1_ps(f32::NEG_INFINITY);
            for vector in 0..full_vectors {
                let values = _mm512_loadu_ps(source.add(vector * LANES));
                running_max = _mm512_max_ps(running_max, values);
            }
            if tail_mask != 0 {
                let values = _mm512_maskz_loadu_ps(tail_mask, source.add(tail_start));
                running_max = _mm512_mask_max_ps(running_max, tail_mask, running_max, values);
            }
            let row_max = _mm512_set1_ps(_mm512_reduce_max_ps(running_max));

            let mut partial_sums = _mm512_setzero_ps();
            for vector in 0..full_vectors {
                let values = _mm512_loadu_ps(source.add(vector * LANES));
                let exponentials = exp_avx512_vector(_mm512_sub_ps(values, row_max));
                _mm512_storeu_ps(destination.add(vector * LANES), exponentials);
                partial_sums = _mm512_add_ps(partial_sums, exponentials);
            }
            if tail_mask != 0 {
                let values = _mm512_maskz_loadu_ps(tail_mask, source.add(tail_start));
                let exponentials = exp_avx512_vector(_mm512_sub_ps(values, row_max));
                _mm512_mask_storeu_ps(destination.add(tail_start), tail_mask, exponentials);
                partial_sums =
                    _mm512_mask_add_ps(partial_sums, tail_mask, partial_sums, exponentials);
            }
            let reciprocal = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(partial_sums));

            for vector in 0..full_vectors {
                let pointer = destination.add(vector * LANES);
                _mm512_storeu_ps(pointer, _mm512_mul_ps(_mm512_loadu_ps(pointer), reciprocal));
            }
            if tail_mask != 0 {
                let pointer = destination.add(tail_start);
                let exponentials = _mm512_maskz_loadu_ps(tail_mask, pointer);
                _mm512_mask_storeu_ps(pointer, tail_mask, _mm512_mul_ps(exponentials, reciprocal));
            }
        }
    }

    /// Layer norm of each row.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `parameters.cols` > 0, `input` and `output` both hold whole rows of
    /// `cols`, and `scale` and `shift`, when given, hold `cols` elements.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn layer_norm_rows(
        input: &[f32],
        output: &mut [f32],
        parameters: &LayerNormParameters<'_>,
    ) {
        let cols = parameters.cols;
        let shape = RowShape::new(cols);
        let scale = parameters.scale.map(<[f32]>::as_ptr);
        let shift = parameters.shift.map(<[f32]>::as_ptr);
        for (input_row, output_row) in input.chunks_exact(cols).zip(output.chunks_exact_mut(cols)) {
            // SAFETY: each row slice, and `scale` and `shift`, hold exactly `cols` elements.
            unsafe {
                layer_norm_row(
                    input_row.as_ptr(),
                    output_row.as_mut_ptr(),
                    shape,
                    cols as f32,
                    parameters.epsilon,
                    scale,
                    shift,
                )
            };
        }
    }

    /// Layer norm of one row: a sum pass for the mean, a pass summing the centered squares for
    /// the variance, and an output pass normalizing, scaling and shifting.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `source` is readable and `destination` writable, and `scale` and
    /// `shift` (when given) readable, for the `full_vectors * 16` elements plus the tail lanes
    /// of `shape`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn layer_norm_row(
        source: *const f32,
        destination: *mut f32,
        shape: RowShape,
        column_count: f32,
        epsilon: f32,
        scale: Option<*const f32>,
        shift: Option<*const f32>,
    ) {
        let RowShape {
            full_vectors,
            tail_mask,
        } = shape;
        let tail_start = shape.tail_start();
        unsafe {
            let mut partial_sums = _mm512_setzero_ps();
            for vector in 0..full_vectors {
                let values = _mm512_loadu_ps(source.add(vector * LANES));
                partial_sums = _mm512_add_ps(partial_sums, values);
            }
            if tail_mask != 0 {
                // The masked-off lanes load as zero, which adds nothing.
                let values = _mm512_maskz_loadu_ps(tail_mask, source.add(tail_start));
                partial_sums = _mm512_add_ps(partial_sums, values);
            }
            let mean = _mm512_set1_ps(_mm512_reduce_add_ps(partial_sums) / column_count);

            let mut partial_squares = _mm512_setzero_ps();
            for vector in 0..full_vectors {
                let values = _mm512_loadu_ps(source.add(vector * LANES));
                let centered = _mm512_sub_ps(values, mean);
                partial_squares = _mm512_add_ps(partial_squares, _mm512_mul_ps(centered, centered));
            }
            if tail_mask != 0 {
                let values = _mm512_maskz_loadu_ps(tail_mask, source.add(tail_start));
                let centered = _mm512_sub_ps(values, mean);
                let squares = _mm512_mul_ps(centered, centered);
                partial_squares =
                    _mm512_mask_add_ps(partial_squares, tail_mask, partial_squares, squares);
            }
            let variance = _mm512_reduce_add_ps(partial_squares) / column_count;
            let inverse_deviation = _mm512_set1_ps(1.0 / (variance + epsilon).sqrt());

            // One vector of the output: `(x - mean) * inverse_deviation`, scaled and shifted.
            // The masked loads of `scale` and `shift` read only the row's lanes.
            let normalize = |offset: usize, mask: __mmask16| {
                let values = _mm512_maskz_loadu_ps(mask, source.add(offset));
                let mut result = _mm512_mul_ps(_mm512_sub_ps(values, mean), inverse_deviation);
                if let Some(scale) = scale {
                    result = _mm512_mul_ps(result, _mm512_maskz_loadu_ps(mask, scale.add(offset)));
                }
                if let Some(shift) = shift {
                    result = _mm512_add_ps(result, _mm512_maskz_loadu_ps(mask, shift.add(offset)));
                }
                _mm512_mask_storeu_ps(destination.add(offset), mask, result);
            };
            for vector in 0..full_vectors {
                normalize(vector * LANES, 0xFFFF);
            }
            if tail_mask != 0 {
                normalize(tail_start, tail_mask);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::inputs::SplitMix;

    const COLUMN_COUNTS: [usize; 8] = [1, 5, 16, 17, 64, 100, 128, 130];

    /// `count` values spread evenly over [-8, 8), the same on every run.
    fn deterministic_values(seed: u64, count: usize) -> Vec<f32> {
        let mut numbers = SplitMix(seed);
        (0..count)
            .map(|_| (16.0 * numbers.unit() - 8.0) as f32)
            .collect()
    }

    /// The row counts the accuracy tests cover: every count up to 37 for short rows, a few for
    /// long ones, so the suite stays quick.
    fn row_counts(cols: usize) -> Vec<usize> {
        if cols <= 17 {
            (1..=37).collect()
        } else {
            vec![1, 2, 3, 7, 16, 31, 37]
        }
    }

    /// Softmax in f64, one element at a time.
    fn softmax_reference(input: &[f32], cols: usize) -> Vec<f64> {
        let mut reference = Vec::with_capacity(input.len());
        for row in input.chunks_exact(cols) {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let exponentials: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
            let sum: f64 = exponentials.iter().sum();
            reference.extend(exponentials.iter().map(|e| e / sum));
        }
        reference
    }

    /// Layer norm in f64, one element at a time.
    fn layer_norm_reference(
        input: &[f32],
        cols: usize,
        epsilon: f32,
        scale: Option<&[f32]>,
        shift: Option<&[f32]>,
    ) -> Vec<f64> {
        let mut reference = Vec::with_capacity(input.len());
        for row in input.chunks_exact(cols) {
            let mean = row.iter().map(|&x| x as f64).sum::<f64>() / cols as f64;
            let variance =
                row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let inverse_deviation = 1.0 / (variance + epsilon as f64).sqrt();
            for (column, &x) in row.iter().enumerate() {
                let mut y = (x as f64 - mean) * inverse_deviation;
                if let Some(scale) = scale {
                    y *= scale[column] as f64;
                }
                if let Some(shift) = shift {
                    y += shift[column] as f64;
                }
                reference.push(y);
            }
        }
        reference
    }

    /// The paths this CPU can run: always the portable one, and AVX-512 when present.
    fn available_paths() -> Vec<InstructionPath> {
        let mut paths = vec![InstructionPath::Portable];
        if InstructionPath::fastest() != InstructionPath::Portable {
            paths.push(InstructionPath::fastest());
        }
        paths
    }

    fn assert_softmax_close(actual: &[f32], reference: &[f64], context: &str) {
        for (index, (&got, &want)) in actual.iter().zip(reference).enumerate() {
            let error = (got as f64 - want).abs();
            assert!(
                error <= 1e-6 + 1e-5 * want.abs(),
                "{context}: element {index} is {got}, reference {want}"
            );
        }
    }

    fn assert_layer_norm_close(actual: &[f32], reference: &[f64], context: &str) {
        for (index, (&got, &want)) in actual.iter().zip(reference).enumerate() {
            let error = (got as f64 - want).abs();
            assert!(
                error <= 1e-4 * (1.0 + want.abs()),
                "{context}: element {index} is {got}, reference {want}"
            );
        }
    }

    #[test]
    fn softmax_matches_an_f64_reference() {
        for path in available_paths() {
            for cols in COLUMN_COUNTS {
                for rows in row_counts(cols) {
                    let input = deterministic_values((rows * 1000 + cols) as u64, rows * cols);
                    let mut output = vec![f32::NAN; input.len()];
                    softmax_rows_on_path(&input, &mut output, cols, 1, path).unwrap();
                    let context = format!("{path:?} softmax {rows}x{cols}");
                    assert_softmax_close(&output, &softmax_reference(&input, cols), &context);
                }
            }
        }
    }

    #[test]
    fn layer_norm_matches_an_f64_reference_with_and_without_affine() {
        let epsilon = 1e-5;
        for path in available_paths() {
            for cols in COLUMN_COUNTS {
                let scale = deterministic_values(7 + cols as u64, cols);
                let shift = deterministic_values(11 + cols as u64, cols);
                type Affine<'a> = (Option<&'a [f32]>, Option<&'a [f32]>);
                let affines: [Affine<'_>; 4] = [
                    (None, None),
                    (Some(&scale), None),
                    (None, Some(&shift)),
                    (Some(&scale), Some(&shift)),
                ];
                for rows in row_counts(cols) {
                    let input = deterministic_values((rows * 1000 + cols) as u64, rows * cols);
                    for (scale, shift) in affines {
                        let parameters = LayerNormParameters {
                            cols,
                            epsilon,
                            scale,
                            shift,
                        };
                        let mut output = vec![f32::NAN; input.len()];
                        layer_norm_rows_on_path(&input, &mut output, parameters, 1, path).unwrap();
                        let reference = layer_norm_reference(&input, cols, epsilon, scale, shift);
                        let context = format!(
                            "{path:?} layer norm {rows}x{cols} scale {} shift {}",
                            scale.is_some(),
                            shift.is_some()
                        );
                        assert_layer_norm_close(&output, &reference, &context);
                    }
                }
            }
        }
    }

    /// 300 x 130 = 39,000 elements: enough for two parts, with rows not a multiple of 16 long.
    #[test]
    fn one_and_two_threads_give_identical_bits() {
        let (rows, cols) = (300, 130);
        let input = deterministic_values(42, rows * cols);
        let scale = deterministic_values(43, cols);
        let shift = deterministic_values(44, cols);
        assert!(input.len() / MINIMUM_ELEMENTS_PER_PART >= 2);
        for path in available_paths() {
            let mut single = vec![0.0f32; input.len()];
            let mut split = vec![0.0f32; input.len()];
            softmax_rows_on_path(&input, &mut single, cols, 1, path).unwrap();
            softmax_rows_on_path(&input, &mut split, cols, 2, path).unwrap();
            assert!(bits_equal(&single, &split), "{path:?} softmax");

            let parameters = LayerNormParameters {
                cols,
                epsilon: 1e-5,
                scale: Some(&scale),
                shift: Some(&shift),
            };
            layer_norm_rows_on_path(&input, &mut single, parameters, 1, path).unwrap();
            layer_norm_rows_on_path(&input, &mut split, parameters, 2, path).unwrap();
            assert!(bits_equal(&single, &split), "{path:?} layer norm");
        }
        // The public functions (fastest path, all cores) agree with one thread too.
        let mut all_cores = vec![0.0f32; input.len()];
        let mut single = vec![0.0f32; input.len()];
        softmax_rows(&input, &mut all_cores, cols, 0).unwrap();
        softmax_rows(&input, &mut single, cols, 1).unwrap();
        assert!(bits_equal(&single, &all_cores));
        layer_norm_rows(&input, &mut all_cores, cols, 1e-5, Some(&scale), None, 0).unwrap();
        layer_norm_rows(&input, &mut single, cols, 1e-5, Some(&scale), None, 1).unwrap();
        assert!(bits_equal(&single, &all_cores));
    }

    fn bits_equal(first: &[f32], second: &[f32]) -> bool {
        first.len() == second.len()
            && first
                .iter()
                .zip(second)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }

    #[test]
    fn vector_and_portable_paths_agree() {
        if InstructionPath::fastest() == InstructionPath::Portable {
            return;
        }
        let vector_path = InstructionPath::fastest();
        for cols in COLUMN_COUNTS {
            let rows = 37;
            let input = deterministic_values(cols as u64, rows * cols);
            let scale = deterministic_values(3 * cols as u64, cols);
            let shift = deterministic_values(5 * cols as u64, cols);
            let (mut portable, mut vector) = (vec![0.0f32; input.len()], vec![0.0f32; input.len()]);

            softmax_rows_on_path(&input, &mut portable, cols, 1, InstructionPath::Portable)
                .unwrap();
            softmax_rows_on_path(&input, &mut vector, cols, 1, vector_path).unwrap();
            let portable_wide: Vec<f64> = portable.iter().map(|&x| x as f64).collect();
            assert_softmax_close(&vector, &portable_wide, &format!("softmax cols {cols}"));

            let parameters = LayerNormParameters {
                cols,
                epsilon: 1e-5,
                scale: Some(&scale),
                shift: Some(&shift),
            };
            layer_norm_rows_on_path(
                &input,
                &mut portable,
                parameters,
                1,
                InstructionPath::Portable,
            )
            .unwrap();
            layer_norm_rows_on_path(&input, &mut vector, parameters, 1, vector_path).unwrap();
            let portable_wide: Vec<f64> = portable.iter().map(|&x| x as f64).collect();
            assert_layer_norm_close(&vector, &portable_wide, &format!("layer norm cols {cols}"));
        }
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let input = vec![0.5f32; 64];
        let mut short_output = vec![0.0f32; 63];
        assert!(softmax_rows(&input, &mut short_output, 16, 1).is_err());
        assert!(layer_norm_rows(&input, &mut short_output, 16, 1e-5, None, None, 1).is_err());

        let mut output = vec![0.0f32; 64];
        assert!(softmax_rows(&input, &mut output, 24, 1).is_err());
        assert!(layer_norm_rows(&input, &mut output, 24, 1e-5, None, None, 1).is_err());

        let wrong = vec![1.0f32; 15];
        let right = vec![1.0f32; 16];
        let refused = layer_norm_rows(&input, &mut output, 16, 1e-5, Some(&wrong), None, 1);
        assert_eq!(
            refused,
            Err(KernelError::BufferLength {
                buffer: "scale",
                expected: 16,
                actual: 15
            })
        );
        assert!(layer_norm_rows(&input, &mut output, 16, 1e-5, None, Some(&wrong), 1).is_err());
        assert!(
            layer_norm_rows(&input, &mut output, 16, 1e-5, Some(&right), Some(&right), 1).is_ok()
        );
    }

    #[test]
    fn empty_calls_do_nothing() {
        let mut output: Vec<f32> = Vec::new();
        assert!(softmax_rows(&[], &mut output, 64, 1).is_ok());
        assert!(layer_norm_rows(&[], &mut output, 128, 1e-5, None, None, 1).is_ok());
        let input = vec![1.0f32; 8];
        let mut untouched = vec![7.0f32; 8];
        assert!(softmax_rows(&input, &mut untouched, 0, 1).is_ok());
        assert!(layer_norm_rows(&input, &mut untouched, 0, 1e-5, None, None, 1).is_ok());
        assert!(untouched.iter().all(|&value| value == 7.0));
    }

    /// NaN and infinities flow through as IEEE arithmetic makes them, on every path.
    #[test]
    fn non_finite_inputs_do_not_panic() {
        let cols = 17;
        let mut input = deterministic_values(9, 4 * cols);
        input[3] = f32::NAN;
        input[cols + 16] = f32::INFINITY;
        input[2 * cols] = f32::NEG_INFINITY;
        for path in available_paths() {
            let mut output = vec![0.0f32; input.len()];
            softmax_rows_on_path(&input, &mut output, cols, 1, path).unwrap();
            assert!(
                output[..cols].iter().all(|value| value.is_nan()),
                "{path:?}"
            );
            // A row holding -inf is still a valid softmax: that element gets probability 0
            // (or the vector exp's smallest subnormal, as it clamps its argument at -104).
            assert!(output[2 * cols] <= 1e-40, "{path:?}");
            assert!(output[2 * cols + 1..3 * cols].iter().all(|v| v.is_finite()));
            assert!(output[3 * cols..].iter().all(|value| value.is_finite()));
            let parameters = LayerNormParameters {
                cols,
                epsilon: 1e-5,
                scale: None,
                shift: None,
            };
            layer_norm_rows_on_path(&input, &mut output, parameters, 1, path).unwrap();
            assert!(
                output[..cols].iter().all(|value| value.is_nan()),
                "{path:?}"
            );
            assert!(output[3 * cols..].iter().all(|value| value.is_finite()));
        }
    }

    /// Prints the single-thread time of the transformer-sized calls (run with `--ignored
    /// --nocapture` in release mode).
    #[test]
    #[ignore]
    fn time_transformer_sized_rows() {
        let softmax_input = deterministic_values(1, 512 * 64);
        let norm_input = deterministic_values(2, 512 * 128);
        let scale = deterministic_values(3, 128);
        let shift = deterministic_values(4, 128);
        let mut softmax_output = vec![0.0f32; softmax_input.len()];
        let mut norm_output = vec![0.0f32; norm_input.len()];
        let repetitions = 2000;
        for path in available_paths() {
            let started = std::time::Instant::now();
            for _ in 0..repetitions {
                softmax_rows_on_path(&softmax_input, &mut softmax_output, 64, 1, path).unwrap();
            }
            let softmax_time = started.elapsed() / repetitions;
            let parameters = LayerNormParameters {
                cols: 128,
                epsilon: 1e-5,
                scale: Some(&scale),
                shift: Some(&shift),
            };
            let started = std::time::Instant::now();
            for _ in 0..repetitions {
                layer_norm_rows_on_path(&norm_input, &mut norm_output, parameters, 1, path)
                    .unwrap();
            }
            let norm_time = started.elapsed() / repetitions;
            println!("{path:?}: softmax 512x64 {softmax_time:?}, layer norm 512x128 {norm_time:?}");
        }
    }
}
