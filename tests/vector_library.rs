//! The wide-vector library (`src/codegen/vector_library.rs`) computes exp, sigmoid and tanh
//! operation for operation as the f32x4 CLIF of `vector_math.rs` does, so a kernel compiled
//! with the library (staged: loops and calls per block) and one compiled without it (one f32x4
//! loop) must give the same bits: for random expressions over every input layout, at lengths
//! around the block size, split at random points, and on special values. The f32x4 kernels are
//! themselves checked against an f64 reference in `codegen_elementwise.rs`. On a CPU without
//! AVX2 both kernels are the same f32x4 loop and the test passes trivially.

use nnc::codegen::{
    compile_elementwise, BinaryOp, ElementwiseExpr, ElementwiseKernel, InputLayout, Jit,
    JitOptions, NodeId, UnaryOp,
};

fn jit(vector_library: bool) -> Jit {
    let options = JitOptions {
        verify: true,
        vector_library,
        ..JitOptions::default()
    };
    Jit::new(&options).expect("the host CPU is supported")
}

/// SplitMix64, so failures reproduce.
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
    fn uniform(&mut self, low: f32, high: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }
}

fn random_layout(random: &mut Random) -> InputLayout {
    match random.below(6) {
        0..=2 => InputLayout::Contiguous,
        3 => InputLayout::PerChannel {
            channels: 1 + random.below(8),
            inner: 1 + random.below(300),
        },
        4 => InputLayout::PerLastDim {
            features: 1 + random.below(300),
        },
        _ => InputLayout::Scalar,
    }
}

/// A random expression rich in library functions, nested (a tanh of a sigmoid) and shared.
fn random_node(expr: &mut ElementwiseExpr, depth: usize, random: &mut Random) -> NodeId {
    if depth == 0 || random.below(5) == 0 {
        return match random.below(4) {
            0 if !expr.nodes().is_empty() => NodeId(random.below(expr.nodes().len())),
            1 => expr.constant(random.uniform(-2.0, 2.0)),
            _ => expr.input(random_layout(random)),
        };
    }
    match random.below(4) {
        0 | 1 => {
            let op =
                [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Tanh, UnaryOp::Relu][random.below(4)];
            let operand = random_node(expr, depth - 1, random);
            expr.unary(op, operand)
        }
        2 => {
            let op = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Max][random.below(4)];
            let left = random_node(expr, depth - 1, random);
            let right = random_node(expr, depth - 1, random);
            expr.binary(op, left, right)
        }
        _ => {
            let a = random_node(expr, depth - 1, random);
            let b = random_node(expr, depth - 1, random);
            let c = random_node(expr, depth - 1, random);
            expr.fma(a, b, c)
        }
    }
}

/// Runs `kernel` over `length` elements in two chunks split at `split`.
fn run_split(
    kernel: &ElementwiseKernel,
    inputs: &[Vec<f32>],
    length: usize,
    split: usize,
) -> Vec<f32> {
    let borrowed: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let mut output = vec![f32::NAN; length];
    let (first, second) = output.split_at_mut(split);
    kernel
        .run_chunk(&borrowed, length, first, 0)
        .expect("in range");
    kernel
        .run_chunk(&borrowed, length, second, split)
        .expect("in range");
    output
}

fn assert_same_bits(expected: &[f32], got: &[f32], context: &str) {
    for (index, (a, b)) in expected.iter().zip(got).enumerate() {
        let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        assert!(
            same,
            "element {index}: f32x4 {a:e}, library {b:e}\n{context}"
        );
    }
}

#[test]
fn library_kernels_match_f32x4_kernels_bit_for_bit() {
    let (plain_jit, library_jit) = (jit(false), jit(true));
    let mut random = Random(0x5EED);
    for _ in 0..150 {
        let mut expr = ElementwiseExpr::new();
        let depth = 1 + random.below(4);
        let output = random_node(&mut expr, depth, &mut random);
        expr.set_output(output);
        let plain = compile_elementwise(&plain_jit, &expr).expect("compiles");
        let library = compile_elementwise(&library_jit, &expr)
            .unwrap_or_else(|error| panic!("{error}\n{expr}"));
        for length in [1, 3, 17, 255, 256, 257, 700, 1 + random.below(2000)] {
            let inputs: Vec<Vec<f32>> = expr
                .input_layouts()
                .iter()
                .map(|layout| {
                    let count = layout.required_len(length);
                    (0..count).map(|_| random.uniform(-12.0, 12.0)).collect()
                })
                .collect();
            let expected = run_split(&plain, &inputs, length, length);
            let split = random.below(length + 1);
            let got = run_split(&library, &inputs, length, split);
            assert_same_bits(
                &expected,
                &got,
                &format!("length {length}, split {split}\n{expr}"),
            );
        }
    }
}

#[test]
fn library_functions_match_on_special_values() {
    let specials = [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        0.624_999_9,
        0.625,
        -0.625,
        9.0,
        -9.0,
        88.7,
        89.5,
        -103.0,
        -104.5,
        1e30,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
    ];
    let (plain_jit, library_jit) = (jit(false), jit(true));
    for op in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Tanh] {
        let mut expr = ElementwiseExpr::new();
        let input = expr.input(InputLayout::Contiguous);
        expr.unary(op, input);
        let plain = compile_elementwise(&plain_jit, &expr).expect("compiles");
        let library = compile_elementwise(&library_jit, &expr).expect("compiles");
        let inputs = vec![specials.to_vec()];
        let length = specials.len();
        let expected = run_split(&plain, &inputs, length, length);
        let got = run_split(&library, &inputs, length, 5);
        assert_same_bits(&expected, &got, &format!("{op:?}"));
    }
}

#[test]
fn a_library_output_may_overwrite_its_own_input() {
    // An epilogue runs in place: output element i is its input element i.
    let jit = jit(true);
    let mut expr = ElementwiseExpr::new();
    let input = expr.input(InputLayout::Contiguous);
    let bias = expr.input(InputLayout::PerLastDim { features: 7 });
    let sum = expr.binary(BinaryOp::Add, input, bias);
    expr.unary(UnaryOp::Tanh, sum);
    let kernel = compile_elementwise(&jit, &expr).expect("compiles");
    let length = 1000;
    let mut data: Vec<f32> = (0..length).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
    let bias_values: Vec<f32> = (0..7).map(|i| i as f32 * 0.1).collect();
    let mut separate = vec![0.0; length];
    kernel
        .run(&[&data, &bias_values], &mut separate)
        .expect("runs");
    let pointers = [data.as_ptr(), bias_values.as_ptr()];
    // SAFETY: both inputs have the lengths their layouts read; the output is input 0 itself.
    unsafe { (kernel.entry())(pointers.as_ptr(), data.as_mut_ptr(), 0, length) };
    assert_same_bits(&separate, &data, "in place");
}
