//! Stride-1 transposed convolutions run as ordinary convolutions: with stride 1,
//! `y[n, o, oy, ox] = sum_{c, ky, kx} x[n, c, oy + p - ky*d, ox + p - kx*d] * w[c, o, ky, kx]` is
//! a convolution of `x` padded by `d*(k-1) - p` with the kernel flipped in both axes and its two
//! channel axes swapped. The convolution reads its input in place through offset tables
//! (`conv.rs`), while the general transposed convolution writes a column matrix nine times its
//! output and scatters it back (col2im): the input gradients of resnet18's 3x3 convolutions,
//! which are all stride-1 transposed convolutions, spent as long in that packing and scatter as
//! in their arithmetic.

use super::conv::{conv2d_with_weight, Conv2dGeometry, ConvWeight};
use super::conv_direct;
use super::conv_direct_channels;
use super::conv_transpose::ConvTranspose2dGeometry;
use super::KernelError;

/// Output channels per group below which the transposed convolution keeps its GEMM and col2im.
const MIN_OUTPUT_CHANNELS: usize = 16;

/// A stride-1 transposed convolution recast as the convolution that computes it.
pub(super) struct StrideOneTransposedConvolution {
    convolution: Conv2dGeometry,
}

impl StrideOneTransposedConvolution {
    /// The equivalent convolution, when the transposed convolution has stride 1 and the output
    /// size that a symmetric padding of its input gives (PyTorch's size without output padding).
    pub(super) fn new(
        geometry: &ConvTranspose2dGeometry,
    ) -> Option<StrideOneTransposedConvolution> {
        // Depthwise ones have their own direct loops, which read the weight as it is.
        let depthwise =
            geometry.in_channels == geometry.groups && geometry.out_channels == geometry.groups;
        if geometry.stride != [1, 1] || depthwise {
            return None;
        }
        let mut padding = [0; 2];
        for (axis, axis_padding) in padding.iter_mut().enumerate() {
            let extent = geometry.dilation[axis] * (geometry.kernel[axis].max(1) - 1);
            let reversed_padding = extent.checked_sub(geometry.padding[axis])?;
            if geometry.in_size[axis] + reversed_padding * 2 - extent != geometry.out_size[axis] {
                return None;
            }
            *axis_padding = reversed_padding;
        }
        let convolution = Conv2dGeometry {
            batch: geometry.batch,
            in_channels: geometry.in_channels,
            out_channels: geometry.out_channels,
            in_size: geometry.in_size,
            kernel: geometry.kernel,
            stride: [1, 1],
            padding,
            dilation: geometry.dilation,
            groups: geometry.groups,
        };
        // With few output channels the convolution's GEMM has a row or two of tiles, and
        // packing its input through the offset tables costs more than the arithmetic it feeds
        // (LeNet's second input gradient, 16 -> 6 channels: 1.8 ms this way against 0.5 ms as a
        // GEMM and col2im), unless a direct kernel takes it.
        let few_outputs = geometry.out_channels / geometry.groups.max(1) < MIN_OUTPUT_CHANNELS;
        if few_outputs
            && !conv_direct::applies(&convolution)
            && !conv_direct_channels::beats_transposed_gemm(&convolution)
        {
            return None;
        }
        Some(StrideOneTransposedConvolution { convolution })
    }

    /// The scratch floats [`Self::run`] needs: the convolution's, or the flipped weight for the
    /// direct kernel.
    pub(super) fn scratch_len(&self) -> Result<usize, KernelError> {
        if conv_direct::applies(&self.convolution) {
            let [_, weight_len, _] = self.convolution.tensor_lens()?;
            return Ok(weight_len);
        }
        self.convolution.scratch_len()
    }

    /// Runs the transposed convolution; the buffers were checked against its geometry. The
    /// convolution reads the weight flipped and with its channel axes swapped through offset
    /// tables, so no flipped copy is written (a copy of resnet18's weights on every training
    /// step cost 7% of the step: they change every step and are read once).
    pub(super) fn run(
        &self,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        output: &mut [f32],
        scratch: &mut [f32],
        threads: usize,
    ) -> Result<(), KernelError> {
        if conv_direct::applies(&self.convolution) {
            // The direct kernel reads a plain weight: flip this small one (at most 8 output
            // channels) into the scratch.
            let [_, weight_len, _] = self.convolution.tensor_lens()?;
            let flipped = &mut scratch[..weight_len];
            self.flip_weight(weight, flipped);
            return conv2d_with_weight(
                &self.convolution,
                input,
                ConvWeight::Plain(flipped),
                bias,
                output,
                &mut [],
                threads,
            );
        }
        conv2d_with_weight(
            &self.convolution,
            input,
            ConvWeight::TransposedAndFlipped(weight),
            bias,
            output,
            scratch,
            threads,
        )
    }

    /// `flipped[g*O/g + o, c, t] = weight[g*C/g + c, o, taps-1-t]`: the transposed convolution's
    /// `[C, O/g, kh, kw]` weight as the convolution's `[O, C/g, kh, kw]`.
    fn flip_weight(&self, weight: &[f32], flipped: &mut [f32]) {
        let geometry = &self.convolution;
        let taps = geometry.kernel[0] * geometry.kernel[1];
        let group_in = geometry.in_channels / geometry.groups;
        let group_out = geometry.out_channels / geometry.groups;
        for group in 0..geometry.groups {
            for out_channel in 0..group_out {
                for in_channel in 0..group_in {
                    let source = ((group * group_in + in_channel) * group_out + out_channel) * taps;
                    let target = ((group * group_out + out_channel) * group_in + in_channel) * taps;
                    for tap in 0..taps {
                        flipped[target + tap] = weight[source + taps - 1 - tap];
                    }
                }
            }
        }
    }
}
