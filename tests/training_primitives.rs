//! The primitives training added, on the f32 runtime against the f64 reference interpreter at
//! random shapes from fixed seeds (see `tests/runtime_common` for the metric and the 1-vs-2
//! thread bit check): the comparisons (with ties and NaN, alone and inside fused elementwise
//! chains), `scatter_add` (repeated indices, out-of-range indices), and the random ops under a
//! run key (uniform noise bit for bit, normal noise within rounding, fresh numbers per key).

#[allow(dead_code)]
mod runtime_common;

use std::collections::BTreeMap;

use nnc::fuse::KernelKind;
use nnc::ir::ElementType;
use nnc::prim::*;
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use runtime_common::{check_cases, param_store, Case, Rng};

const COMPARISONS: [BinaryFn; 3] = [BinaryFn::Greater, BinaryFn::GreaterEqual, BinaryFn::Equal];

/// `count` values drawn from a few levels (signed zeros, NaN and infinity included), so that
/// ties are common.
fn tied_values(rng: &mut Rng, count: usize) -> Vec<f32> {
    let levels = [-1.0, -0.0, 0.0, 0.5, 2.0, f32::NAN, f32::INFINITY];
    (0..count)
        .map(|_| levels[rng.int(0, levels.len() - 1)])
        .collect()
}

fn tied_input(case: &mut Case, rng: &mut Rng, shape: &[usize]) -> PrimNodeId {
    let data = tied_values(rng, shape.iter().product());
    let values = Tensor::from_vec(shape, data).unwrap();
    case.input_values(values, ElementType::Float32)
}

#[test]
fn comparisons_with_ties_and_nan_match_the_interpreter() {
    check_cases("compare", 36, 41, |rng, index| {
        let function = COMPARISONS[index % 3];
        let output = if index >= 33 {
            vec![3, 5, 67]
        } else {
            rng.shape(3, 6)
        };
        // Equal shapes, a per-last-dim vector, a scalar, or a middle-axis broadcast.
        let right = match (index / 3) % 4 {
            0 => output.clone(),
            1 => vec![output[2]],
            2 => Vec::new(),
            _ => vec![output[0], 1, output[2]],
        };
        let mut case = Case::new(format!("{} {output:?} {right:?}", function.name()));
        let a = tied_input(&mut case, rng, &output);
        let b = tied_input(&mut case, rng, &right);
        case.finish(PrimOp::Binary(function), &[a, b])
    });
}

/// A dropout-like chain `x * [u >= p] / (1 - p)` and a relu-gradient-like `g * [x > 0]`: the
/// comparisons sit inside fused elementwise kernels and agree with the interpreter.
#[test]
fn comparisons_inside_fused_chains_match_the_interpreter() {
    check_cases("masked chain", 16, 42, |rng, index| {
        let shape = rng.any_shape(1, 4, 7);
        let mut case = Case::new(format!("chain {index} {shape:?}"));
        let x = case.input(rng, &shape);
        let u = case.input(rng, &shape);
        let function = COMPARISONS[index % 3];
        let threshold = case.add(PrimOp::Constant(Constant::scalar(0.25)), &[]);
        let mask = case.add(PrimOp::Binary(function), &[u, threshold]);
        let keep = case.add(PrimOp::Constant(Constant::scalar(0.75)), &[]);
        let scaled = case.add(PrimOp::Binary(BinaryFn::Div), &[mask, keep]);
        let dropped = case.add(PrimOp::Binary(BinaryFn::Mul), &[x, scaled]);
        let zero = case.add(PrimOp::Constant(Constant::scalar(0.0)), &[]);
        let positive = case.add(PrimOp::Binary(BinaryFn::Greater), &[dropped, zero]);
        case.finish(PrimOp::Binary(BinaryFn::Mul), &[u, positive])
    });
}

#[test]
fn comparisons_fuse_into_one_elementwise_kernel() {
    let mut rng = Rng(43);
    let mut case = Case::new("fused compare");
    let x = case.input(&mut rng, &[4, 9]);
    let y = case.input(&mut rng, &[9]);
    let mask = case.add(PrimOp::Binary(BinaryFn::GreaterEqual), &[x, y]);
    let negated = case.add(PrimOp::Unary(UnaryFn::Neg), &[mask]);
    let case = case.finish(PrimOp::Binary(BinaryFn::Mul), &[negated, x]);
    let executable = Executable::new(case.graph.clone(), 1).expect("compiles");
    let kernels = &executable.fused().kernels.kernels;
    assert_eq!(kernels.len(), 1, "{}", executable.kernel_listing());
    assert!(matches!(kernels[0].kind, KernelKind::Elementwise(_)));
    assert!(kernels[0].covers.contains(&mask));
}

/// Updates `[I..., D...]` and indices `[I...]` that repeat rows (and may skip some).
fn scatter_add_case(rng: &mut Rng) -> Case {
    let rows = rng.int(1, 9);
    let index_shape = rng.any_shape(0, 2, 5);
    let mut update_shape = index_shape.clone();
    update_shape.extend(rng.any_shape(0, 2, 5));
    let count: usize = index_shape.iter().product();
    let indices: Vec<f32> = (0..count).map(|_| rng.int(0, rows - 1) as f32).collect();
    let mut case = Case::new(format!(
        "{rows} rows, updates {update_shape:?}, indices {index_shape:?}"
    ));
    let updates = case.input(rng, &update_shape);
    let ids = case.input_values(
        Tensor::from_vec(&index_shape, indices).unwrap(),
        ElementType::Int64,
    );
    case.finish(PrimOp::ScatterAdd { rows }, &[updates, ids])
}

#[test]
fn scatter_add_matches_the_interpreter() {
    check_cases("scatter_add", 30, 44, |rng, _| scatter_add_case(rng));
}

/// An index outside `0..rows` (below 0, exactly `rows`, far past it, between rows, NaN) is an
/// error in both the interpreter and the runtime, never a write out of bounds.
#[test]
fn scatter_add_rejects_indices_outside_the_rows() {
    let mut rng = Rng(45);
    for kind in 0..5 {
        let mut case = scatter_add_case(&mut rng);
        let rows = case.graph.node(case.graph.outputs[0].1).ty.shape[0];
        let bad = [-1.0, rows as f32, 1000.0, 0.5, f32::NAN][kind];
        let ids = case.inputs.last_mut().unwrap();
        if ids.data.is_empty() {
            continue;
        }
        let last = ids.data.len() - 1;
        ids.data[last] = bad;
        let inputs: Vec<Tensor<f64>> = case.inputs.iter().map(Tensor::to_f64).collect();
        let interpreted = nnc::interpret::interpret(&case.graph, &inputs, &BTreeMap::new());
        assert!(
            interpreted.is_err(),
            "{}: interpreter accepted {bad}",
            case.label
        );
        let executable = Executable::new(case.graph.clone(), 2).expect("compiles");
        let error = executable
            .run(&param_store(&case.params), &case.inputs)
            .expect_err("an index outside the rows must fail");
        let expected = format!("index {bad} is not a row of a table with {rows} rows");
        assert!(error.to_string().contains(&expected), "{error}");
    }
}

/// A graph with uniform and normal noise of `shape` as outputs, and the noise used in a chain.
fn noise_graph(seed: u64, shape: &[usize]) -> PrimGraph {
    let mut case = Case::new("noise");
    let uniform = case.add(
        PrimOp::RandomUniform {
            seed,
            shape: shape.to_vec(),
        },
        &[],
    );
    let normal = case.add(
        PrimOp::RandomNormal {
            seed: seed ^ 1,
            shape: shape.to_vec(),
        },
        &[],
    );
    let half = case.add(PrimOp::Constant(Constant::scalar(0.5)), &[]);
    let mask = case.add(PrimOp::Binary(BinaryFn::GreaterEqual), &[uniform, half]);
    let masked = case.add(PrimOp::Binary(BinaryFn::Mul), &[normal, mask]);
    case.output(uniform);
    case.output(normal);
    case.output(masked);
    case.graph
}

/// For every run key, the runtime draws the interpreter's uniform numbers bit for bit (they
/// are multiples of 2^-24) and its normal numbers within f32 rounding; key 0 is the key of
/// plain `run`, and other keys give other numbers.
#[test]
fn random_ops_follow_the_run_key_in_the_runtime_and_the_interpreter() {
    let shape = [3, 130];
    let graph = noise_graph(0x5eed, &shape);
    let executable = Executable::new(graph.clone(), 2).expect("compiles");
    let store = param_store(&[]);
    let bound = executable.bind(&store).expect("binds");
    let mut uniforms_by_key = Vec::new();
    for key in [0u64, 1, 2, 987_654_321] {
        let reference =
            nnc::interpret::interpret_with_key(&graph, &[], &BTreeMap::new(), key).unwrap();
        let outputs = bound.run_with_key(&[], key).expect("runs");
        let unkeyed = executable
            .run_with_key(&store, &[], key)
            .expect("runs unbound");
        assert_eq!(outputs, unkeyed, "key {key}: bound and unbound runs differ");
        let uniform: Vec<f64> = outputs[0]
            .data
            .iter()
            .map(|value| f64::from(*value))
            .collect();
        assert_eq!(
            uniform, reference[0].data,
            "key {key}: uniform noise differs"
        );
        assert!(uniform.iter().all(|value| (0.0..1.0).contains(value)));
        for (got, expected) in outputs[1].data.iter().zip(&reference[1].data) {
            assert!((f64::from(*got) - expected).abs() <= 1e-6 * expected.abs().max(1.0));
        }
        if key == 0 {
            assert_eq!(outputs, bound.run(&[]).expect("runs"), "key 0 is plain run");
        }
        uniforms_by_key.push(uniform);
    }
    for (first, uniform) in uniforms_by_key.iter().enumerate() {
        for other in &uniforms_by_key[first + 1..] {
            let same = uniform.iter().zip(other).filter(|(a, b)| a == b).count();
            assert!(
                same < 5,
                "two keys share {same} of {} numbers",
                uniform.len()
            );
        }
    }
}

#[test]
fn random_uniform_is_uniform_on_the_unit_interval() {
    let count = 200_000u64;
    let seed = nnc::interpret::seed_for_run(7, 3);
    let samples: Vec<f64> = (0..count)
        .map(|index| nnc::interpret::uniform(seed, index))
        .collect();
    let mean = samples.iter().sum::<f64>() / count as f64;
    // Standard errors: sqrt(1/12n) = 0.00065 for the mean, sqrt(p(1-p)/n) <= 0.0011 for each
    // quartile's share.
    assert!((mean - 0.5).abs() < 0.004, "mean {mean}");
    for quartile in 0..4 {
        let low = quartile as f64 / 4.0;
        let share = samples
            .iter()
            .filter(|value| (low..low + 0.25).contains(*value))
            .count() as f64
            / count as f64;
        assert!((share - 0.25).abs() < 0.006, "quartile {quartile}: {share}");
    }
    assert!(samples
        .iter()
        .all(|value| (0.0..1.0).contains(value) && (value * 16_777_216.0).fract() == 0.0));
}
