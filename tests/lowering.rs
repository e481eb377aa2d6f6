//! Lowering: snapshots of `nnc build --emit lowered` for small specs, and the reference
//! interpreter against PyTorch on single layers (convolutions with groups and dilation,
//! transposed convolutions, pooling in ceil mode, norms, softmax, activations, embedding,
//! layout ops, recurrences, attention, a cell written in the language). Fixtures come from
//! `scripts/make_forward_fixtures.py`; review snapshot changes with `cargo insta review`.

mod forward_common;

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::lower::SymbolValues;

/// The lowered text of a spec, as `--emit lowered` prints it (symbols at their report values).
fn lowered(spec: &str, settings: &[(&str, i64)]) -> String {
    let path = forward_common::repository_root().join(spec);
    let text = std::fs::read_to_string(&path).expect("spec is readable");
    let options = ElaborateOptions {
        param_overrides: settings
            .iter()
            .map(|(name, value)| (name.to_string(), OverrideValue::Int(*value)))
            .collect(),
        input_shape_overrides: Vec::new(),
    };
    let compilation = nnc::compile(&text, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, spec, &text))
    });
    let symbols = SymbolValues::report_values(&compilation.network);
    let graph = nnc::lower::lower(&compilation, &symbols).expect("the spec lowers");
    nnc::prim::verify(&graph).expect("the lowered graph verifies");
    nnc::prim::print::print_graph(&graph)
}

#[test]
fn mlp_lowered() {
    insta::assert_snapshot!(lowered("specs/mlp.nn", &[]));
}

#[test]
fn lenet5_lowered() {
    insta::assert_snapshot!(lowered("specs/lenet5.nn", &[]));
}

#[test]
fn tiny_cell_lowered() {
    insta::assert_snapshot!(lowered("tests/fixtures/forward/layers/elman_cell.nn", &[]));
}

#[test]
fn lstm_lowered() {
    let settings = [("vocab", 50), ("embed", 4), ("hidden", 3), ("classes", 2)];
    insta::assert_snapshot!(lowered("specs/lstm_classifier.nn", &settings));
}

#[test]
fn every_spec_lowers_and_verifies() {
    let mut failures = Vec::new();
    let directory = forward_common::repository_root().join("specs");
    let mut paths: Vec<_> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("spec is readable");
        let Ok(compilation) = nnc::compile(&text, &ElaborateOptions::default()) else {
            failures.push(format!("{}: does not compile", path.display()));
            continue;
        };
        let symbols = SymbolValues::report_values(&compilation.network);
        match nnc::lower::lower(&compilation, &symbols) {
            Ok(graph) => {
                if let Err(error) = nnc::prim::verify(&graph) {
                    failures.push(format!("{}: {error}", path.display()));
                }
            }
            Err(error) => failures.push(format!("{}: {error}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_symbol_is_an_error() {
    let text =
        std::fs::read_to_string(forward_common::repository_root().join("specs/lstm_classifier.nn"))
            .unwrap();
    let compilation = nnc::compile(&text, &ElaborateOptions::default())
        .ok()
        .unwrap();
    let error = nnc::lower::lower(&compilation, &SymbolValues::new().with("N", 2)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no value for the symbolic dim `T` (give one, for example T=1)"
    );
    let error = nnc::lower::lower(
        &compilation,
        &SymbolValues::new().with("N", 2).with("T", 3).with("M", 1),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "`M` is not a symbolic dim of this network (its symbols: N, T)"
    );
}

#[test]
fn single_layers_match_pytorch() {
    forward_common::check_directory("tests/fixtures/forward/layers");
}

/// The lowered mlp at batch 2, for the error tests below.
fn mlp_graph() -> (
    nnc::prim::PrimGraph,
    std::collections::BTreeMap<String, nnc::tensor::Tensor<f64>>,
) {
    let text =
        std::fs::read_to_string(forward_common::repository_root().join("specs/mlp.nn")).unwrap();
    let compilation = nnc::compile(&text, &ElaborateOptions::default())
        .ok()
        .unwrap();
    let graph = nnc::lower::lower(&compilation, &SymbolValues::new().with("N", 2)).unwrap();
    let params = compilation
        .shapes
        .params
        .state_dict_entries()
        .into_iter()
        .map(|(name, shape, _)| {
            let tensor = forward_common::parameter_tensor(&name, &shape);
            (name, tensor)
        })
        .collect();
    (graph, params)
}

#[test]
fn interpreter_rejects_bad_inputs_and_parameters() {
    use nnc::tensor::Tensor;
    let (graph, mut params) = mlp_graph();
    let wrong_shape = [Tensor::<f64>::zeros(&[3, 784])];
    let error = nnc::interpret::interpret(&graph, &wrong_shape, &params).unwrap_err();
    assert_eq!(
        error.to_string(),
        "input `image` must have shape [2, 784], but has shape [3, 784]"
    );
    let error = nnc::interpret::interpret(&graph, &[], &params).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the network takes 1 inputs (image), but 0 were given"
    );
    let inputs = [Tensor::<f64>::zeros(&[2, 784])];
    params.insert("fc2.bias".into(), Tensor::zeros(&[3]));
    let error = nnc::interpret::interpret(&graph, &inputs, &params).unwrap_err();
    assert_eq!(
        error.to_string(),
        "parameter `fc2.bias` must have shape [256], but has shape [3]"
    );
    params.remove("fc2.bias");
    params.remove("fc1.weight");
    let error = nnc::interpret::interpret(&graph, &inputs, &params).unwrap_err();
    assert_eq!(
        error.to_string(),
        "missing parameters: fc1.weight, fc2.bias"
    );
}

#[test]
fn interpreter_rejects_token_ids_outside_the_table() {
    use nnc::tensor::Tensor;
    let path = forward_common::repository_root().join("tests/fixtures/forward/layers/layout.json");
    let fixture = forward_common::load_fixture(&path);
    let compilation = forward_common::compile_fixture(&fixture);
    let symbols = SymbolValues::new().with("N", 1).with("T", 2);
    let graph = nnc::lower::lower(&compilation, &symbols).unwrap();
    let params = compilation
        .shapes
        .params
        .state_dict_entries()
        .into_iter()
        .map(|(name, shape, _)| {
            let tensor = forward_common::parameter_tensor(&name, &shape);
            (name, tensor)
        })
        .collect();
    let tokens = Tensor::from_vec(&[1, 2], vec![3.0, 11.0]).unwrap();
    let inputs = [tokens, Tensor::zeros(&[1, 4, 6]), Tensor::zeros(&[1, 6, 3])];
    let error = nnc::interpret::interpret(&graph, &inputs, &params).unwrap_err();
    assert_eq!(
        error.to_string(),
        "`embedding`: index 11 is outside the table of 11 rows"
    );
    let fractional = Tensor::from_vec(&[1, 2], vec![3.0, 0.5]).unwrap();
    let inputs = [
        fractional,
        Tensor::zeros(&[1, 4, 6]),
        Tensor::zeros(&[1, 6, 3]),
    ];
    let error = nnc::interpret::interpret(&graph, &inputs, &params).unwrap_err();
    assert_eq!(
        error.to_string(),
        "input `tokens` holds integer ids, but its element 1 is 0.5"
    );
}

#[test]
fn shape_rules_reject_mismatched_operands() {
    use nnc::prim::*;
    let origin = Origin {
        path: nnc::ir::InstancePath(vec!["test".into()]),
        span: nnc::syntax::Span::new(nnc::syntax::SourceId::Spec, 0, 0),
    };
    let mut graph = PrimGraph::default();
    let a = graph.add_input("a", TensorType::float(vec![2, 3]), origin.clone());
    let b = graph.add_input("b", TensorType::float(vec![4, 5]), origin.clone());
    let error = graph
        .add(PrimOp::MatMul, &[a, b], origin.clone())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "`matmul`: inner dims of [2, 3] and [4, 5] differ"
    );
    let error = graph
        .add(PrimOp::Binary(BinaryFn::Add), &[a, b], origin.clone())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "`add`: [2, 3] and [4, 5] do not broadcast: dim 0 is 2 vs 4"
    );
    let error = graph
        .add(PrimOp::Reshape { shape: vec![5] }, &[a], origin)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "`reshape`: cannot reshape [2, 3] to [5]: element counts differ"
    );
}

#[test]
fn random_normal_has_standard_moments() {
    let count = 200_000u64;
    let samples: Vec<f64> = (0..count)
        .map(|index| nnc::interpret::standard_normal(42, index))
        .collect();
    let mean = samples.iter().sum::<f64>() / count as f64;
    let variance = samples
        .iter()
        .map(|value| (value - mean).powi(2))
        .sum::<f64>()
        / count as f64;
    // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((variance - 1.0).abs() < 0.015, "variance {variance}");
}
