//! Edge cases of the f32 runtime against the f64 reference interpreter: results that must not
//! depend on the thread count (1, 2, 3 or all cores) for kernels large enough to be split, and
//! graphs that are valid by the primitive ops' documented rules but outside what lowering
//! produces today (transposed convolutions with any `output_size`, a batch of zero).

#[allow(dead_code)]
mod runtime_common;

use nnc::prim::*;
use runtime_common::{check_cases, Case, Rng};

/// Large kernels (split across threads) give the same bits at 1, 2, 3 and "all cores" (0).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng(10);
    let mut cases = Vec::new();
    let mut matmul = Case::new("matmul [3, 96, 100] x [100, 90]");
    let (a, b) = (
        matmul.input(&mut rng, &[3, 96, 100]),
        matmul.parameter(&mut rng, &[100, 90]),
    );
    cases.push(matmul.finish(PrimOp::MatMul, &[a, b]));
    let mut conv = Case::new("conv2d [2, 16, 20, 20] * [32, 16, 3, 3]");
    let (x, w) = (
        conv.input(&mut rng, &[2, 16, 20, 20]),
        conv.parameter(&mut rng, &[32, 16, 3, 3]),
    );
    let params = Conv2dParams {
        stride: [1, 1],
        padding: [[1, 2], [0, 1]],
        dilation: [1, 1],
        groups: 1,
    };
    cases.push(conv.finish(PrimOp::Conv2d(params), &[x, w]));
    let mut pool = Case::new("max_pool2d [4, 32, 33, 31]");
    let x = pool.input(&mut rng, &[4, 32, 33, 31]);
    let params = Pool2dParams {
        kind: PoolKind::Max,
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        dilation: [1, 1],
        ceil_mode: true,
    };
    cases.push(pool.finish(PrimOp::Pool2d(params), &[x]));
    for case in &cases {
        let store = runtime_common::param_store(&case.params);
        let runs: Vec<Vec<u32>> = [1, 2, 3, 0]
            .iter()
            .map(|threads| {
                let executable =
                    nnc::runtime::Executable::new(case.graph.clone(), *threads).expect("compiles");
                let outputs = executable
                    .run(&store, &case.inputs)
                    .unwrap_or_else(|error| panic!("{}: {error}", case.label));
                outputs[0]
                    .data
                    .iter()
                    .map(|value| value.to_bits())
                    .collect()
            })
            .collect();
        assert!(
            runs.iter().all(|run| *run == runs[0]),
            "{}: thread counts disagree",
            case.label
        );
    }
}

/// A batch of zero images: the interpreter gives an empty output, as PyTorch does, and so do
/// the runtime's matmul and pooling.
#[test]
fn zero_batch_convolutions_match_the_interpreter() {
    check_cases("zero batch", 2, 11, |rng, index| {
        let mut case = Case::new(["conv2d", "conv_transpose2d"][index]);
        let x = case.input(rng, &[0, 2, 5, 5]);
        let w = case.input(rng, &[2, 2, 3, 3]);
        let op = if index == 0 {
            PrimOp::Conv2d(Conv2dParams {
                stride: [1, 1],
                padding: [[1, 1], [1, 1]],
                dilation: [1, 1],
                groups: 1,
            })
        } else {
            PrimOp::ConvTranspose2d(ConvTranspose2dParams {
                stride: [2, 2],
                padding: [0, 0],
                dilation: [1, 1],
                groups: 1,
                output_size: [11, 11],
            })
        };
        case.finish(op, &[x, w])
    });
}

/// `output_size` beyond PyTorch's sizes: the op's documented semantics leave the extra rows and
/// columns zero (larger) or drop scattered positions (smaller).
#[test]
fn conv_transpose2d_with_any_output_size_matches_the_interpreter() {
    check_cases("conv_transpose2d output_size", 2, 7, |rng, index| {
        // Input 3x3, kernel 3, stride 2: PyTorch's sizes are 7 and 8.
        let output_size = if index == 0 { [10, 9] } else { [5, 6] };
        let params = ConvTranspose2dParams {
            stride: [2, 2],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            output_size,
        };
        let mut case = Case::new(format!("output_size {output_size:?}"));
        let x = case.input(rng, &[1, 2, 3, 3]);
        let w = case.input(rng, &[2, 3, 3, 3]);
        case.finish(PrimOp::ConvTranspose2d(params), &[x, w])
    });
}
