//! The weight gradient of a convolution with few channel pairs, by direct loops (LeNet's first
//! layer: 1 -> 6 channels, 5x5 taps, 28x28 outputs, batch 64). As a GEMM it has `M = 6` rows
//! and `N = 25` columns over `K = 50176` positions, so every float packed from the input feeds
//! six multiply-adds, and packing 1.25M gathered floats set the pace (810 us for 7.5M
//! multiply-adds). Here nothing is packed: for one (output channel, input channel) pair, one
//! zmm accumulator per tap stays in a register while the loops run over images, output rows and
//! 16-column segments of each row; each step loads a segment of the output gradient once and
//! multiplies it with the input segment under each tap (a multiply-add with a memory operand),
//! and at the end each accumulator is summed across its lanes.
//!
//! Each weight-gradient element sums its products in one fixed order (lane by lane over images,
//! rows and segments, then across lanes), computed by one thread whatever the thread count, so
//! results do not depend on it. Padded convolutions read the same zero-padded copies, a chunk
//! of images at a time, as the GEMM path (`conv_weight_gradient.rs`); later chunks add to the
//! first's result.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::conv_weight_gradient::Conv2dWeightGradientGeometry;

/// Floats per zmm vector: the width of a row segment.
#[cfg(target_arch = "x86_64")]
const LANES: usize = 16;
/// The most taps (accumulators) a channel pair keeps in registers: 5x5.
const MAX_TAP_ROWS: usize = 5;
const MAX_TAP_COLUMNS: usize = 5;
/// The most channel pairs (output channels times input channels) this kernel takes. Measured
/// against the GEMM (one thread, batch 64, LeNet-5's layers within its training step, with the
/// SGD update epilogue): 1 -> 6 channels 5x5 on 28x28 outputs (6 pairs) 810 -> 223 us; but
/// 6 -> 16 channels 5x5 on 10x10 outputs (96 pairs, rows of 10 fill 10 of 16 lanes) 368 ->
/// 705 us, where the GEMM's 16 rows reuse each packed float enough.
const MAX_CHANNEL_PAIRS: usize = 16;

/// Whether this CPU and geometry take the direct loops: AVX-512, one group, stride and
/// dilation 1, taps at most 5x5, few channel pairs.
pub(super) fn applies(geometry: &Conv2dWeightGradientGeometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::kernels::gemm::GemmKernel::Avx512.is_supported()
            && geometry.groups == 1
            && geometry.stride == [1, 1]
            && geometry.dilation == [1, 1]
            && geometry.kernel[0] <= MAX_TAP_ROWS
            && geometry.kernel[1] <= MAX_TAP_COLUMNS
            && geometry.out_channels * geometry.in_channels <= MAX_CHANNEL_PAIRS
            && geometry.out_size().is_ok()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = geometry;
        false
    }
}

/// Adds (or, when `overwrite`, writes) the weight gradient of `images` images into
/// `weight_gradient`: `source` holds their input planes as the kernel reads them (padded, with
/// rows `width` floats long), `output_gradient` their output gradients. Buffers were checked
/// by the caller against the geometry, and `applies` holds.
pub(super) fn accumulate_weight_gradient(
    geometry: &Conv2dWeightGradientGeometry,
    (source, [height, width]): (&[f32], [usize; 2]),
    output_gradient: &[f32],
    images: usize,
    (weight_gradient, overwrite): (&mut [f32], bool),
    threads: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::parallel::{part_range, run_parallel, SharedMutPtr};
        let Ok(out_size) = geometry.out_size() else {
            return;
        };
        let pairs = geometry.out_channels * geometry.in_channels;
        let taps = geometry.kernel[0] * geometry.kernel[1];
        let layout = PairLayout {
            out_size,
            width,
            plane: height * width,
            image_len: geometry.in_channels * height * width,
            gradient_image_len: geometry.out_channels * out_size[0] * out_size[1],
            images,
        };
        let parts = threads.min(pairs).max(1);
        let results = SharedMutPtr(weight_gradient.as_mut_ptr());
        run_parallel(parts, &|part| {
            for pair in part_range(pairs, parts, part) {
                let (out_channel, in_channel) =
                    (pair / geometry.in_channels, pair % geometry.in_channels);
                let mut sums = [0.0f32; MAX_TAP_ROWS * MAX_TAP_COLUMNS];
                // SAFETY: `applies` checked AVX-512 and the geometry; the caller checked that
                // the buffers hold `images` images of it.
                unsafe {
                    pair_sums(
                        geometry.kernel,
                        &layout,
                        source[in_channel * layout.plane..].as_ptr(),
                        output_gradient[out_channel * out_size[0] * out_size[1]..].as_ptr(),
                        &mut sums,
                    )
                };
                // Pair `pair` owns the weight-gradient elements `pair * taps ..`, written by
                // this part only.
                let target = results.get().wrapping_add(pair * taps);
                for (tap, sum) in sums.iter().take(taps).enumerate() {
                    // SAFETY: as above; the element lies inside the checked weight gradient.
                    unsafe {
                        let element = target.add(tap);
                        *element = if overwrite { *sum } else { *element + *sum };
                    }
                }
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            geometry,
            source,
            height,
            width,
            output_gradient,
            images,
            weight_gradient,
            overwrite,
            threads,
        );
    }
}

/// Where one channel pair's operands lie.
#[cfg(target_arch = "x86_64")]
struct PairLayout {
    out_size: [usize; 2],
    /// Floats per row and per plane of the (padded) input the kernel reads.
    width: usize,
    plane: usize,
    /// Floats per image of the (padded) input and of the output gradient.
    image_len: usize,
    gradient_image_len: usize,
    images: usize,
}

/// The tap sums of one channel pair, `sums[tap_row * kernel width + tap column]`.
///
/// # Safety
/// The CPU supports AVX-512F; `source` is the pair's input channel of the first image and
/// `gradient` its output channel, each with `layout.images` images at their strides.
#[cfg(target_arch = "x86_64")]
unsafe fn pair_sums(
    kernel: [usize; 2],
    layout: &PairLayout,
    source: *const f32,
    gradient: *const f32,
    sums: &mut [f32; MAX_TAP_ROWS * MAX_TAP_COLUMNS],
) {
    macro_rules! dispatch {
        ($($rows:literal $columns:literal),*) => {
            match (kernel[0], kernel[1]) {
                $(($rows, $columns) => unsafe {
                    pair_sums_for::<$rows, $columns>(layout, source, gradient, sums)
                },)*
                _ => unreachable!("`applies` bounds the taps at 5x5"),
            }
        };
    }
    dispatch!(
        1 1, 1 2, 1 3, 1 4, 1 5, 2 1, 2 2, 2 3, 2 4, 2 5, 3 1, 3 2, 3 3, 3 4, 3 5,
        4 1, 4 2, 4 3, 4 4, 4 5, 5 1, 5 2, 5 3, 5 4, 5 5
    )
}

/// [`pair_sums`] for `TAP_ROWS x TAP_COLUMNS` taps, whose accumulators the compiler keeps in
/// registers (every index is a constant once the tap loops unroll).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pair_sums_for<const TAP_ROWS: usize, const TAP_COLUMNS: usize>(
    layout: &PairLayout,
    source: *const f32,
    gradient: *const f32,
    sums: &mut [f32; MAX_TAP_ROWS * MAX_TAP_COLUMNS],
) {
    let [out_height, out_width] = layout.out_size;
    let mut accumulators = [_mm512_setzero_ps(); MAX_TAP_ROWS * MAX_TAP_COLUMNS];
    for image in 0..layout.images {
        // SAFETY (every pointer below): the caller guarantees the images; masked lanes past
        // the row's end are not read.
        let image_source = unsafe { source.add(image * layout.image_len) };
        let image_gradient = unsafe { gradient.add(image * layout.gradient_image_len) };
        for out_row in 0..out_height {
            let gradient_row = unsafe { image_gradient.add(out_row * out_width) };
            // Whole segments load without masks, so each input load folds into its
            // multiply-add; the last, partial segment masks both loads.
            for segment in (0..out_width).step_by(LANES) {
                let lanes = LANES.min(out_width - segment);
                let row_sources = |tap_row: usize| unsafe {
                    image_source.add((out_row + tap_row) * layout.width + segment)
                };
                if lanes == LANES {
                    let gradient_values = unsafe { _mm512_loadu_ps(gradient_row.add(segment)) };
                    for tap_row in 0..TAP_ROWS {
                        let input_row = row_sources(tap_row);
                        for tap_column in 0..TAP_COLUMNS {
                            let input_values =
                                unsafe { _mm512_loadu_ps(input_row.add(tap_column)) };
                            let tap = tap_row * TAP_COLUMNS + tap_column;
                            accumulators[tap] =
                                _mm512_fmadd_ps(gradient_values, input_values, accumulators[tap]);
                        }
                    }
                    continue;
                }
                let mask = ((1u32 << lanes) - 1) as __mmask16;
                let gradient_values =
                    unsafe { _mm512_maskz_loadu_ps(mask, gradient_row.add(segment)) };
                for tap_row in 0..TAP_ROWS {
                    let input_row = row_sources(tap_row);
                    for tap_column in 0..TAP_COLUMNS {
                        let input_values =
                            unsafe { _mm512_maskz_loadu_ps(mask, input_row.add(tap_column)) };
                        let tap = tap_row * TAP_COLUMNS + tap_column;
                        accumulators[tap] =
                            _mm512_fmadd_ps(gradient_values, input_values, accumulators[tap]);
                    }
                }
            }
        }
    }
    for tap in 0..TAP_ROWS * TAP_COLUMNS {
        sums[tap] = _mm512_reduce_add_ps(accumulators[tap]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv_weight_gradient::conv2d_weight_gradient;
    use super::*;
    use crate::train::inputs::SplitMix;

    /// Values uniform in [-1, 1) from the crate's seeded generator, so failures reproduce.
    fn values(numbers: &mut SplitMix, count: usize) -> Vec<f32> {
        (0..count)
            .map(|_| (2.0 * numbers.unit() - 1.0) as f32)
            .collect()
    }

    /// The weight gradient by its definition, in f64, independent of the kernels' code.
    fn reference(
        geometry: &Conv2dWeightGradientGeometry,
        input: &[f32],
        gradient: &[f32],
    ) -> Vec<f64> {
        let [out_height, out_width] = geometry.out_size().unwrap();
        let [height, width] = geometry.in_size;
        let [[top, _], [left, _]] = geometry.padding;
        let (channels, outputs) = (geometry.in_channels, geometry.out_channels);
        let [tap_rows, tap_columns] = geometry.kernel;
        let mut result = vec![0.0; outputs * channels * tap_rows * tap_columns];
        for image in 0..geometry.batch {
            for output in 0..outputs {
                for channel in 0..channels {
                    for tap_row in 0..tap_rows {
                        for tap_column in 0..tap_columns {
                            let mut sum = 0.0f64;
                            for out_row in 0..out_height {
                                for out_column in 0..out_width {
                                    let row = (out_row + tap_row) as isize - top as isize;
                                    let column = (out_column + tap_column) as isize - left as isize;
                                    if row < 0
                                        || column < 0
                                        || row >= height as isize
                                        || column >= width as isize
                                    {
                                        continue;
                                    }
                                    let x = input[((image * channels + channel) * height
                                        + row as usize)
                                        * width
                                        + column as usize];
                                    let g = gradient[((image * outputs + output) * out_height
                                        + out_row)
                                        * out_width
                                        + out_column];
                                    sum += x as f64 * g as f64;
                                }
                            }
                            result[((output * channels + channel) * tap_rows + tap_row)
                                * tap_columns
                                + tap_column] += sum;
                        }
                    }
                }
            }
        }
        result
    }

    /// Random shapes the direct loops take (rows of 1 to 40 outputs: one partial segment, whole
    /// segments, both; taps 1x1 to 5x5; uneven padding; 1 to 16 channel pairs) against the
    /// definition in f64, and one thread against two bit for bit.
    #[test]
    fn matches_the_definition_at_random_shapes_for_any_thread_count() {
        if !crate::kernels::gemm::GemmKernel::Avx512.is_supported() {
            return;
        }
        let mut numbers = SplitMix(11);
        let mut checked = 0;
        for _ in 0..60 {
            let kernel = [1 + numbers.below(5), 1 + numbers.below(5)];
            let padding = [
                [numbers.below(3), numbers.below(3)],
                [numbers.below(3), numbers.below(3)],
            ];
            let out_size = [1 + numbers.below(12), 1 + numbers.below(40)];
            let in_size = [0, 1].map(|axis| {
                (out_size[axis] + kernel[axis] - 1)
                    .saturating_sub(padding[axis][0] + padding[axis][1])
                    .max(1)
            });
            let out_channels = 1 + numbers.below(4);
            let geometry = Conv2dWeightGradientGeometry {
                batch: 1 + numbers.below(3),
                in_channels: 1 + numbers.below(16 / out_channels),
                out_channels,
                in_size,
                kernel,
                stride: [1, 1],
                padding,
                dilation: [1, 1],
                groups: 1,
            };
            if geometry.out_size().is_err() {
                continue;
            }
            assert!(applies(&geometry), "{geometry:?}");
            let [input_len, gradient_len, weight_len] = geometry.tensor_lens().unwrap();
            let input = values(&mut numbers, input_len);
            let gradient = values(&mut numbers, gradient_len);
            let expected = reference(&geometry, &input, &gradient);
            let mut scratch = vec![0.0; geometry.scratch_len().unwrap()];
            let mut results = Vec::new();
            for threads in [1, 2] {
                let mut weight_gradient = vec![f32::NAN; weight_len];
                conv2d_weight_gradient(
                    &geometry,
                    &input,
                    &gradient,
                    &mut weight_gradient,
                    &mut scratch,
                    threads,
                )
                .unwrap();
                for (ours, exact) in weight_gradient.iter().zip(&expected) {
                    let error = (*ours as f64 - exact).abs() / (1.0 + exact.abs());
                    assert!(error <= 1e-5, "{geometry:?}: {ours} against {exact}");
                }
                results.push(weight_gradient);
            }
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&results[0]), bits(&results[1]), "{geometry:?}");
            checked += 1;
        }
        assert!(checked >= 50, "only {checked} shapes were valid");
    }
}
