//! Matrix multiplication, convolutions and pooling, each as the textbook loop nest over every
//! output element (or, for the transposed convolution, every input element it scatters).

use super::elementwise::{broadcast_position, unravel};
use crate::prim::{
    Conv2dParams, Conv2dWeightGradientParams, ConvTranspose2dParams, Pool2dParams, PoolKind,
};
use crate::tensor::Tensor;

/// `[..., M, K] x [..., K, P]` with broadcast batch dims.
pub(super) fn matmul(a: &Tensor<f64>, b: &Tensor<f64>, shape: &[usize]) -> Tensor<f64> {
    let (a_rank, b_rank, rank) = (a.shape.len(), b.shape.len(), shape.len());
    let (m, k, p) = (
        a.shape[a_rank - 2],
        a.shape[a_rank - 1],
        b.shape[b_rank - 1],
    );
    let batch_shape = &shape[..rank - 2];
    let batch_count: usize = batch_shape.iter().product();
    let mut out = Tensor::zeros(shape);
    for batch in 0..batch_count {
        let batch_index = unravel(batch, batch_shape);
        let a_start = broadcast_position(&batch_index, &a.shape[..a_rank - 2]) * m * k;
        let b_start = broadcast_position(&batch_index, &b.shape[..b_rank - 2]) * k * p;
        for row in 0..m {
            for column in 0..p {
                let mut sum = 0.0;
                for inner in 0..k {
                    sum += a.data[a_start + row * k + inner] * b.data[b_start + inner * p + column];
                }
                out.data[(batch * m + row) * p + column] = sum;
            }
        }
    }
    out
}

/// Element `[i0, i1, i2, i3]` of a rank-4 tensor.
fn at(tensor: &Tensor<f64>, index: [usize; 4]) -> f64 {
    let s = &tensor.shape;
    tensor.data[((index[0] * s[1] + index[1]) * s[2] + index[2]) * s[3] + index[3]]
}

fn position(shape: &[usize], index: [usize; 4]) -> usize {
    ((index[0] * shape[1] + index[1]) * shape[2] + index[2]) * shape[3] + index[3]
}

/// The input coordinate `start + tap * dilation` if it lies in `0..size`.
fn inside(start: isize, tap: usize, dilation: usize, size: usize) -> Option<usize> {
    let coordinate = start + (tap * dilation) as isize;
    (0..size as isize)
        .contains(&coordinate)
        .then_some(coordinate as usize)
}

pub(super) fn conv2d(
    params: &Conv2dParams,
    x: &Tensor<f64>,
    w: &Tensor<f64>,
    shape: &[usize],
) -> Tensor<f64> {
    let [batch, channels, height, width] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [_, group_channels, kernel_h, kernel_w] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
    let [outputs, out_h, out_w] = [shape[1], shape[2], shape[3]];
    let group_outputs = outputs / params.groups;
    debug_assert_eq!(group_channels * params.groups, channels);
    let mut out = Tensor::zeros(shape);
    for n in 0..batch {
        for o in 0..outputs {
            let group = o / group_outputs;
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let start_y = (oy * params.stride[0]) as isize - params.padding[0][0] as isize;
                    let start_x = (ox * params.stride[1]) as isize - params.padding[1][0] as isize;
                    let mut sum = 0.0;
                    for ci in 0..group_channels {
                        let c = group * group_channels + ci;
                        for ky in 0..kernel_h {
                            let Some(y) = inside(start_y, ky, params.dilation[0], height) else {
                                continue;
                            };
                            for kx in 0..kernel_w {
                                let Some(xx) = inside(start_x, kx, params.dilation[1], width)
                                else {
                                    continue;
                                };
                                sum += at(x, [n, c, y, xx]) * at(w, [o, ci, ky, kx]);
                            }
                        }
                    }
                    out.data[position(shape, [n, o, oy, ox])] = sum;
                }
            }
        }
    }
    out
}

/// `dw[o, c, ky, kx] = sum_{n, oy, ox} g[n, o, oy, ox] * x[n, group(o)*C/groups + c, y, x]`
/// with `y = oy*S - top + ky*D` (column likewise), straight from the definition.
pub(super) fn conv2d_weight_gradient(
    params: &Conv2dWeightGradientParams,
    x: &Tensor<f64>,
    g: &Tensor<f64>,
    shape: &[usize],
) -> Tensor<f64> {
    let conv = &params.conv;
    let [batch, _, height, width] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [out_h, out_w] = [g.shape[2], g.shape[3]];
    let [outputs, group_channels, kernel_h, kernel_w] = [shape[0], shape[1], shape[2], shape[3]];
    let group_outputs = outputs / conv.groups;
    let mut out = Tensor::zeros(shape);
    for o in 0..outputs {
        let group = o / group_outputs;
        for ci in 0..group_channels {
            let c = group * group_channels + ci;
            for ky in 0..kernel_h {
                for kx in 0..kernel_w {
                    let mut sum = 0.0;
                    for n in 0..batch {
                        for oy in 0..out_h {
                            let start_y =
                                (oy * conv.stride[0]) as isize - conv.padding[0][0] as isize;
                            let Some(y) = inside(start_y, ky, conv.dilation[0], height) else {
                                continue;
                            };
                            for ox in 0..out_w {
                                let start_x =
                                    (ox * conv.stride[1]) as isize - conv.padding[1][0] as isize;
                                let Some(xx) = inside(start_x, kx, conv.dilation[1], width) else {
                                    continue;
                                };
                                sum += at(g, [n, o, oy, ox]) * at(x, [n, c, y, xx]);
                            }
                        }
                    }
                    out.data[position(shape, [o, ci, ky, kx])] = sum;
                }
            }
        }
    }
    out
}

/// Each input element adds `x * w` to output row `iy*S - P + ky*D`, column likewise.
pub(super) fn conv_transpose2d(
    params: &ConvTranspose2dParams,
    x: &Tensor<f64>,
    w: &Tensor<f64>,
    shape: &[usize],
) -> Tensor<f64> {
    let [batch, channels, height, width] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [_, group_outputs, kernel_h, kernel_w] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
    let [out_h, out_w] = [shape[2], shape[3]];
    let group_channels = channels / params.groups;
    let mut out = Tensor::zeros(shape);
    for n in 0..batch {
        for c in 0..channels {
            let group = c / group_channels;
            for iy in 0..height {
                for ix in 0..width {
                    let value = at(x, [n, c, iy, ix]);
                    let start_y = (iy * params.stride[0]) as isize - params.padding[0] as isize;
                    let start_x = (ix * params.stride[1]) as isize - params.padding[1] as isize;
                    for oi in 0..group_outputs {
                        let o = group * group_outputs + oi;
                        for ky in 0..kernel_h {
                            let Some(oy) = inside(start_y, ky, params.dilation[0], out_h) else {
                                continue;
                            };
                            for kx in 0..kernel_w {
                                let Some(ox) = inside(start_x, kx, params.dilation[1], out_w)
                                else {
                                    continue;
                                };
                                out.data[position(shape, [n, o, oy, ox])] +=
                                    value * at(w, [c, oi, ky, kx]);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Max or average over each window. Windows start at `o*S - P`; taps outside the input are
/// skipped. The average divides by the taps inside the padded input (`count_include_pad`) or
/// inside the input, as PyTorch's `avg_pool2d`.
/// The flat index into `x` of each max-pooling window's first maximal tap (PyTorch's rule: a
/// tap replaces the running maximum when it is larger or NaN; the first tap inside the input
/// starts it, so padding never wins).
pub(super) fn max_pool2d_argmax(
    params: &Pool2dParams,
    x: &Tensor<f64>,
    shape: &[usize],
) -> Tensor<f64> {
    let [batch, channels, height, width] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [out_h, out_w] = [shape[2], shape[3]];
    let [pad_h, pad_w] = params.padding.map(|pad| pad as isize);
    let mut out = Tensor::zeros(shape);
    for n in 0..batch {
        for c in 0..channels {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let start_y = (oy * params.stride[0]) as isize - pad_h;
                    let start_x = (ox * params.stride[1]) as isize - pad_w;
                    let mut best: Option<(f64, usize)> = None;
                    for ky in 0..params.kernel[0] {
                        let y = start_y + (ky * params.dilation[0]) as isize;
                        for kx in 0..params.kernel[1] {
                            let xx = start_x + (kx * params.dilation[1]) as isize;
                            if y < 0 || xx < 0 || y >= height as isize || xx >= width as isize {
                                continue;
                            }
                            let at_index = position(&x.shape, [n, c, y as usize, xx as usize]);
                            let value = x.data[at_index];
                            let replaces = match best {
                                None => true,
                                Some((maximum, _)) => value > maximum || value.is_nan(),
                            };
                            if replaces {
                                best = Some((value, at_index));
                            }
                        }
                    }
                    let (_, index) =
                        best.expect("internal error (a bug in nnc): a pooling window is empty");
                    out.data[position(shape, [n, c, oy, ox])] = index as f64;
                }
            }
        }
    }
    out
}

pub(super) fn pool2d(params: &Pool2dParams, x: &Tensor<f64>, shape: &[usize]) -> Tensor<f64> {
    let [batch, channels, height, width] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [out_h, out_w] = [shape[2], shape[3]];
    let [pad_h, pad_w] = params.padding.map(|pad| pad as isize);
    let mut out = Tensor::zeros(shape);
    for n in 0..batch {
        for c in 0..channels {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let start_y = (oy * params.stride[0]) as isize - pad_h;
                    let start_x = (ox * params.stride[1]) as isize - pad_w;
                    let (mut maximum, mut sum, mut inside_count, mut padded_count) =
                        (f64::NEG_INFINITY, 0.0, 0usize, 0usize);
                    for ky in 0..params.kernel[0] {
                        let y = start_y + (ky * params.dilation[0]) as isize;
                        for kx in 0..params.kernel[1] {
                            let xx = start_x + (kx * params.dilation[1]) as isize;
                            if y < height as isize + pad_h && xx < width as isize + pad_w {
                                padded_count += 1;
                            }
                            if y < 0 || xx < 0 || y >= height as isize || xx >= width as isize {
                                continue;
                            }
                            let value = at(x, [n, c, y as usize, xx as usize]);
                            maximum = if value.is_nan() || maximum.is_nan() {
                                f64::NAN
                            } else {
                                maximum.max(value)
                            };
                            sum += value;
                            inside_count += 1;
                        }
                    }
                    out.data[position(shape, [n, c, oy, ox])] = match params.kind {
                        PoolKind::Max => maximum,
                        PoolKind::Average {
                            count_include_pad: true,
                        } => sum / padded_count as f64,
                        PoolKind::Average {
                            count_include_pad: false,
                        } => sum / inside_count as f64,
                    };
                }
            }
        }
    }
    out
}
