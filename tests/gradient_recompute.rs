//! The keep-or-recompute pass (`autodiff::rematerialize`) on every spec's gradient graph at
//! reduced sizes: the result verifies, keeps the interface, computes the very same outputs in
//! the f64 reference interpreter (a recomputed value is the same ops on the same values), and
//! keeps no more bytes than keeping every value the backward pass reads. On a few specs the
//! f32 runtime runs the result and matches the graph without recomputation, and the arena of the
//! compiled step is not larger than without recomputation (printed with `--nocapture`).

mod gradient_common;

use std::collections::HashSet;

use gradient_common::{case_of, gradient, inputs, parameters, Case, CASES};
use nnc::autodiff::{forward_nodes, rematerialize, SavedChoice};
use nnc::prim::{verify, PrimGraph, PrimNodeId, PrimOp};
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

/// Bytes of the forward values (not inputs, parameters or constants) that backward nodes
/// read: what keeping everything costs. Reshapes count as the value they alias.
fn keep_everything_bytes(graph: &PrimGraph) -> u64 {
    let forward = forward_nodes(graph);
    let mut read: HashSet<PrimNodeId> = HashSet::new();
    for id in graph.node_ids().filter(|id| !forward.contains(id)) {
        for mut operand in graph.operands(id) {
            while let PrimOp::Reshape { .. } = graph.node(operand).op {
                operand = graph.operands(operand)[0];
            }
            let leaf = matches!(
                graph.node(operand).op,
                PrimOp::Input { .. } | PrimOp::Parameter { .. } | PrimOp::Constant(_)
            );
            if forward.contains(&operand) && !leaf {
                read.insert(operand);
            }
        }
    }
    read.iter()
        .map(|id| 4 * graph.node(*id).ty.element_count() as u64)
        .sum()
}

fn same_values(label: &str, before: &[Tensor<f64>], after: &[Tensor<f64>]) {
    for (index, (expected, found)) in before.iter().zip(after).enumerate() {
        assert_eq!(expected.shape, found.shape, "{label}: output {index}");
        let differing = expected
            .data
            .iter()
            .zip(&found.data)
            .position(|(a, b)| !(a == b || (a.is_nan() && b.is_nan())));
        assert!(differing.is_none(), "{label}: output {index} differs");
    }
}

fn check(case: &Case) {
    let (compilation, training) = gradient(case).expect("every spec declares a loss");
    let graph = &training.graph;
    let (recomputing, plan) = rematerialize(graph);
    verify(&recomputing).unwrap_or_else(|error| panic!("{}: {error}", case.spec));
    let names = |graph: &PrimGraph| -> Vec<String> {
        let inputs = graph.inputs.iter().map(|(name, _)| name.clone());
        inputs
            .chain(graph.outputs.iter().map(|(name, _)| name.clone()))
            .collect()
    };
    assert_eq!(
        names(graph),
        names(&recomputing),
        "{}: interface",
        case.spec
    );
    let inputs = inputs(graph, 5);
    let params = parameters(&compilation, 3);
    let before = nnc::interpret::interpret(graph, &inputs, &params).unwrap();
    let after = nnc::interpret::interpret(&recomputing, &inputs, &params).unwrap();
    same_values(case.spec, &before, &after);
    let everything = keep_everything_bytes(graph);
    let recomputed = plan
        .values
        .iter()
        .filter(|value| value.choice == SavedChoice::Recomputed)
        .count();
    println!(
        "{:<20} keeps {:>10} bytes instead of {:>10} ({recomputed} values recomputed)",
        case.spec,
        plan.kept_bytes(),
        everything
    );
    assert!(plan.kept_bytes() <= everything, "{}", case.spec);
}

#[test]
fn recomputation_keeps_every_spec_gradient_exact() {
    insta::glob!("../specs", "*.nn", |path| check(case_of(path)));
}

/// The f32 runtime on the graph with recomputation: its outputs against the runtime's on the
/// graph without, and the planned arenas of both.
fn run_on_runtime(spec: &str) {
    let case = CASES.iter().find(|case| case.spec == spec).unwrap();
    let (compilation, training) = gradient(case).unwrap();
    let (recomputing, _) = rematerialize(&training.graph);
    let inputs = inputs(&training.graph, 5);
    let store = ParamStore::initialize(&compilation, 3);
    let inputs_f32: Vec<Tensor<f32>> = inputs
        .iter()
        .map(|tensor| Tensor {
            shape: tensor.shape.clone(),
            data: tensor.data.iter().map(|value| *value as f32).collect(),
        })
        .collect();
    let keeping = Executable::new(training.graph.clone(), 1).unwrap();
    let executable = Executable::new(recomputing, 1).unwrap();
    let outputs = executable.run(&store, &inputs_f32).unwrap();
    // The same graph without recomputation on the same runtime: training-mode batch norm over
    // a batch of two is too ill-conditioned at these sizes to compare f32 with f64 closely
    // (the gradient tests of `src/train` do that at sizes where it is not).
    let reference: Vec<Tensor<f64>> = keeping
        .run(&store, &inputs_f32)
        .unwrap()
        .iter()
        .map(Tensor::to_f64)
        .collect();
    for ((name, _), (output, expected)) in training
        .graph
        .outputs
        .iter()
        .zip(outputs.iter().zip(&reference))
    {
        let scale = expected.data.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let error = output
            .data
            .iter()
            .zip(&expected.data)
            .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()))
            / scale;
        assert!(error <= 1e-4, "{spec}: `{name}` relative error {error:e}");
    }
    println!(
        "{spec:<20} planned arena {:>10} bytes keeping everything, {:>10} with recomputation",
        4 * keeping.planned_arena_floats(),
        4 * executable.planned_arena_floats()
    );
    assert!(executable.planned_arena_floats() <= keeping.planned_arena_floats());
}

#[test]
fn recomputation_runs_on_the_runtime_and_does_not_grow_the_arena() {
    for spec in ["lenet5", "resnet18", "mlp", "transformer"] {
        run_on_runtime(spec);
    }
}
