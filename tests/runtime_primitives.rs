//! The f32 runtime against the f64 reference interpreter, one primitive op at a time, at random
//! shapes from fixed seeds: elementwise functions (with broadcasting), matmul, convolutions,
//! transposed convolutions, pooling (and max pooling's argmax) and reductions. Layout ops,
//! gather, noise, constants and scans are in `runtime_layout_scan.rs`, edge cases in
//! `runtime_edge_cases.rs`. Each case is a one-op graph over inputs and parameters, run at 1
//! and 2 threads (see `tests/runtime_common` for the metric).

#[allow(dead_code)]
mod runtime_common;

use nnc::ir::ElementType;
use nnc::prim::*;
use nnc::tensor::Tensor;
use runtime_common::{check_cases, Case, Rng};

const UNARY_FUNCTIONS: [UnaryFn; 13] = [
    UnaryFn::Relu,
    UnaryFn::LeakyRelu {
        negative_slope: 0.01,
    },
    UnaryFn::Sigmoid,
    UnaryFn::Tanh,
    UnaryFn::Exp,
    UnaryFn::Log,
    UnaryFn::Sqrt,
    UnaryFn::Neg,
    UnaryFn::Abs,
    UnaryFn::Gelu,
    UnaryFn::Silu,
    UnaryFn::Softplus,
    UnaryFn::Reciprocal,
];

/// The range each function is tested on: its whole interesting domain, without poles.
fn unary_domain(function: UnaryFn) -> (f64, f64) {
    match function {
        UnaryFn::Log | UnaryFn::Sqrt => (0.01, 10.0),
        UnaryFn::Exp => (-8.0, 8.0),
        UnaryFn::Softplus => (-30.0, 30.0),
        UnaryFn::Reciprocal => (0.1, 4.0),
        _ => (-6.0, 6.0),
    }
}

#[test]
fn unary_functions_match_the_interpreter() {
    check_cases("unary", 4 * UNARY_FUNCTIONS.len(), 1, |rng, index| {
        let mut function = UNARY_FUNCTIONS[index % UNARY_FUNCTIONS.len()];
        if let UnaryFn::LeakyRelu { .. } = function {
            function = UnaryFn::LeakyRelu {
                negative_slope: rng.unit() * 0.5,
            };
        }
        // Every fourth case is long (not a multiple of any vector width) to reach vector loops.
        let shape = if index / UNARY_FUNCTIONS.len() == 3 {
            vec![3, 347]
        } else {
            rng.any_shape(0, 4, 6)
        };
        let (low, high) = unary_domain(function);
        let count = shape.iter().product();
        let mut data = rng.values(count, low, high);
        if function == UnaryFn::Reciprocal {
            data.iter_mut().for_each(|value| {
                if rng.coin() {
                    *value = -*value
                }
            });
        }
        let mut case = Case::new(format!("{} {shape:?}", function.name()));
        let x = if [1, 2, 4].contains(&shape.len()) && rng.coin() {
            case.parameter_values(Tensor::from_vec(&shape, data).unwrap())
        } else {
            case.input_values(
                Tensor::from_vec(&shape, data).unwrap(),
                nnc::ir::ElementType::Float32,
            )
        };
        case.finish(PrimOp::Unary(function), &[x])
    });
}

/// Two operand shapes broadcasting to `output` in one of several patterns: equal, a scalar on
/// either side, per-channel `[C, 1, 1]`, a middle axis, trailing-dim vectors, both sides
/// broadcasting, and random dims set to 1.
fn broadcast_pair(rng: &mut Rng, pattern: usize, output: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let rank = output.len();
    let ones_except = |keep: &[usize]| -> Vec<usize> {
        (0..rank)
            .map(|axis| {
                if keep.contains(&axis) {
                    output[axis]
                } else {
                    1
                }
            })
            .collect()
    };
    let full = output.to_vec();
    match pattern {
        0 => (full.clone(), full),
        1 => (full, Vec::new()),
        2 => (Vec::new(), full),
        3 => (full, ones_except(&[1])[1..].to_vec()),
        4 => (ones_except(&[0, 2]), full),
        5 => (full, vec![output[rank - 1]]),
        6 => {
            let split = rng.int(0, rank);
            let left = (0..rank)
                .map(|axis| if axis < split { output[axis] } else { 1 })
                .collect();
            (left, ones_except(&(split..rank).collect::<Vec<_>>()))
        }
        _ => {
            let left: Vec<usize> = output
                .iter()
                .map(|size| if rng.coin() { *size } else { 1 })
                .collect();
            let dropped = rng.int(0, rank);
            let right = output[dropped..]
                .iter()
                .map(|size| if rng.coin() { *size } else { 1 })
                .collect();
            (left, right)
        }
    }
}

#[test]
fn binary_functions_broadcast_like_the_interpreter() {
    let functions = [
        BinaryFn::Add,
        BinaryFn::Sub,
        BinaryFn::Mul,
        BinaryFn::Div,
        BinaryFn::Max,
        BinaryFn::Greater,
        BinaryFn::GreaterEqual,
        BinaryFn::Equal,
    ];
    check_cases("binary", 80, 2, |rng, index| {
        let function = functions[index % functions.len()];
        let pattern = (index / functions.len()) % 8;
        let output = if index >= 75 {
            vec![2, 5, 131]
        } else {
            rng.shape(3, 6)
        };
        let (left, right) = broadcast_pair(rng, pattern, &output);
        let mut case = Case::new(format!("{} {left:?} {right:?}", function.name()));
        let a = case.operand(rng, &left);
        let b = if function == BinaryFn::Div {
            // Divisors away from zero: `±[0.5, 2)`.
            let data = (0..right.iter().product())
                .map(|_| rng.float(0.5, 2.0) * if rng.coin() { -1.0 } else { 1.0 })
                .collect();
            case.input_values(
                Tensor::from_vec(&right, data).unwrap(),
                nnc::ir::ElementType::Float32,
            )
        } else {
            case.operand(rng, &right)
        };
        case.finish(PrimOp::Binary(function), &[a, b])
    });
}

/// `max` is NaN when either operand is; so is `reduce_max` over a NaN.
#[test]
fn max_propagates_nan_like_the_interpreter() {
    check_cases("nan max", 6, 3, |rng, index| {
        let shape = vec![2, 9];
        let mut data = rng.values(18, -1.0, 1.0);
        data[index * 3] = f32::NAN;
        let mut case = Case::new(format!("NaN at {}", index * 3));
        let x = case.input_values(
            Tensor::from_vec(&shape, data).unwrap(),
            nnc::ir::ElementType::Float32,
        );
        if index % 2 == 0 {
            let y = case.input(rng, &[9]);
            case.finish(PrimOp::Binary(BinaryFn::Max), &[y, x])
        } else {
            case.finish(
                PrimOp::Reduce {
                    op: ReduceFn::Max,
                    axes: vec![1],
                    keepdim: false,
                },
                &[x],
            )
        }
    });
}

#[test]
fn matmul_with_broadcast_batches_matches_the_interpreter() {
    check_cases("matmul", 44, 4, |rng, index| {
        let (m, k, p) = match index {
            // Large enough for the GEMM to split across two threads.
            40..=41 => (96, 100, 90),
            _ if index % 5 == 0 => (rng.int(1, 9), 1, rng.int(1, 9)),
            _ => (rng.int(1, 20), rng.int(1, 20), rng.int(1, 20)),
        };
        let batch = rng.any_shape(0, 2, 3);
        let thin = |rng: &mut Rng, batch: &[usize]| -> Vec<usize> {
            let kept = rng.int(0, batch.len());
            batch[kept..]
                .iter()
                .map(|size| if rng.coin() { *size } else { 1 })
                .collect()
        };
        let (mut left, mut right) = match index % 4 {
            0 => (batch.clone(), batch.clone()),
            1 => (batch.clone(), Vec::new()),
            2 => (Vec::new(), batch.clone()),
            _ => (thin(rng, &batch), thin(rng, &batch)),
        };
        left.extend([m, k]);
        right.extend([k, p]);
        let mut case = Case::new(format!("{left:?} x {right:?}"));
        let a = case.operand(rng, &left);
        let b = case.operand(rng, &right);
        case.finish(PrimOp::MatMul, &[a, b])
    });
}

#[test]
fn conv2d_with_groups_dilation_and_uneven_padding_matches_the_interpreter() {
    check_cases("conv2d", 42, 5, |rng, index| {
        let large = index >= 40;
        let groups = if large { 1 } else { rng.int(1, 3) };
        let channels = groups * if large { 16 } else { rng.int(1, 3) };
        let outputs = groups * if large { 32 } else { rng.int(1, 3) };
        let kernel = [rng.int(1, 4), rng.int(1, 4)];
        let params = Conv2dParams {
            stride: [rng.int(1, 3), rng.int(1, 3)],
            padding: [
                [rng.int(0, 3), rng.int(0, 3)],
                [rng.int(0, 3), rng.int(0, 3)],
            ],
            dilation: [rng.int(1, 2), rng.int(1, 2)],
            groups: if index % 7 == 6 { channels } else { groups },
        };
        let groups = params.groups;
        let outputs = if groups == channels {
            channels * rng.int(1, 2)
        } else {
            outputs
        };
        // Height and width at least the dilated window, so the output is never empty.
        let size = |axis: usize, rng: &mut Rng| {
            let window = params.dilation[axis] * (kernel[axis] - 1) + 1;
            window.max(if large { 20 } else { rng.int(1, 10) })
        };
        let input_shape = [rng.int(1, 2), channels, size(0, rng), size(1, rng)];
        let weight_shape = [outputs, channels / groups, kernel[0], kernel[1]];
        let mut case = Case::new(format!("{input_shape:?} * {weight_shape:?} {params:?}"));
        let x = case.input(rng, &input_shape);
        let w = case.operand(rng, &weight_shape);
        case.finish(PrimOp::Conv2d(params), &[x, w])
    });
}

/// The weight gradient of the same convolutions: the output gradient has the convolution's
/// output shape, the result the weight's. Batches up to 3, so the sum over images is exercised.
#[test]
fn conv2d_weight_gradient_matches_the_interpreter() {
    check_cases("conv2d_weight_gradient", 42, 5, |rng, index| {
        let large = index >= 40;
        let groups = if large { 1 } else { rng.int(1, 3) };
        let channels = groups * if large { 16 } else { rng.int(1, 3) };
        let outputs = groups * if large { 32 } else { rng.int(1, 3) };
        let kernel = [rng.int(1, 4), rng.int(1, 4)];
        let conv = Conv2dParams {
            stride: [rng.int(1, 3), rng.int(1, 3)],
            padding: [
                [rng.int(0, 3), rng.int(0, 3)],
                [rng.int(0, 3), rng.int(0, 3)],
            ],
            dilation: [rng.int(1, 2), rng.int(1, 2)],
            groups,
        };
        let size = |axis: usize, rng: &mut Rng| {
            let window = conv.dilation[axis] * (kernel[axis] - 1) + 1;
            window.max(if large { 20 } else { rng.int(1, 10) })
        };
        let (height, width) = (size(0, rng), size(1, rng));
        let out_extent = |axis: usize, extent: usize| {
            let padded = extent + conv.padding[axis][0] + conv.padding[axis][1];
            (padded - (conv.dilation[axis] * (kernel[axis] - 1) + 1)) / conv.stride[axis] + 1
        };
        let batch = rng.int(1, 3);
        let input_shape = [batch, channels, height, width];
        let gradient_shape = [batch, outputs, out_extent(0, height), out_extent(1, width)];
        let params = Conv2dWeightGradientParams { conv, kernel };
        let mut case = Case::new(format!("{input_shape:?} / {gradient_shape:?} {params:?}"));
        let x = case.input(rng, &input_shape);
        let g = case.operand(rng, &gradient_shape);
        case.finish(PrimOp::Conv2dWeightGradient(params), &[x, g])
    });
}

/// PyTorch's `conv_transpose2d` geometry: output size `(H-1)S - 2P + D(K-1) + 1 + output_padding`
/// with `output_padding < max(S, D)`, the only sizes lowering produces.
#[test]
fn conv_transpose2d_matches_the_interpreter() {
    check_cases("conv_transpose2d", 36, 6, |rng, index| {
        let large = index >= 34;
        let groups = if large { 1 } else { rng.int(1, 3) };
        let channels = groups * if large { 16 } else { rng.int(1, 3) };
        let group_outputs = if large { 16 } else { rng.int(1, 3) };
        let kernel = [rng.int(1, 4), rng.int(1, 4)];
        let stride = [rng.int(1, 3), rng.int(1, 3)];
        let dilation = [rng.int(1, 2), rng.int(1, 2)];
        let input_size = if large {
            [12, 12]
        } else {
            [rng.int(1, 6), rng.int(1, 6)]
        };
        let mut padding = [0; 2];
        let mut output_size = [0; 2];
        for axis in 0..2 {
            let full =
                (input_size[axis] - 1) * stride[axis] + dilation[axis] * (kernel[axis] - 1) + 1;
            padding[axis] = rng.int(0, (full - 1) / 2);
            let output_padding = rng.int(0, stride[axis].max(dilation[axis]) - 1);
            output_size[axis] = full - 2 * padding[axis] + output_padding;
        }
        let params = ConvTranspose2dParams {
            stride,
            padding,
            dilation,
            groups,
            output_size,
        };
        let input_shape = [rng.int(1, 2), channels, input_size[0], input_size[1]];
        let weight_shape = [channels, group_outputs, kernel[0], kernel[1]];
        let mut case = Case::new(format!("{input_shape:?} * {weight_shape:?} {params:?}"));
        let x = case.input(rng, &input_shape);
        let w = case.operand(rng, &weight_shape);
        case.finish(PrimOp::ConvTranspose2d(params), &[x, w])
    });
}

#[test]
fn pooling_with_ceil_mode_and_padding_matches_the_interpreter() {
    let kinds = [
        PoolKind::Max,
        PoolKind::Average {
            count_include_pad: true,
        },
        PoolKind::Average {
            count_include_pad: false,
        },
    ];
    check_cases("pool2d", 48, 8, |rng, index| {
        let kind = kinds[index % 3];
        let large = index >= 45;
        loop {
            let kernel = [rng.int(1, 4), rng.int(1, 4)];
            let params = Pool2dParams {
                kind,
                kernel,
                stride: [rng.int(1, 3), rng.int(1, 3)],
                // PyTorch allows padding up to half the kernel.
                padding: [rng.int(0, kernel[0] / 2), rng.int(0, kernel[1] / 2)],
                // Average pooling has no dilation in PyTorch.
                dilation: if kind == PoolKind::Max {
                    [rng.int(1, 2), rng.int(1, 2)]
                } else {
                    [1, 1]
                },
                ceil_mode: index % 2 == 0 || rng.coin(),
            };
            let shape = if large {
                vec![2, 24, 33, 31]
            } else {
                vec![rng.int(1, 2), rng.int(1, 3), rng.int(1, 9), rng.int(1, 9)]
            };
            let mut case = Case::new(format!("{shape:?} {params:?}"));
            let x = case.input(rng, &shape);
            // Redraw geometries whose window does not fit.
            if case
                .graph
                .add(
                    PrimOp::Pool2d(params.clone()),
                    &[x],
                    runtime_common::origin(),
                )
                .is_ok()
            {
                return case.finish(PrimOp::Pool2d(params), &[x]);
            }
        }
    });
}

/// `max_pool2d_argmax` on values from a few levels (so windows often tie, and the first
/// maximum must win) with some NaNs (the last NaN wins), at random geometries: the runtime's
/// indices must equal the interpreter's exactly, at 1 and 2 threads.
#[test]
fn max_pool_argmax_matches_the_interpreter_exactly() {
    let mut rng = Rng(21);
    let mut checked = 0;
    while checked < 40 {
        let kernel = [rng.int(1, 4), rng.int(1, 4)];
        let params = Pool2dParams {
            kind: PoolKind::Max,
            kernel,
            stride: [rng.int(1, 3), rng.int(1, 3)],
            padding: [rng.int(0, kernel[0] / 2), rng.int(0, kernel[1] / 2)],
            dilation: [rng.int(1, 2), rng.int(1, 2)],
            ceil_mode: rng.coin(),
        };
        let shape = if checked >= 38 {
            vec![2, 24, 33, 31]
        } else {
            vec![rng.int(1, 2), rng.int(1, 3), rng.int(1, 9), rng.int(1, 9)]
        };
        let levels = rng.int(1, 4);
        let with_nan = checked % 4 == 3;
        let data: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                if with_nan && rng.int(0, 9) == 0 {
                    f32::NAN
                } else {
                    rng.int(0, levels) as f32 - 1.0
                }
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

#[test]
fn reductions_over_any_axes_match_the_interpreter() {
    let functions = [ReduceFn::Sum, ReduceFn::Mean, ReduceFn::Max];
    check_cases("reduce", 48, 9, |rng, index| {
        let op = functions[index % 3];
        let shape = if index >= 45 {
            vec![4, 300, 7]
        } else {
            rng.any_shape(1, 4, 6)
        };
        let mut axes: Vec<usize> = (0..shape.len()).filter(|_| rng.coin()).collect();
        if axes.is_empty() || index % 8 == 0 {
            axes = if index % 16 == 0 {
                (0..shape.len()).collect()
            } else {
                vec![rng.int(0, shape.len() - 1)]
            };
        }
        let keepdim = rng.coin();
        let mut case = Case::new(format!(
            "{} {shape:?} axes {axes:?} keepdim {keepdim}",
            op.name()
        ));
        let x = case.operand(rng, &shape);
        case.finish(PrimOp::Reduce { op, axes, keepdim }, &[x])
    });
}
