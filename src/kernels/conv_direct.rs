//! Direct convolution for a few output channels (LeNet's first layer: 1 -> 6 channels, 5x5):
//! each output row of up to 32 pixels is accumulated in registers for every output channel at
//! once, tap by tap, straight from a zero-padded copy of the image. As a GEMM such a convolution
//! has a single row tile, so every packed float of its column matrix feeds only as many
//! multiply-adds as there are output channels and packing is most of the time (lenet5's first
//! convolution: 550 us as a GEMM at batch 64, about a quarter of that directly).
//!
//! Each output element sums its taps in one fixed order (input channel, tap row, tap column),
//! whatever thread computes its image, so results do not depend on the thread count.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::conv::{copy_padded_planes, Conv2dGeometry};
use super::parallel::{part_range, run_parallel, SharedMutPtr};

/// The most output channels the direct kernel takes (two zmm accumulators each).
const MAX_OUTPUT_CHANNELS: usize = 8;
/// The narrowest output rows it takes. Each tap broadcasts one weight per output channel, so
/// with one vector per row the broadcasts, not the multiply-adds, set the pace: LeNet's second
/// convolution (16 channels, 10-pixel rows) took 700 us this way against 420 us as a GEMM, and its
/// input gradient (6 channels, 14-pixel rows) 0.8 ms against 0.5 ms.
const MIN_OUTPUT_WIDTH: usize = LANES + 1;
/// Floats per zmm vector.
const LANES: usize = 16;

/// Whether this CPU and geometry take the direct kernel: AVX-512, one group, stride and dilation
/// 1, output rows of 17 to 32 pixels (two vectors) and at most 8 output channels.
pub(super) fn applies(geometry: &Conv2dGeometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Ok([_, out_width]) = geometry.out_size() else {
            return false;
        };
        crate::kernels::gemm::GemmKernel::Avx512.is_supported()
            && geometry.groups == 1
            && geometry.stride == [1, 1]
            && geometry.dilation == [1, 1]
            && (MIN_OUTPUT_WIDTH..=2 * LANES).contains(&out_width)
            && geometry.out_channels <= MAX_OUTPUT_CHANNELS
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = geometry;
        false
    }
}

/// Runs the convolution (buffers checked by the caller against the geometry; `applies` true).
pub(super) fn direct_conv2d(
    geometry: &Conv2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    threads: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let Ok(out_size) = geometry.out_size() else {
            return;
        };
        let in_image_len = geometry.in_channels * geometry.in_size[0] * geometry.in_size[1];
        let out_image_len = geometry.out_channels * out_size[0] * out_size[1];
        let output_data = SharedMutPtr(output.as_mut_ptr());
        let parts = threads.min(geometry.batch).max(1);
        run_parallel(parts, &|part| {
            let padded_size = [
                geometry.in_size[0] + 2 * geometry.padding[0],
                geometry.in_size[1] + 2 * geometry.padding[1],
            ];
            let mut padded = vec![0.0f32; geometry.in_channels * padded_size[0] * padded_size[1]];
            for image in part_range(geometry.batch, parts, part) {
                copy_padded_planes(
                    &input[image * in_image_len..(image + 1) * in_image_len],
                    geometry.in_size,
                    geometry.padding_pairs(),
                    &mut padded,
                );
                // SAFETY: each part writes only its own images of the checked output.
                let image_output = unsafe {
                    std::slice::from_raw_parts_mut(
                        output_data.get().add(image * out_image_len),
                        out_image_len,
                    )
                };
                let sizes = (out_size, padded_size);
                let operands = (&padded[..], weight, bias);
                // SAFETY: `applies` checked AVX-512 and the sizes. A constant channel count lets
                // the accumulators live in registers.
                unsafe { convolve_image_dispatch(geometry, sizes, operands, image_output) };
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (geometry, input, weight, bias, output, threads);
    }
}

/// [`convolve_image`] for the geometry's channel count, two vectors per row.
///
/// # Safety
/// As [`convolve_image`].
#[cfg(target_arch = "x86_64")]
unsafe fn convolve_image_dispatch(
    geometry: &Conv2dGeometry,
    sizes: ([usize; 2], [usize; 2]),
    operands: (&[f32], &[f32], Option<&[f32]>),
    output: &mut [f32],
) {
    macro_rules! by_channels {
        ($vectors:literal; $($channels:literal)*) => {
            match geometry.out_channels {
                $($channels => unsafe {
                    convolve_image::<$channels, $vectors>(geometry, sizes, operands, output)
                },)*
                _ => unreachable!("`applies` bounds the output channels"),
            }
        };
    }
    by_channels!(2; 1 2 3 4 5 6 7 8)
}

/// Every output row of one image: all output channels' two vectors of the row accumulate in
/// registers over the input channels and taps.
///
/// # Safety
/// The CPU supports AVX-512F; `padded` holds the padded image, `weight` and `output` the
/// geometry's sizes, there are `OUT_CHANNELS` output channels and out rows are at most
/// `VECTORS` vectors wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn convolve_image<const OUT_CHANNELS: usize, const VECTORS: usize>(
    geometry: &Conv2dGeometry,
    ([out_height, out_width], [padded_height, padded_width]): ([usize; 2], [usize; 2]),
    (padded, weight, bias): (&[f32], &[f32], Option<&[f32]>),
    output: &mut [f32],
) {
    let [kernel_height, kernel_width] = geometry.kernel;
    let taps_per_channel = kernel_height * kernel_width;
    let taps = geometry.in_channels * taps_per_channel;
    let masks = [
        ((1u32 << out_width.min(LANES)) - 1) as __mmask16,
        ((1u32 << out_width.saturating_sub(LANES)) - 1) as __mmask16,
    ];
    let plane = padded_height * padded_width;
    for out_row in 0..out_height {
        let mut sums = [[_mm512_setzero_ps(); VECTORS]; OUT_CHANNELS];
        if let Some(bias) = bias {
            for (channel, sum) in sums.iter_mut().enumerate() {
                *sum = [_mm512_set1_ps(bias[channel]); VECTORS];
            }
        }
        for in_channel in 0..geometry.in_channels {
            for tap_row in 0..kernel_height {
                let row_start = in_channel * plane + (out_row + tap_row) * padded_width;
                for tap_col in 0..kernel_width {
                    let source = padded[row_start + tap_col..].as_ptr();
                    // SAFETY: lanes below the output width read padded columns
                    // `tap_col..tap_col + out_width`, inside the padded row.
                    let mut values = [_mm512_setzero_ps(); VECTORS];
                    for (vector, value) in values.iter_mut().enumerate() {
                        *value = unsafe {
                            _mm512_maskz_loadu_ps(
                                masks[vector],
                                source.wrapping_add(vector * LANES),
                            )
                        };
                    }
                    let tap = in_channel * taps_per_channel + tap_row * kernel_width + tap_col;
                    for (channel, sum) in sums.iter_mut().enumerate() {
                        let tap_weight = _mm512_set1_ps(weight[channel * taps + tap]);
                        for (vector_sum, value) in sum.iter_mut().zip(values) {
                            *vector_sum = _mm512_fmadd_ps(tap_weight, value, *vector_sum);
                        }
                    }
                }
            }
        }
        for (channel, sum) in sums.iter().enumerate() {
            let target = output[(channel * out_height + out_row) * out_width..].as_mut_ptr();
            // SAFETY: lanes below the output width write this output row.
            for (vector, vector_sum) in sum.iter().enumerate() {
                unsafe {
                    _mm512_mask_storeu_ps(
                        target.wrapping_add(vector * LANES),
                        masks[vector],
                        *vector_sum,
                    )
                };
            }
        }
    }
}
