//! JIT-compiled elementwise kernels against an independent f64 evaluation of the same
//! expression (plain Rust, glibc's double-precision `erfc` for GELU), with the verifier on.
//!
//! Errors are measured relative to an error scale that propagates magnitudes through the
//! expression (|a| + |b| for a sum, |f(x)| + |f'(x)| * scale(x) for a function), so that a
//! difference of nearly equal values is judged by the size of what was subtracted; for a single
//! operation, or sums and products of same-sign values, this is plain relative error.
//! Run with `--nocapture` to see the measured maxima.

use nnc::codegen::{
    compile_elementwise, BinaryOp, CodegenError, ElementwiseExpr, ElementwiseKernel,
    ElementwiseNode, InputLayout, Jit, JitOptions, NodeId, UnaryOp,
};

extern "C" {
    /// glibc's double-precision complementary error function (the GELU reference).
    fn erfc(x: f64) -> f64;
}

/// Operations whose single-op result is correctly rounded (or exact).
const ROUNDED_TOLERANCE: f64 = 1e-5;
/// The documented bound for the polynomial approximations (see `src/codegen/vector_math.rs`).
const TRANSCENDENTAL_TOLERANCE: f64 = 1e-6;

fn jit() -> Jit {
    let options = JitOptions {
        verify: true,
        ..JitOptions::default()
    };
    Jit::new(&options).expect("the host CPU is supported")
}

/// SplitMix64: a small deterministic generator, so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
    fn uniform(&mut self, low: f64, high: f64) -> f32 {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (low + (high - low) * unit) as f32
    }
}

/// The index of input element that feeds output element `i`, written from the layout docs.
fn reference_index(layout: InputLayout, i: usize) -> usize {
    match layout {
        InputLayout::Contiguous => i,
        InputLayout::PerChannel { channels, inner } => (i / inner) % channels,
        InputLayout::PerLastDim { features } => i % features,
        InputLayout::Scalar => 0,
        InputLayout::Strided {
            run,
            stride,
            offset,
        } => (i / run) * stride + offset + i % run,
        InputLayout::RepeatedRows { rows, row, repeat } => {
            ((i / (row * repeat)) % rows) * row + i % row
        }
    }
}

/// f(x) and f'(x) in f64.
fn reference_unary(op: UnaryOp, x: f64) -> (f64, f64) {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    match op {
        UnaryOp::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
        UnaryOp::LeakyRelu { slope } => {
            let slope = f64::from(slope);
            if x > 0.0 {
                (x, 1.0)
            } else {
                (slope * x, slope)
            }
        }
        UnaryOp::Sigmoid => (sigmoid(x), sigmoid(x) * (1.0 - sigmoid(x))),
        UnaryOp::Tanh => (x.tanh(), 1.0 - x.tanh() * x.tanh()),
        UnaryOp::Exp => (x.exp(), x.exp()),
        UnaryOp::Log => (x.ln(), 1.0 / x),
        UnaryOp::Sqrt => (x.sqrt(), 0.5 / x.sqrt()),
        UnaryOp::Neg => (-x, 1.0),
        UnaryOp::Abs => (x.abs(), 1.0),
        UnaryOp::Gelu => {
            // SAFETY: erfc is a pure function of a double.
            let cdf = 0.5 * unsafe { erfc(-x / std::f64::consts::SQRT_2) };
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (x * cdf, cdf + x * pdf)
        }
        UnaryOp::Silu => (
            x * sigmoid(x),
            sigmoid(x) + x * sigmoid(x) * (1.0 - sigmoid(x)),
        ),
        UnaryOp::Softplus => {
            let value = if x > 0.0 {
                x + (-x).exp().ln_1p()
            } else {
                x.exp().ln_1p()
            };
            (value, sigmoid(x))
        }
    }
}

/// Output element `i` in f64 and its error scale.
fn reference_element(expr: &ElementwiseExpr, inputs: &[Vec<f32>], i: usize) -> (f64, f64) {
    let mut values: Vec<(f64, f64)> = Vec::with_capacity(expr.nodes().len());
    for node in expr.nodes() {
        let get = |id: NodeId| values[id.0];
        let entry = match *node {
            ElementwiseNode::Input(k) => {
                let value = f64::from(inputs[k][reference_index(expr.input_layouts()[k], i)]);
                (value, value.abs())
            }
            ElementwiseNode::Constant(c) => (f64::from(c), f64::from(c).abs()),
            ElementwiseNode::Unary(op, a) => {
                let (x, scale) = get(a);
                let (value, slope) = reference_unary(op, x);
                (value, value.abs() + slope.abs() * scale)
            }
            ElementwiseNode::Binary(op, a, b) => {
                let ((x, sx), (y, sy)) = (get(a), get(b));
                match op {
                    BinaryOp::Add => (x + y, sx + sy),
                    BinaryOp::Sub => (x - y, sx + sy),
                    BinaryOp::Mul => (x * y, sx * sy),
                    BinaryOp::Div => (x / y, sx / y.abs() + x.abs() * sy / (y * y)),
                    BinaryOp::Max => (if x < y { y } else { x }, sx.max(sy)),
                    BinaryOp::Min => (if y < x { y } else { x }, sx.max(sy)),
                    // A 0/1 mask: exact when the compared values are, so its scale is 1.
                    BinaryOp::Greater => (f64::from(u8::from(x > y)), 1.0),
                    BinaryOp::GreaterEqual => (f64::from(u8::from(x >= y)), 1.0),
                    BinaryOp::Equal => (f64::from(u8::from(x == y)), 1.0),
                }
            }
            ElementwiseNode::Fma(a, b, c) => {
                let ((x, sx), (y, sy), (z, sz)) = (get(a), get(b), get(c));
                (x * y + z, sx * sy + sz)
            }
        };
        values.push(entry);
    }
    values[expr.output().expect("non-empty").0]
}

/// The largest scaled error of `output` over the elements whose reference is a normal f32;
/// also checks that no element is NaN where the reference is not. Returns (error, compared).
fn max_scaled_error(expr: &ElementwiseExpr, inputs: &[Vec<f32>], output: &[f32]) -> (f64, usize) {
    let mut worst: f64 = 0.0;
    let mut compared = 0;
    for (i, &got) in output.iter().enumerate() {
        let (expected, scale) = reference_element(expr, inputs, i);
        if !expected.is_finite() || !(1e-30..=1e30).contains(&scale) {
            continue;
        }
        assert!(
            !got.is_nan(),
            "element {i}: got NaN, expected {expected}\n{expr}"
        );
        if expected.abs() < f64::from(f32::MIN_POSITIVE) && scale == expected.abs() {
            continue;
        }
        worst = worst.max((f64::from(got) - expected).abs() / scale);
        compared += 1;
    }
    (worst, compared)
}

fn random_inputs(expr: &ElementwiseExpr, length: usize, random: &mut Random) -> Vec<Vec<f32>> {
    let layouts = expr.input_layouts();
    let lengths = layouts.iter().map(|layout| layout.required_len(length));
    lengths
        .map(|n| (0..n).map(|_| random.uniform(-3.0, 3.0)).collect())
        .collect()
}

fn random_layout(random: &mut Random) -> InputLayout {
    match random.below(6) {
        0..=2 => InputLayout::Contiguous,
        3 => InputLayout::PerChannel {
            channels: 1 + random.below(8),
            inner: 1 + random.below(9),
        },
        4 => InputLayout::PerLastDim {
            features: 1 + random.below(13),
        },
        _ => InputLayout::Scalar,
    }
}

const UNARY_OPS: [UnaryOp; 12] = [
    UnaryOp::Relu,
    UnaryOp::LeakyRelu { slope: 0.125 },
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Gelu,
    UnaryOp::Silu,
    UnaryOp::Softplus,
];
const BINARY_OPS: [BinaryOp; 6] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
];

/// A random node of at most `depth` levels; the arguments of log, sqrt, exp and division are
/// kept in their domains (|a| + 0.25, min(a, 8), |b| + 0.5) so the reference stays finite.
fn random_node(
    expr: &mut ElementwiseExpr,
    depth: usize,
    random: &mut Random,
    arithmetic_only: bool,
) -> NodeId {
    if depth == 0 || random.below(4) == 0 {
        return match random.below(5) {
            0 if !expr.nodes().is_empty() => NodeId(random.below(expr.nodes().len())),
            1 => expr.constant(random.uniform(-2.0, 2.0)),
            _ => expr.input(random_layout(random)),
        };
    }
    match random.below(3) {
        0 => {
            let op = if arithmetic_only {
                [UnaryOp::Relu, UnaryOp::Neg, UnaryOp::Abs][random.below(3)]
            } else {
                UNARY_OPS[random.below(UNARY_OPS.len())]
            };
            let operand = random_node(expr, depth - 1, random, arithmetic_only);
            let operand = match op {
                UnaryOp::Log | UnaryOp::Sqrt => {
                    let magnitude = expr.unary(UnaryOp::Abs, operand);
                    let offset = expr.constant(0.25);
                    expr.binary(BinaryOp::Add, magnitude, offset)
                }
                UnaryOp::Exp => {
                    let limit = expr.constant(8.0);
                    expr.binary(BinaryOp::Min, operand, limit)
                }
                _ => operand,
            };
            expr.unary(op, operand)
        }
        1 => {
            let op = BINARY_OPS[random.below(BINARY_OPS.len())];
            let left = random_node(expr, depth - 1, random, arithmetic_only);
            let mut right = random_node(expr, depth - 1, random, arithmetic_only);
            if op == BinaryOp::Div {
                let magnitude = expr.unary(UnaryOp::Abs, right);
                let offset = expr.constant(0.5);
                right = expr.binary(BinaryOp::Add, magnitude, offset);
            }
            expr.binary(op, left, right)
        }
        _ => {
            let a = random_node(expr, depth - 1, random, arithmetic_only);
            let b = random_node(expr, depth - 1, random, arithmetic_only);
            let c = random_node(expr, depth - 1, random, arithmetic_only);
            expr.fma(a, b, c)
        }
    }
}

const LENGTHS: [usize; 17] = [
    0, 1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 33, 63, 64, 65, 100, 1031,
];

/// Runs `kernel` whole and in two chunks split at `split`; the chunks must agree bit for bit.
fn run_whole_and_split(
    kernel: &ElementwiseKernel,
    inputs: &[Vec<f32>],
    length: usize,
    split: usize,
) -> Vec<f32> {
    let borrowed: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let mut whole = vec![f32::NAN; length];
    kernel.run(&borrowed, &mut whole).expect("lengths match");
    let mut pieces = vec![f32::NAN; length];
    let (first, second) = pieces.split_at_mut(split);
    kernel
        .run_chunk(&borrowed, length, first, 0)
        .expect("in range");
    kernel
        .run_chunk(&borrowed, length, second, split)
        .expect("in range");
    let same_bits = whole
        .iter()
        .zip(&pieces)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same_bits,
        "results depend on the split at {split} of {length}"
    );
    whole
}

fn check_random_expressions(seed: u64, count: usize, arithmetic_only: bool, tolerance: f64) {
    let jit = jit();
    let mut random = Random(seed);
    let mut worst: f64 = 0.0;
    let mut compared = 0;
    for _ in 0..count {
        let mut expr = ElementwiseExpr::new();
        let depth = 1 + random.below(4);
        let output = random_node(&mut expr, depth, &mut random, arithmetic_only);
        expr.set_output(output);
        let kernel =
            compile_elementwise(&jit, &expr).unwrap_or_else(|error| panic!("{error}\n{expr}"));
        for length in LENGTHS.into_iter().chain([1 + random.below(300)]) {
            let inputs = random_inputs(&expr, length, &mut random);
            let split = random.below(length + 1);
            let output = run_whole_and_split(&kernel, &inputs, length, split);
            let (error, n) = max_scaled_error(&expr, &inputs, &output);
            assert!(
                error <= tolerance,
                "error {error:e} at length {length}\n{expr}"
            );
            worst = worst.max(error);
            compared += n;
        }
    }
    println!("{count} random expressions, {compared} elements: max scaled error {worst:.2e}");
}

#[test]
fn random_arithmetic_and_relu_expressions_match_the_reference() {
    check_random_expressions(1, 150, true, ROUNDED_TOLERANCE);
}

#[test]
fn random_expressions_with_transcendentals_match_the_reference() {
    // Up to four approximated functions can compose, each within TRANSCENDENTAL_TOLERANCE.
    check_random_expressions(2, 150, false, 10.0 * TRANSCENDENTAL_TOLERANCE);
}

/// One unary op over many inputs from its useful range; returns the max relative error.
fn unary_error(jit: &Jit, op: UnaryOp, inputs: &[f32]) -> f64 {
    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    expr.unary(op, x);
    let kernel = compile_elementwise(jit, &expr).expect("compiles");
    let mut output = vec![0.0; inputs.len()];
    kernel.run(&[inputs], &mut output).expect("lengths match");
    let mut worst: f64 = 0.0;
    for (&x, &got) in inputs.iter().zip(&output) {
        let (expected, _) = reference_unary(op, f64::from(x));
        if expected.abs() < f64::from(f32::MIN_POSITIVE) {
            // Subnormal results: within one subnormal step.
            let step = f64::from(f32::from_bits(1));
            assert!(
                (f64::from(got) - expected).abs() <= step,
                "{op:?}({x}) = {got}, expected {expected}"
            );
            continue;
        }
        if expected.abs() > f64::from(f32::MAX) {
            assert_eq!(got, f32::INFINITY.copysign(expected as f32), "{op:?}({x})");
            continue;
        }
        let error = (f64::from(got) - expected).abs() / expected.abs();
        assert!(
            error.is_finite(),
            "{op:?}({x}) = {got}, expected {expected}"
        );
        worst = worst.max(error);
    }
    worst
}

fn sweep(random: &mut Random, ranges: &[(f64, f64)], per_range: usize) -> Vec<f32> {
    ranges
        .iter()
        .flat_map(|&(low, high)| {
            (0..per_range)
                .map(|_| random.uniform(low, high))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn each_unary_op_is_accurate_over_its_range() {
    let jit = jit();
    let mut random = Random(3);
    let per_range = 1 << 17;
    let log_inputs: Vec<f32> = sweep(&mut random, &[(-103.0, 88.7)], 4 * per_range)
        .into_iter()
        .map(|exponent| exponent.exp())
        .filter(|x| *x > 0.0)
        .chain(sweep(&mut random, &[(0.5, 2.0), (0.999, 1.001)], per_range))
        .collect();
    let cases: Vec<(UnaryOp, Vec<f32>, f64)> = vec![
        (
            UnaryOp::Relu,
            sweep(&mut random, &[(-10.0, 10.0)], per_range),
            ROUNDED_TOLERANCE,
        ),
        (
            UnaryOp::LeakyRelu { slope: 0.01 },
            sweep(&mut random, &[(-10.0, 10.0)], per_range),
            ROUNDED_TOLERANCE,
        ),
        (
            UnaryOp::Neg,
            sweep(&mut random, &[(-10.0, 10.0)], per_range),
            ROUNDED_TOLERANCE,
        ),
        (
            UnaryOp::Abs,
            sweep(&mut random, &[(-10.0, 10.0)], per_range),
            ROUNDED_TOLERANCE,
        ),
        (
            UnaryOp::Sqrt,
            sweep(&mut random, &[(0.0, 1e6), (0.0, 1e-3)], per_range),
            ROUNDED_TOLERANCE,
        ),
        (
            UnaryOp::Exp,
            sweep(
                &mut random,
                &[(-104.0, 89.0), (-1.0, 1.0), (-1e-3, 1e-3)],
                per_range,
            ),
            TRANSCENDENTAL_TOLERANCE,
        ),
        (UnaryOp::Log, log_inputs, TRANSCENDENTAL_TOLERANCE),
        (
            UnaryOp::Tanh,
            sweep(
                &mut random,
                &[(-12.0, 12.0), (-0.7, 0.7), (-1e-3, 1e-3)],
                per_range,
            ),
            TRANSCENDENTAL_TOLERANCE,
        ),
        (
            UnaryOp::Sigmoid,
            sweep(&mut random, &[(-87.0, 30.0), (-5.0, 5.0)], per_range),
            TRANSCENDENTAL_TOLERANCE,
        ),
        (
            UnaryOp::Silu,
            sweep(
                &mut random,
                &[(-87.0, 30.0), (-5.0, 5.0), (-1e-3, 1e-3)],
                per_range,
            ),
            TRANSCENDENTAL_TOLERANCE,
        ),
        (
            UnaryOp::Softplus,
            sweep(&mut random, &[(-100.0, 100.0), (-5.0, 5.0)], per_range),
            TRANSCENDENTAL_TOLERANCE,
        ),
        (
            UnaryOp::Gelu,
            sweep(
                &mut random,
                &[(-13.0, 13.0), (-3.0, 3.0), (-1e-3, 1e-3)],
                per_range,
            ),
            TRANSCENDENTAL_TOLERANCE,
        ),
    ];
    for (op, inputs, tolerance) in cases {
        let error = unary_error(&jit, op, &inputs);
        println!(
            "{op:?}: max relative error {error:.2e} over {} inputs",
            inputs.len()
        );
        assert!(
            error <= tolerance,
            "{op:?}: max relative error {error:e} > {tolerance:e}"
        );
    }
}

#[test]
fn each_binary_op_and_fma_is_correctly_rounded() {
    let jit = jit();
    let mut random = Random(4);
    let length = 1 << 14;
    let mut worst: f64 = 0.0;
    let mut build = |make: &dyn Fn(&mut ElementwiseExpr, NodeId, NodeId, NodeId) -> NodeId| {
        let mut expr = ElementwiseExpr::new();
        let (a, b, c) = (
            expr.input(InputLayout::Contiguous),
            expr.input(InputLayout::Contiguous),
            expr.input(InputLayout::Contiguous),
        );
        let output = make(&mut expr, a, b, c);
        expr.set_output(output);
        let kernel = compile_elementwise(&jit, &expr).expect("compiles");
        let inputs: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..length).map(|_| random.uniform(-1e3, 1e3)).collect())
            .collect();
        let output = run_whole_and_split(&kernel, &inputs, length, length / 3);
        // Each op rounds once, so plain relative error applies: use |result| as the scale.
        for (i, &got) in output.iter().enumerate() {
            let (expected, _) = reference_element(&expr, &inputs, i);
            let error = (f64::from(got) - expected).abs() / expected.abs().max(1e-30);
            assert!(
                error <= ROUNDED_TOLERANCE,
                "{expr}element {i}: {got} vs {expected}"
            );
            worst = worst.max(error);
        }
    };
    for op in BINARY_OPS {
        build(&|expr, a, b, _| expr.binary(op, a, b));
    }
    build(&|expr, a, b, c| expr.fma(a, b, c));
    println!("binary ops and fma: max relative error {worst:.2e}");
}

/// bias + relu over NCHW, per-feature bias over [rows, F], and a scalar, all in one expression,
/// checked for every way of splitting small tensors into two chunks.
#[test]
fn broadcast_layouts_read_the_right_elements_from_any_start() {
    let jit = jit();
    let mut random = Random(5);
    let nchw_shapes = [
        (2, 3, 4, 5),
        (1, 1, 1, 1),
        (2, 16, 1, 1),
        (3, 5, 7, 7),
        (1, 64, 3, 3),
        (2, 2, 1, 3),
    ];
    let features = [1, 2, 3, 4, 5, 16, 17];
    for (n, c, h, w) in nchw_shapes {
        for f in features {
            let mut expr = ElementwiseExpr::new();
            let x = expr.input(InputLayout::Contiguous);
            let channel_bias = expr.input(InputLayout::PerChannel {
                channels: c,
                inner: h * w,
            });
            let feature_scale = expr.input(InputLayout::PerLastDim { features: f });
            let scalar = expr.input(InputLayout::Scalar);
            let biased = expr.binary(BinaryOp::Add, x, channel_bias);
            let activated = expr.unary(UnaryOp::Relu, biased);
            let scaled = expr.fma(activated, feature_scale, scalar);
            expr.set_output(scaled);
            let kernel = compile_elementwise(&jit, &expr).expect("compiles");
            let length = n * c * h * w;
            let inputs = random_inputs(&expr, length, &mut random);
            let splits: Vec<usize> = if length <= 80 {
                (0..=length).collect()
            } else {
                vec![0, 1, 37, length / 2, length]
            };
            for split in splits {
                let output = run_whole_and_split(&kernel, &inputs, length, split);
                // Exact: one add, one max and one fma, each correctly rounded, as in f32.
                for (i, &got) in output.iter().enumerate() {
                    let biased = inputs[0][i] + inputs[1][(i / (h * w)) % c];
                    let expected = biased.max(0.0).mul_add(inputs[2][i % f], inputs[3][0]);
                    assert_eq!(got, expected, "NCHW {n}x{c}x{h}x{w}, F {f}, element {i}");
                }
            }
        }
    }
}

/// Compares give exactly 1.0 or 0.0, false when either side is NaN, including in a fused chain
/// (`x * [x > y] + [x >= y] - [x == y]`) over broadcast inputs, in the vector loop and the
/// scalar tail alike. Inputs come from a few levels so that ties are common.
#[test]
fn comparisons_give_exact_masks_with_ties_and_nan() {
    let jit = jit();
    let mut random = Random(9);
    let levels = [-1.0f32, -0.0, 0.0, 0.5, 2.0, f32::NAN, f32::INFINITY];
    for op in [BinaryOp::Greater, BinaryOp::GreaterEqual, BinaryOp::Equal] {
        for layout in [
            InputLayout::Contiguous,
            InputLayout::PerLastDim { features: 3 },
            InputLayout::Scalar,
        ] {
            let mut expr = ElementwiseExpr::new();
            let x = expr.input(InputLayout::Contiguous);
            let y = expr.input(layout);
            let mask = expr.binary(op, x, y);
            let masked = expr.binary(BinaryOp::Mul, x, mask);
            let at_least = expr.binary(BinaryOp::GreaterEqual, x, y);
            let sum = expr.binary(BinaryOp::Add, masked, at_least);
            let equal = expr.binary(BinaryOp::Equal, x, y);
            let result = expr.binary(BinaryOp::Sub, sum, equal);
            expr.set_output(result);
            let kernel = compile_elementwise(&jit, &expr).expect("compiles");
            for length in [1, 4, 7, 33, 100] {
                let pick = |random: &mut Random| levels[random.below(levels.len())];
                let xs: Vec<f32> = (0..length).map(|_| pick(&mut random)).collect();
                let ys: Vec<f32> = (0..layout.required_len(length))
                    .map(|_| pick(&mut random))
                    .collect();
                let output = run_whole_and_split(&kernel, &[xs.clone(), ys.clone()], length, 1);
                for (i, got) in output.iter().enumerate() {
                    let (x, y) = (xs[i], ys[reference_index(layout, i)]);
                    let holds = match op {
                        BinaryOp::Greater => x > y,
                        BinaryOp::GreaterEqual => x >= y,
                        _ => x == y,
                    };
                    let masked = if holds { x } else { x * 0.0 };
                    let expected =
                        masked + f32::from(u8::from(x >= y)) - f32::from(u8::from(x == y));
                    let same =
                        got.to_bits() == expected.to_bits() || (got.is_nan() && expected.is_nan());
                    assert!(same, "{op:?}: x {x}, y {y}: got {got}, expected {expected}");
                }
            }
        }
    }
}

#[test]
fn special_values_follow_the_limits() {
    let jit = jit();
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    // (op, input, expected): mathematical limits. PyTorch differs only where it computes
    // inf * 0 (gelu at ±inf gives NaN there).
    let cases = [
        (UnaryOp::Exp, inf, inf),
        (UnaryOp::Exp, -inf, 0.0),
        (UnaryOp::Exp, 89.0, inf),
        (UnaryOp::Exp, -110.0, 0.0),
        (UnaryOp::Exp, nan, nan),
        (UnaryOp::Log, 0.0, -inf),
        (UnaryOp::Log, -1.0, nan),
        (UnaryOp::Log, inf, inf),
        (UnaryOp::Log, nan, nan),
        (UnaryOp::Log, 1.0, 0.0),
        (UnaryOp::Tanh, inf, 1.0),
        (UnaryOp::Tanh, -inf, -1.0),
        (UnaryOp::Tanh, nan, nan),
        (UnaryOp::Sigmoid, inf, 1.0),
        (UnaryOp::Sigmoid, -inf, 0.0),
        (UnaryOp::Sigmoid, nan, nan),
        (UnaryOp::Silu, inf, inf),
        (UnaryOp::Silu, nan, nan),
        (UnaryOp::Softplus, inf, inf),
        (UnaryOp::Softplus, -inf, 0.0),
        (UnaryOp::Softplus, nan, nan),
        (UnaryOp::Gelu, inf, inf),
        (UnaryOp::Gelu, -inf, 0.0),
        (UnaryOp::Gelu, nan, nan),
        (UnaryOp::Relu, nan, nan),
        (UnaryOp::Relu, -inf, 0.0),
        (UnaryOp::Sqrt, -1.0, nan),
    ];
    for (op, input, expected) in cases {
        let mut expr = ElementwiseExpr::new();
        let x = expr.input(InputLayout::Contiguous);
        expr.unary(op, x);
        let kernel = compile_elementwise(&jit, &expr).expect("compiles");
        // Five copies: four through the vector loop, one through the scalar tail.
        let inputs = [input; 5];
        let mut output = [0.0f32; 5];
        kernel.run(&[&inputs], &mut output).expect("lengths match");
        for got in output {
            let same = (got.is_nan() && expected.is_nan()) || got == expected;
            assert!(same, "{op:?}({input}) = {got}, expected {expected}");
        }
    }
}

#[test]
fn malformed_expressions_and_calls_are_errors() {
    let jit = jit();
    assert_eq!(
        compile_elementwise(&jit, &ElementwiseExpr::new()).err(),
        Some(CodegenError::EmptyExpression)
    );
    let mut other = ElementwiseExpr::new();
    let far = (0..5).fold(other.constant(1.0), |_, _| other.constant(2.0));
    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    expr.binary(BinaryOp::Add, x, far);
    assert!(matches!(
        compile_elementwise(&jit, &expr),
        Err(CodegenError::OperandOutOfOrder {
            node: 1,
            operand: 5
        })
    ));
    let mut zero = ElementwiseExpr::new();
    zero.input(InputLayout::PerChannel {
        channels: 4,
        inner: 0,
    });
    assert!(matches!(
        compile_elementwise(&jit, &zero),
        Err(CodegenError::ZeroExtentLayout { input: 0, .. })
    ));

    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    let bias = expr.input(InputLayout::PerLastDim { features: 3 });
    expr.binary(BinaryOp::Add, x, bias);
    let kernel = compile_elementwise(&jit, &expr).expect("compiles");
    let (input, bias, mut output) = (vec![1.0; 6], vec![1.0; 3], vec![0.0; 6]);
    assert!(matches!(
        kernel.run(&[&input], &mut output),
        Err(CodegenError::WrongInputCount {
            expected: 2,
            given: 1
        })
    ));
    assert!(matches!(
        kernel.run(&[&input[..5], &bias], &mut output),
        Err(CodegenError::WrongInputLength {
            input: 0,
            expected: 6,
            given: 5,
            ..
        })
    ));
    assert!(matches!(
        kernel.run(&[&input, &bias[..2]], &mut output),
        Err(CodegenError::WrongInputLength {
            input: 1,
            expected: 3,
            given: 2,
            ..
        })
    ));
    assert!(matches!(
        kernel.run_chunk(&[&input, &bias], 6, &mut output[..4], 3),
        Err(CodegenError::RangeOutOfBounds {
            start: 3,
            end: 7,
            total: 6
        })
    ));
    let message = CodegenError::WrongInputCount {
        expected: 2,
        given: 1,
    }
    .to_string();
    assert_eq!(message, "the kernel takes 2 input buffers but was given 1");
}

#[test]
fn threads_computing_disjoint_chunks_match_one_thread_bit_for_bit() {
    let jit = jit();
    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    let bias = expr.input(InputLayout::PerChannel {
        channels: 7,
        inner: 9,
    });
    let sum = expr.binary(BinaryOp::Add, x, bias);
    expr.unary(UnaryOp::Gelu, sum);
    let kernel = compile_elementwise(&jit, &expr).expect("compiles");
    let length = 7 * 9 * 13 + 5;
    let inputs = random_inputs(&expr, length, &mut Random(6));
    let borrowed: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let mut single = vec![0.0; length];
    kernel.run(&borrowed, &mut single).expect("lengths match");
    for threads in [2, 3] {
        let chunk_length = length.div_ceil(threads);
        let mut parallel = vec![0.0; length];
        std::thread::scope(|scope| {
            for (index, chunk) in parallel.chunks_mut(chunk_length).enumerate() {
                let (kernel, borrowed) = (&kernel, &borrowed);
                scope
                    .spawn(move || kernel.run_chunk(borrowed, length, chunk, index * chunk_length));
            }
        });
        let same = single
            .iter()
            .zip(&parallel)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{threads} threads differ from one");
    }
}

#[test]
fn kernels_outlive_the_jit_and_may_run_in_place() {
    let kernel = {
        let jit = jit();
        let mut expr = ElementwiseExpr::new();
        let x = expr.input(InputLayout::Contiguous);
        let two = expr.constant(2.0);
        expr.binary(BinaryOp::Mul, x, two);
        compile_elementwise(&jit, &expr).expect("compiles")
    };
    assert!(kernel.compile_time().as_nanos() > 0);
    let mut data: Vec<f32> = (0..37).map(|i| i as f32).collect();
    let inputs = [data.as_ptr()];
    // SAFETY: one full-size input, and the output is that same buffer, which the contract of
    // `entry` allows; every index in 0..37 is in bounds.
    unsafe { (kernel.entry())(inputs.as_ptr(), data.as_mut_ptr(), 0, data.len()) };
    let expected: Vec<f32> = (0..37).map(|i| 2.0 * i as f32).collect();
    assert_eq!(data, expected);
}

#[test]
fn relu_and_max_lower_to_single_sse_instructions() {
    let options = JitOptions {
        verify: true,
        keep_listing: true,
        ..JitOptions::default()
    };
    let jit = Jit::new(&options).expect("the host CPU is supported");
    let mut expr = ElementwiseExpr::new();
    let x = expr.input(InputLayout::Contiguous);
    let y = expr.input(InputLayout::Contiguous);
    let relu = expr.unary(UnaryOp::Relu, x);
    expr.binary(BinaryOp::Min, relu, y);
    let kernel = compile_elementwise(&jit, &expr).expect("compiles");
    let listing = kernel.function().listing().expect("kept");
    assert!(listing.contains("maxps"), "relu is not a maxps:\n{listing}");
    assert!(listing.contains("minps"), "min is not a minps:\n{listing}");
    assert!(
        !listing.contains("fmaf"),
        "fma became a libcall:\n{listing}"
    );
}

extern "C" fn nnc_test_add_one(x: f32) -> f32 {
    x + 1.0
}

/// The mechanism by which JIT code calls Rust kernels (`nnc_sgemm`): a registered symbol,
/// declared as an import and called twice.
#[test]
fn jit_code_calls_a_registered_rust_function() {
    use cranelift_codegen::ir::{types, AbiParam, InstBuilder};
    use cranelift_module::{Linkage, Module};
    use nnc::codegen::ExternalSymbol;

    let options = JitOptions {
        verify: true,
        ..JitOptions::default()
    };
    let symbol = ExternalSymbol {
        name: "nnc_test_add_one",
        address: nnc_test_add_one as *const u8,
    };
    // SAFETY: the symbol is an `extern "C" fn(f32) -> f32`, declared below with that signature.
    let jit = unsafe { Jit::with_symbols(&options, &[symbol]) }.expect("supported host");
    let mut signature = jit.make_signature();
    signature.params.push(AbiParam::new(types::F32));
    signature.returns.push(AbiParam::new(types::F32));
    let callee_signature = signature.clone();
    let function = jit
        .compile_function("add_two", signature, |builder, module| {
            let callee = module
                .declare_function("nnc_test_add_one", Linkage::Import, &callee_signature)
                .expect("declares");
            let callee = module.declare_func_in_func(callee, builder.func);
            let entry = builder.create_block();
            builder.append_block_params_for_function_params(entry);
            builder.switch_to_block(entry);
            let x = builder.block_params(entry)[0];
            let call = builder.ins().call(callee, &[x]);
            let once = builder.inst_results(call)[0];
            let call = builder.ins().call(callee, &[once]);
            let twice = builder.inst_results(call)[0];
            builder.ins().return_(&[twice]);
            builder.seal_all_blocks();
            Ok(())
        })
        .expect("compiles");
    // SAFETY: compiled above with the signature (f32) -> f32 in the C calling convention, and
    // `function` keeps the code alive while it is called.
    let add_two: extern "C" fn(f32) -> f32 =
        unsafe { std::mem::transmute(function.code_address()) };
    assert_eq!(add_two(1.5), 3.5);
    assert!(function.code_size() > 0);
}

#[test]
fn jit_and_kernels_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Jit>();
    assert_send_sync::<ElementwiseKernel>();
    assert_send_sync::<nnc::codegen::CompiledFunction>();
}
