//! `InputLayout::Strided` and `InputLayout::RepeatedRows`: a kernel reading a slice where it
//! lies, or rows broadcast over middle axes, must compute exactly what the same kernel computes
//! on a contiguous copy of what the layout reads, for any geometry, next to any other layout,
//! over any range (threads split ranges anywhere).

use nnc::codegen::{
    compile_elementwise, BinaryOp, ElementwiseExpr, InputLayout, Jit, JitOptions, UnaryOp,
};

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
    fn value(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 22) as f32 - 2.0
    }
}

/// `[rows, stride]` sliced to columns `offset..offset + run`, as a contiguous copy.
fn gather(source: &[f32], run: usize, stride: usize, offset: usize) -> Vec<f32> {
    source
        .chunks_exact(stride)
        .flat_map(|row| row[offset..offset + run].iter().copied())
        .collect()
}

/// `op(sigmoid(a) * b + tanh(a))` where `a` is input 0 (strided or contiguous) and `b` a
/// per-last-dim or per-channel broadcast, so the strided runs cross the other layout's runs.
fn expression(first: InputLayout, second: InputLayout, op: UnaryOp) -> ElementwiseExpr {
    let mut expr = ElementwiseExpr::new();
    let a = expr.input(first);
    let b = expr.input(second);
    let gate = expr.unary(UnaryOp::Sigmoid, a);
    let scaled = expr.binary(BinaryOp::Mul, gate, b);
    let squashed = expr.unary(UnaryOp::Tanh, a);
    let sum = expr.binary(BinaryOp::Add, scaled, squashed);
    expr.unary(op, sum);
    expr
}

#[test]
fn strided_inputs_read_the_same_elements_as_a_copy() {
    let mut random = Random(0x0057_81DE);
    for vector_library in [false, true] {
        let options = JitOptions {
            verify: true,
            vector_library,
            ..JitOptions::default()
        };
        let jit = Jit::new(&options).expect("the host CPU is supported");
        for _ in 0..60 {
            let run = 1 + random.below(300);
            let offset = random.below(40);
            let stride = run + offset + random.below(3) * random.below(50);
            let rows = 1 + random.below(12);
            let total = rows * run;
            let second = match random.below(3) {
                0 => InputLayout::PerLastDim {
                    features: 1 + random.below(70),
                },
                1 => InputLayout::PerChannel {
                    channels: 1 + random.below(5),
                    inner: 1 + random.below(90),
                },
                _ => InputLayout::Contiguous,
            };
            let op = [UnaryOp::Relu, UnaryOp::Exp, UnaryOp::Neg][random.below(3)];
            let strided = InputLayout::Strided {
                run,
                stride,
                offset,
            };
            let on_slice =
                compile_elementwise(&jit, &expression(strided, second, op)).expect("compiles");
            let on_copy =
                compile_elementwise(&jit, &expression(InputLayout::Contiguous, second, op))
                    .expect("compiles");
            let source: Vec<f32> = (0..rows * stride).map(|_| random.value()).collect();
            let other: Vec<f32> = (0..second.required_len(total))
                .map(|_| random.value())
                .collect();
            let copy = gather(&source, run, stride, offset);
            let mut expected = vec![0.0; total];
            on_copy.run(&[&copy, &other], &mut expected).expect("runs");
            let split = random.below(total + 1);
            let mut got = vec![f32::NAN; total];
            let (first, rest) = got.split_at_mut(split);
            on_slice
                .run_chunk(&[&source, &other], total, first, 0)
                .expect("runs");
            on_slice
                .run_chunk(&[&source, &other], total, rest, split)
                .expect("runs");
            let same = expected
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
            assert!(
                same,
                "run {run}, stride {stride}, offset {offset}, rows {rows}, {second}"
            );
        }
    }
}

#[test]
fn strided_layouts_past_their_stride_are_refused() {
    let jit = Jit::new(&JitOptions::default()).expect("the host CPU is supported");
    for layout in [
        InputLayout::Strided {
            run: 0,
            stride: 4,
            offset: 0,
        },
        InputLayout::Strided {
            run: 3,
            stride: 4,
            offset: 2,
        },
    ] {
        let mut expr = ElementwiseExpr::new();
        let x = expr.input(layout);
        expr.unary(UnaryOp::Neg, x);
        assert!(compile_elementwise(&jit, &expr).is_err(), "{layout}");
    }
    // The length a strided input must have: whole rows of the sliced tensor.
    let layout = InputLayout::Strided {
        run: 128,
        stride: 512,
        offset: 256,
    };
    assert_eq!(layout.required_len(32 * 128), 32 * 512);
}

/// `rows` rows of `row` elements, each repeated `repeat` times, the whole pattern repeated
/// until `total` elements: what `RepeatedRows` reads, spelled out.
fn expand_rows(source: &[f32], rows: usize, row: usize, repeat: usize, total: usize) -> Vec<f32> {
    (0..total)
        .map(|i| source[((i / (row * repeat)) % rows) * row + i % row])
        .collect()
}

#[test]
fn repeated_rows_read_the_same_elements_as_a_copy() {
    let mut random = Random(0x002E_9EA7);
    for vector_library in [false, true] {
        let options = JitOptions {
            verify: true,
            vector_library,
            ..JitOptions::default()
        };
        let jit = Jit::new(&options).expect("the host CPU is supported");
        for _ in 0..60 {
            let (rows, row, repeat) = (
                1 + random.below(5),
                1 + random.below(150),
                1 + random.below(9),
            );
            // A leading broadcast block makes the pattern wrap around the rows.
            let total = rows * row * repeat * (1 + random.below(3));
            let second = match random.below(3) {
                0 => InputLayout::PerLastDim {
                    features: 1 + random.below(70),
                },
                1 => InputLayout::PerChannel {
                    channels: 1 + random.below(5),
                    inner: 1 + random.below(90),
                },
                _ => InputLayout::Contiguous,
            };
            let op = [UnaryOp::Relu, UnaryOp::Exp, UnaryOp::Neg][random.below(3)];
            let repeated = InputLayout::RepeatedRows { rows, row, repeat };
            let on_rows =
                compile_elementwise(&jit, &expression(repeated, second, op)).expect("compiles");
            let on_copy =
                compile_elementwise(&jit, &expression(InputLayout::Contiguous, second, op))
                    .expect("compiles");
            let source: Vec<f32> = (0..rows * row).map(|_| random.value()).collect();
            let other: Vec<f32> = (0..second.required_len(total))
                .map(|_| random.value())
                .collect();
            let copy = expand_rows(&source, rows, row, repeat, total);
            let mut expected = vec![0.0; total];
            on_copy.run(&[&copy, &other], &mut expected).expect("runs");
            let split = random.below(total + 1);
            let mut got = vec![f32::NAN; total];
            let (first, rest) = got.split_at_mut(split);
            on_rows
                .run_chunk(&[&source, &other], total, first, 0)
                .expect("runs");
            on_rows
                .run_chunk(&[&source, &other], total, rest, split)
                .expect("runs");
            let same = expected
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
            assert!(
                same,
                "rows {rows}, row {row}, repeat {repeat}, total {total}, {second}"
            );
        }
    }
}
