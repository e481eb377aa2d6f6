//! Pooling, its argmax and depthwise transposed convolutions (average pooling's gradient) on
//! planes wide enough for their specialized loops: 2x2 and 3x3 windows at strides 1 and 2 in
//! blocks of eight neighbouring windows, rows too narrow for a block, padded borders, ceil_mode,
//! both divisor rules and overrides, dilation, NaN and signed zeros.
//!
//! References are plain loops written here from PyTorch's definitions, in f32 and in PyTorch's
//! order of operations, so results must match bit for bit: a max-pooling window takes its taps
//! inside the input in row-major order, and a tap replaces the maximum when it is larger or NaN
//! (so the last NaN wins, and of equal zeros the first); average pooling adds the taps inside the
//! input in row-major order starting from +0 and divides by the window's divisor; a depthwise
//! transposed convolution starts every output at its bias and adds `weight * input` one tap after
//! another. Max pooling's argmax is checked against the f64 reference interpreter, which has the
//! same first-maximum rule. Every kernel runs at 1 and 2 threads.

#[allow(dead_code)]
mod runtime_common;

use nnc::ir::ElementType;
use nnc::kernels::conv::{conv_transpose2d, ConvTranspose2dGeometry};
use nnc::kernels::pool::{avg_pool2d, max_pool2d, Pool2dGeometry};
use nnc::prim::{Pool2dParams, PoolKind, PrimOp};
use nnc::tensor::Tensor;
use runtime_common::{Case, Rng};

/// Quiet NaNs with distinct payloads, so a test can tell which NaN a window returned.
fn nan_with_payload(payload: u32) -> f32 {
    f32::from_bits(0x7fc0_0000 | (payload & 0x3f_ffff))
}

/// Values in [-1, 1) with a few NaNs (distinct payloads), infinities and signed zeros when asked.
fn plane_values(rng: &mut Rng, len: usize, special: bool) -> Vec<f32> {
    (0..len)
        .map(|index| match (special, rng.int(0, 39)) {
            (true, 0) => nan_with_payload(index as u32 + 1),
            (true, 1) => f32::NEG_INFINITY,
            (true, 2) => -0.0,
            (true, 3) => 0.0,
            _ => rng.float(-1.0, 1.0),
        })
        .collect()
}

/// A random pooling geometry: mostly the specialized 2x2 and 3x3 kernels, sometimes any kernel
/// of 1 to 4 taps with any stride (and dilation for max pooling).
fn random_pool_geometry(rng: &mut Rng, case: usize, average: bool) -> Pool2dGeometry {
    let (kernel, stride) = match case % 4 {
        0 => ([2, 2], [2, 2]),
        1 => ([3, 3], [rng.int(1, 2), 2]),
        2 => ([rng.int(2, 3); 2], [rng.int(1, 3), 1]),
        _ => (
            [rng.int(1, 4), rng.int(1, 4)],
            [rng.int(1, 3), rng.int(1, 3)],
        ),
    };
    let dilation = if average || case % 8 != 7 {
        [1, 1]
    } else {
        [rng.int(1, 2), rng.int(1, 2)]
    };
    let extent = [0, 1].map(|axis| dilation[axis] * (kernel[axis] - 1) + 1);
    Pool2dGeometry {
        batch: rng.int(1, 2),
        channels: rng.int(1, 3),
        // Up to 40 columns: rows of windows from one to a few blocks, with a remainder.
        in_size: [rng.int(extent[0], 24), rng.int(extent[1], 40)],
        kernel,
        stride,
        padding: extent.map(|extent| rng.int(0, extent / 2)),
        dilation,
        ceil_mode: rng.coin(),
    }
}

/// Every window's taps inside the input, in row-major window order, as flat indices into the
/// input, per output element; also the window's size clipped to the padded input.
fn windows_of(geometry: &Pool2dGeometry) -> Vec<(Vec<usize>, usize)> {
    let [out_height, out_width] = geometry.out_size().unwrap();
    let [height, width] = geometry.in_size.map(|size| size as isize);
    let mut windows = Vec::new();
    for plane in 0..geometry.batch * geometry.channels {
        for (out_row, out_column) in
            (0..out_height).flat_map(|y| (0..out_width).map(move |x| (y, x)))
        {
            let start = [
                (out_row * geometry.stride[0]) as isize - geometry.padding[0] as isize,
                (out_column * geometry.stride[1]) as isize - geometry.padding[1] as isize,
            ];
            let mut taps = Vec::new();
            for tap_row in 0..geometry.kernel[0] {
                for tap_column in 0..geometry.kernel[1] {
                    let row = start[0] + (tap_row * geometry.dilation[0]) as isize;
                    let column = start[1] + (tap_column * geometry.dilation[1]) as isize;
                    if (0..height).contains(&row) && (0..width).contains(&column) {
                        taps.push(
                            plane * (height * width) as usize + (row * width + column) as usize,
                        );
                    }
                }
            }
            let padded_count: usize = [0, 1]
                .map(|axis| {
                    let end = (start[axis] + geometry.kernel[axis] as isize)
                        .min((geometry.in_size[axis] + geometry.padding[axis]) as isize);
                    (end - start[axis]) as usize
                })
                .iter()
                .product();
            windows.push((taps, padded_count));
        }
    }
    windows
}

/// Asserts equal bits. Which NaN an addition returns depends on the order of its operands,
/// which the compiler may swap, so sums only have to be NaN where the reference is; maxima are
/// chosen, not computed, so `exact_nans` holds them to the reference's NaN.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32], exact_nans: bool) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (index, (got, want)) in got.iter().zip(want).enumerate() {
        let same =
            got.to_bits() == want.to_bits() || (!exact_nans && got.is_nan() && want.is_nan());
        assert!(
            same,
            "{what}: element {index} is {got} ({:#x}), want {want} ({:#x})",
            got.to_bits(),
            want.to_bits()
        );
    }
}

#[test]
fn max_pooling_takes_pytorchs_maximum_bit_for_bit() {
    let mut rng = Rng(31);
    for case in 0..160 {
        let geometry = random_pool_geometry(&mut rng, case, false);
        let [input_len, _] = geometry.tensor_lens().unwrap();
        let input = plane_values(&mut rng, input_len, case % 3 == 0);
        let reference: Vec<f32> = windows_of(&geometry)
            .iter()
            .map(|(taps, _)| {
                taps.iter().fold(f32::NEG_INFINITY, |maximum, &tap| {
                    let value = input[tap];
                    if value > maximum || value.is_nan() {
                        value
                    } else {
                        maximum
                    }
                })
            })
            .collect();
        for threads in [1, 2] {
            let mut output = vec![123.0; reference.len()];
            max_pool2d(&geometry, &input, &mut output, threads).unwrap();
            assert_same_bits(
                &format!("{geometry:?} at {threads} threads"),
                &output,
                &reference,
                true,
            );
        }
    }
}

#[test]
fn average_pooling_sums_and_divides_as_pytorch_bit_for_bit() {
    let mut rng = Rng(32);
    for case in 0..160 {
        let geometry = random_pool_geometry(&mut rng, case, true);
        let count_include_pad = rng.coin();
        let divisor_override = (case % 5 == 4).then(|| rng.int(1, 7));
        let [input_len, _] = geometry.tensor_lens().unwrap();
        let input = plane_values(&mut rng, input_len, case % 3 == 0);
        let reference: Vec<f32> = windows_of(&geometry)
            .iter()
            .map(|(taps, padded_count)| {
                let sum = taps.iter().fold(0.0f32, |sum, &tap| sum + input[tap]);
                let count = if count_include_pad {
                    *padded_count
                } else {
                    taps.len()
                };
                sum / divisor_override.unwrap_or(count) as f32
            })
            .collect();
        for threads in [1, 2] {
            let mut output = vec![123.0; reference.len()];
            avg_pool2d(
                &geometry,
                count_include_pad,
                divisor_override,
                &input,
                &mut output,
                threads,
            )
            .unwrap();
            let what = format!(
                "{geometry:?} count_include_pad {count_include_pad} override \
                 {divisor_override:?} at {threads} threads"
            );
            assert_same_bits(&what, &output, &reference, false);
        }
    }
}

/// A depthwise transposed convolution by its definition, in PyTorch's order: every output starts
/// at its bias (or 0), then each tap in row-major order adds `weight * input` to the outputs it
/// reaches.
fn depthwise_transposed_reference(
    geometry: &ConvTranspose2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let [out_height, out_width] = geometry.out_size;
    let [height, width] = geometry.in_size;
    let channels = geometry.out_channels;
    let mut output = vec![0.0f32; geometry.batch * channels * out_height * out_width];
    for plane in 0..geometry.batch * channels {
        let channel = plane % channels;
        let out_plane = &mut output[plane * out_height * out_width..][..out_height * out_width];
        out_plane.fill(bias.map_or(0.0, |bias| bias[channel]));
        for (tap_row, tap_column) in (0..geometry.kernel[0]).flat_map(|tap_row| {
            (0..geometry.kernel[1]).map(move |tap_column| (tap_row, tap_column))
        }) {
            let tap_weight =
                weight[(channel * geometry.kernel[0] + tap_row) * geometry.kernel[1] + tap_column];
            for (row, column) in
                (0..height).flat_map(|row| (0..width).map(move |column| (row, column)))
            {
                let out_row = (row * geometry.stride[0] + tap_row * geometry.dilation[0]) as isize
                    - geometry.padding[0] as isize;
                let out_column = (column * geometry.stride[1] + tap_column * geometry.dilation[1])
                    as isize
                    - geometry.padding[1] as isize;
                if (0..out_height as isize).contains(&out_row)
                    && (0..out_width as isize).contains(&out_column)
                {
                    out_plane[out_row as usize * out_width + out_column as usize] +=
                        tap_weight * input[(plane * height + row) * width + column];
                }
            }
        }
    }
    output
}

#[test]
fn depthwise_transposed_convolutions_add_each_tap_in_order_bit_for_bit() {
    let mut rng = Rng(33);
    let mut checked = 0;
    while checked < 120 {
        // Half the cases have stride equal to the kernel (average pooling's gradient, windows
        // that do not overlap); the others any stride and dilation.
        let kernel = [rng.int(1, 3), rng.int(1, 3)];
        let (stride, dilation) = if checked % 2 == 0 {
            (kernel, [1, 1])
        } else {
            (
                [rng.int(1, 3), rng.int(1, 3)],
                [rng.int(1, 2), rng.int(1, 2)],
            )
        };
        let in_size = [rng.int(1, 12), rng.int(1, 24)];
        let padding = [0, 1].map(|axis| rng.int(0, kernel[axis] / 2 + 1));
        let out_size = [0, 1].map(|axis| {
            let full = (in_size[axis] - 1) * stride[axis] + dilation[axis] * (kernel[axis] - 1) + 1;
            // PyTorch's size with any output padding, or a crop or extra rows as gradients use.
            (full + rng.int(0, stride[axis] + 1)).saturating_sub(2 * padding[axis])
        });
        if out_size.contains(&0) {
            continue;
        }
        let channels = rng.int(1, 4);
        let geometry = ConvTranspose2dGeometry {
            batch: rng.int(1, 2),
            in_channels: channels,
            out_channels: channels,
            in_size,
            kernel,
            stride,
            padding,
            out_size,
            dilation,
            groups: channels,
        };
        let [input_len, weight_len, output_len] = geometry.tensor_lens().unwrap();
        let input = plane_values(&mut rng, input_len, checked % 4 == 1);
        let weight = plane_values(&mut rng, weight_len, false);
        let bias = (checked % 3 != 0).then(|| plane_values(&mut rng, channels, false));
        let reference = depthwise_transposed_reference(&geometry, &input, &weight, bias.as_deref());
        assert_eq!(geometry.scratch_len().unwrap(), 0, "{geometry:?}");
        for threads in [1, 2] {
            let mut output = vec![123.0; output_len];
            conv_transpose2d(
                &geometry,
                &input,
                &weight,
                bias.as_deref(),
                &mut output,
                threads,
            )
            .unwrap();
            assert_same_bits(
                &format!("{geometry:?} at {threads} threads"),
                &output,
                &reference,
                false,
            );
        }
        checked += 1;
    }
}

/// `max_pool2d_argmax` on values from a few levels (so windows tie often, and the first maximum
/// must win), some with NaNs and -inf, at geometries with wide rows: resnet's 3x3/2 padded by 1,
/// 2x2/2, 3x3/1 and others; the runtime's indices must equal the interpreter's exactly.
#[test]
fn max_pool_argmax_on_wide_planes_matches_the_interpreter_exactly() {
    let mut rng = Rng(34);
    let mut checked = 0;
    while checked < 48 {
        let (kernel, stride, padding) = match checked % 4 {
            0 => ([3, 3], [2, 2], [1, 1]),
            1 => ([2, 2], [2, 2], [0, 0]),
            2 => ([3, 3], [1, 1], [rng.int(0, 1), rng.int(0, 1)]),
            _ => {
                let kernel = [rng.int(1, 4), rng.int(1, 4)];
                (
                    kernel,
                    [rng.int(1, 3), rng.int(1, 3)],
                    [rng.int(0, kernel[0] / 2), rng.int(0, kernel[1] / 2)],
                )
            }
        };
        let params = Pool2dParams {
            kind: PoolKind::Max,
            kernel,
            stride,
            padding,
            dilation: if checked % 8 == 7 {
                [rng.int(1, 2), rng.int(1, 2)]
            } else {
                [1, 1]
            },
            ceil_mode: rng.coin(),
        };
        let shape = vec![rng.int(1, 2), rng.int(1, 3), rng.int(3, 20), rng.int(3, 40)];
        let levels = rng.int(1, 4);
        let special = checked % 3 == 2;
        let data: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| match (special, rng.int(0, 19)) {
                (true, 0) => f32::NAN,
                (true, 1) => f32::NEG_INFINITY,
                _ => rng.int(0, levels) as f32 - 1.0,
            })
            .collect();
        let mut case = Case::new(format!("{shape:?} {params:?}"));
        let x = case.input_values(
            Tensor::from_vec(&shape, data).unwrap(),
            ElementType::Float32,
        );
        let op = PrimOp::MaxPool2dArgmax(params.clone());
        let Ok(argmax) = case.graph.add(op, &[x], runtime_common::origin()) else {
            continue; // The window does not fit: draw another geometry.
        };
        case.output(argmax);
        checked += 1;
        runtime_common::assert_exactly_like_the_interpreter(&case);
    }
}
