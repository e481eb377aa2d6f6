//! Training-mode lowering (`LowerMode::Training`): batch norm and layer norm against PyTorch's
//! `module.train()` (fixtures by `scripts/pytorch_train_mode_fixtures.py`: outputs and updated
//! running statistics), finite-difference gradients of training-mode batch norm graphs,
//! dropout's statistics and its masks under run keys in the interpreter and the runtime, and the
//! errors for what training mode does not support.

#[allow(dead_code)]
mod forward_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nnc::elaborate::ElaborateOptions;
use nnc::lower::{lower_with, LowerMode, LowerOptions, SymbolValues};
use nnc::prim::*;
use nnc::tensor::Tensor;

const TRAINING: LowerOptions = LowerOptions {
    mode: LowerMode::Training,
    losses: false,
};

fn compile(spec: &str) -> nnc::Compilation {
    nnc::compile(spec, &ElaborateOptions::default()).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, "test.nn", spec))
    })
}

fn symbols(pairs: &[(&str, usize)]) -> SymbolValues {
    let mut values = SymbolValues::new();
    for (name, value) in pairs {
        values.set(name, *value);
    }
    values
}

/// Every parameter of the spec from the fixtures' generator (positive variances, scales near 1).
fn fixture_parameters(compilation: &nnc::Compilation) -> BTreeMap<String, Tensor<f64>> {
    compilation
        .shapes
        .params
        .state_dict_entries()
        .into_iter()
        .map(|(name, shape, _)| {
            let tensor = forward_common::parameter_tensor(&name, &shape);
            (name, tensor)
        })
        .collect()
}

/// Lowers a train-mode fixture in training mode, interprets it and returns each fixture
/// output's error; every output of the graph must be in the fixture and the other way round.
fn run_train_fixture(path: &Path) -> Result<Vec<(String, f64)>, String> {
    let fixture = forward_common::load_fixture(path);
    let compilation = forward_common::compile_fixture(&fixture);
    let params = fixture_parameters(&compilation);
    let mut values = SymbolValues::new();
    for (name, value) in &fixture.symbols {
        values.set(name, *value);
    }
    let graph = lower_with(&compilation, &values, &TRAINING).map_err(|error| error.to_string())?;
    let inputs: Vec<Tensor<f64>> = graph
        .inputs
        .iter()
        .map(|(name, _)| {
            let input = fixture.inputs.iter().find(|input| &input.name == name);
            forward_common::input_tensor(input.expect("the fixture has every input"))
        })
        .collect();
    let outputs = nnc::interpret::interpret(&graph, &inputs, &params).map_err(|e| e.to_string())?;
    let ours: Vec<&str> = graph
        .outputs
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let theirs: Vec<&str> = fixture
        .outputs
        .iter()
        .map(|output| output.name.as_str())
        .collect();
    let (mut ours_sorted, mut theirs_sorted) = (ours.clone(), theirs.clone());
    ours_sorted.sort();
    theirs_sorted.sort();
    if ours_sorted != theirs_sorted {
        return Err(format!("outputs differ: nnc {ours:?}, pytorch {theirs:?}"));
    }
    let mut errors = Vec::new();
    for reference in &fixture.outputs {
        let position = ours
            .iter()
            .position(|name| *name == reference.name)
            .unwrap();
        let output = &outputs[position];
        if output.shape != reference.shape {
            return Err(format!("`{}` has shape {:?}", reference.name, output.shape));
        }
        let error = forward_common::relative_error(&output.data, &reference.data);
        errors.push((reference.name.clone(), error));
    }
    Ok(errors)
}

#[test]
fn batch_norm_and_layer_norm_match_pytorch_in_training_mode() {
    let directory = forward_common::repository_root().join("tests/fixtures/train_mode");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("the fixture directory exists")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 3, "{paths:?}");
    forward_common::check_paths(&paths, run_train_fixture, "training-mode outputs");
}

/// The output contract: network outputs first, then `buffer_update.<name>` per running
/// statistic; inference has no updates, and training has no batch norm folding to do.
#[test]
fn training_graphs_end_with_one_update_per_running_statistic() {
    let spec = "input x: [N, 3, 4, 4]\n\
                output y = x -> conv2d(4, 3, pad = 1) as conv -> batch_norm as bn -> relu\n";
    let compilation = compile(spec);
    let values = symbols(&[("N", 2)]);
    let names = |graph: &PrimGraph| -> Vec<String> {
        graph.outputs.iter().map(|(name, _)| name.clone()).collect()
    };
    let inference = nnc::lower::lower(&compilation, &values).unwrap();
    assert_eq!(names(&inference), ["y"]);
    let training = lower_with(&compilation, &values, &TRAINING).unwrap();
    assert_eq!(
        names(&training),
        [
            "y",
            "buffer_update.bn.running_mean",
            "buffer_update.bn.running_var"
        ]
    );
    verify(&training).unwrap();
}

/// `sum(output * weights)` over the graph's first output, as the only output.
fn weighted_sum_loss(graph: &mut PrimGraph, seed: u64) {
    let value = graph.outputs[0].1;
    let origin = graph.node(value).origin.clone();
    let shape = graph.node(value).ty.shape.clone();
    let count: usize = shape.iter().product();
    let weights = forward_common::fixture_values(&format!("loss weights {seed}"), count);
    let weights = Tensor::from_vec(&shape, weights.iter().map(|u| 2.0 * u - 1.0).collect());
    let weights = PrimOp::Constant(Constant::Dense(weights.unwrap()));
    let weights = graph.add(weights, &[], origin.clone()).unwrap();
    let product = graph
        .add(
            PrimOp::Binary(BinaryFn::Mul),
            &[value, weights],
            origin.clone(),
        )
        .unwrap();
    let axes = (0..shape.len()).collect();
    let sum = PrimOp::Reduce {
        op: ReduceFn::Sum,
        axes,
        keepdim: false,
    };
    let loss = graph.add(sum, &[product], origin).unwrap();
    graph.outputs = vec![("loss".into(), loss)];
}

/// The value finite differences perturb: the input `x` or a parameter.
fn leaf_element<'a>(
    leaf: &str,
    element: usize,
    inputs: &'a mut [Tensor<f64>],
    params: &'a mut BTreeMap<String, Tensor<f64>>,
) -> &'a mut f64 {
    if leaf == "x" {
        &mut inputs[0].data[element]
    } else {
        &mut params.get_mut(leaf).expect("a parameter").data[element]
    }
}

fn interpreted_loss(
    graph: &PrimGraph,
    inputs: &[Tensor<f64>],
    params: &BTreeMap<String, Tensor<f64>>,
) -> f64 {
    nnc::interpret::interpret(graph, inputs, params).unwrap()[0].data[0]
}

/// `(loss(v + h) - loss(v - h)) / 2h` for every element `v` of `leaf`.
fn central_differences(
    graph: &PrimGraph,
    leaf: &str,
    inputs: &[Tensor<f64>],
    params: &BTreeMap<String, Tensor<f64>>,
) -> Vec<f64> {
    let step = 1e-5;
    let (mut inputs, mut params) = (inputs.to_vec(), params.clone());
    let count = if leaf == "x" {
        inputs[0].data.len()
    } else {
        params[leaf].data.len()
    };
    let mut result = Vec::with_capacity(count);
    for element in 0..count {
        let original = *leaf_element(leaf, element, &mut inputs, &mut params);
        *leaf_element(leaf, element, &mut inputs, &mut params) = original + step;
        let above = interpreted_loss(graph, &inputs, &params);
        *leaf_element(leaf, element, &mut inputs, &mut params) = original - step;
        let below = interpreted_loss(graph, &inputs, &params);
        *leaf_element(leaf, element, &mut inputs, &mut params) = original;
        result.push((above - below) / (2.0 * step));
    }
    result
}

/// Gradients of training-mode batch norm graphs (through the batch mean and variance) against
/// central differences of the loss, for the input and every parameter (the running statistics
/// included, whose gradient is zero), in the interpreter.
#[test]
fn training_batch_norm_gradients_match_finite_differences() {
    let specs = [
        "input x: [N, 3, 3, 2]\noutput y = x -> batch_norm as bn\n",
        "input x: [N, 5]\noutput y = x -> batch_norm(affine = false, eps = 1e-3) as bn\n",
        "input x: [N, 2, 5, 5]\n\
         output y = x -> conv2d(3, 3, pad = 1, bias = false) as conv -> batch_norm as bn -> relu\n\
           -> conv2d(2, 3, stride = 2) as head -> batch_norm(momentum = 0.5) as head_bn\n",
    ];
    for (index, spec) in specs.iter().enumerate() {
        let compilation = compile(spec);
        let mut graph = lower_with(&compilation, &symbols(&[("N", 3)]), &TRAINING).unwrap();
        weighted_sum_loss(&mut graph, index as u64);
        let params = fixture_parameters(&compilation);
        let shape = graph.node(graph.inputs[0].1).ty.shape.clone();
        let uniforms =
            forward_common::fixture_values(&format!("x {index}"), shape.iter().product());
        let data = uniforms.iter().map(|u| 4.0 * u - 2.0).collect();
        let inputs = vec![Tensor::from_vec(&shape, data).unwrap()];
        let gradient_graph = nnc::autodiff::gradient(&graph, 0, &[0]).unwrap();
        verify(&gradient_graph).unwrap();
        let values = nnc::interpret::interpret(&gradient_graph, &inputs, &params).unwrap();
        let mut leaves: Vec<String> = params.keys().cloned().collect();
        leaves.push("x".into());
        for leaf in leaves {
            let position = gradient_graph
                .outputs
                .iter()
                .position(|(output, _)| *output == format!("grad.{leaf}"))
                .unwrap_or_else(|| panic!("no gradient of `{leaf}`"));
            let analytic = &values[position].data;
            let numeric = central_differences(&graph, &leaf, &inputs, &params);
            let scale = numeric
                .iter()
                .fold(1e-3f64, |largest, v| largest.max(v.abs()));
            let worst = analytic
                .iter()
                .zip(&numeric)
                .fold(0.0f64, |largest, (a, n)| largest.max((a - n).abs()));
            assert!(
                worst / scale <= 1e-6,
                "spec {index}, `{leaf}`: relative error {:.2e}\nanalytic {analytic:?}\n\
                 numeric {numeric:?}",
                worst / scale
            );
        }
    }
}
