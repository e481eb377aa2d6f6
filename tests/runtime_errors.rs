//! Bad input to [`Executable::run`]: the wrong number of inputs, inputs of the wrong shape or
//! length, missing parameters, parameters of the wrong shape or length, and token ids outside an
//! embedding table. Each must come back as a [`RuntimeError`] whose message names what is wrong
//! (the input or parameter, the expected and the found sizes), at any thread count, never as a
//! panic or a read out of bounds, and must leave the executable usable.

#[allow(dead_code)]
mod runtime_common;

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::lower::SymbolValues;
use nnc::prim::*;
use nnc::runtime::{Executable, RuntimeError};
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

/// A spec from specs/ with `--set` values.
fn compile_spec(name: &str, settings: &[(&str, i64)]) -> nnc::Compilation {
    let path = format!("{}/specs/{name}.nn", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("spec readable");
    let options = ElaborateOptions {
        param_overrides: settings
            .iter()
            .map(|(name, value)| (name.to_string(), OverrideValue::Int(*value)))
            .collect(),
        input_shape_overrides: Vec::new(),
    };
    nnc::compile(&text, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, &path, &text))
    })
}

/// The spec lowered at `symbols`, compiled at 1 and at 2 threads.
fn compile_executables(
    compilation: &nnc::Compilation,
    symbols: &[(&str, usize)],
) -> Vec<Executable> {
    let mut values = SymbolValues::new();
    for (name, value) in symbols {
        values.set(name, *value);
    }
    let graph = nnc::lower::lower(compilation, &values).expect("lowers");
    [1, 2]
        .iter()
        .map(|threads| Executable::new(graph.clone(), *threads).expect("compiles"))
        .collect()
}

/// The message of the error `run` must return, at every executable, the same at each.
fn error_message(
    executables: &[Executable],
    params: &ParamStore,
    inputs: &[Tensor<f32>],
) -> String {
    let messages: Vec<String> = executables
        .iter()
        .map(|executable| match executable.run(params, inputs) {
            Ok(_) => panic!("bad input was accepted"),
            Err(error) => error.to_string(),
        })
        .collect();
    assert!(
        messages.windows(2).all(|pair| pair[0] == pair[1]),
        "messages differ by thread count: {messages:?}"
    );
    messages[0].clone()
}

fn assert_mentions(message: &str, facts: &[&str]) {
    for fact in facts {
        assert!(
            message.contains(fact),
            "the message `{message}` does not mention `{fact}`"
        );
    }
}

fn mlp() -> (nnc::Compilation, Vec<Executable>, ParamStore) {
    let compilation = compile_spec("mlp", &[]);
    let executables = compile_executables(&compilation, &[("N", 2)]);
    let params = ParamStore::initialize(&compilation, 1);
    (compilation, executables, params)
}

#[test]
fn wrong_input_count_is_an_error_naming_the_inputs() {
    let (_, executables, params) = mlp();
    let image = Tensor::zeros(&[2, 784]);
    assert_eq!(
        error_message(&executables, &params, &[]),
        "the network takes 1 input(s) (image), but 0 were given"
    );
    assert_eq!(
        error_message(&executables, &params, &[image.clone(), image]),
        "the network takes 1 input(s) (image), but 2 were given"
    );
    let siamese = compile_spec("siamese", &[]);
    let executables = compile_executables(&siamese, &[("N", 2)]);
    let message = error_message(&executables, &ParamStore::initialize(&siamese, 1), &[]);
    assert!(
        message.starts_with("the network takes 2 input(s) ("),
        "{message}"
    );
    assert!(message.ends_with("), but 0 were given"), "{message}");
}

#[test]
fn wrong_input_shape_is_an_error_naming_the_input_and_both_sizes() {
    let (_, executables, params) = mlp();
    let message = error_message(&executables, &params, &[Tensor::zeros(&[3, 784])]);
    assert_mentions(&message, &["input `image`", "[2, 784]", "2352 elements"]);
    let message = error_message(&executables, &params, &[Tensor::zeros(&[784])]);
    assert_mentions(&message, &["input `image`", "[2, 784]", "784 elements"]);
}

/// A tensor whose data disagrees with its own shape (the fields are public) is caught before
/// any kernel reads it.
#[test]
fn input_data_shorter_than_its_shape_is_an_error() {
    let (_, executables, params) = mlp();
    let short = Tensor {
        shape: vec![2, 784],
        data: vec![0.5; 10],
    };
    let message = error_message(&executables, &params, &[short]);
    assert_mentions(&message, &["input `image`", "[2, 784]", "10 elements"]);
}

#[test]
fn wrong_input_shape_with_the_right_count_names_the_found_shape() {
    let (_, executables, params) = mlp();
    let message = error_message(&executables, &params, &[Tensor::zeros(&[4, 392])]);
    assert_mentions(&message, &["input `image`", "[2, 784]", "[4, 392]"]);
}

#[test]
fn missing_parameters_are_errors_naming_one() {
    // lenet5's graph with mlp's weights: no tensor of lenet5's convolutions is bound.
    let lenet = compile_spec("lenet5", &[]);
    let executables = compile_executables(&lenet, &[("N", 1)]);
    let mlp_params = ParamStore::initialize(&compile_spec("mlp", &[]), 1);
    let message = error_message(&executables, &mlp_params, &[Tensor::zeros(&[1, 1, 28, 28])]);
    assert_eq!(
        message,
        "parameter `conv1.weight` is missing from the bound weights"
    );
    // A hand-built graph reading a parameter the store does not have.
    let mut case = runtime_common::Case::new("missing");
    let x = case.input(&mut runtime_common::Rng(1), &[2, 3]);
    let p = case.add(
        PrimOp::Parameter {
            name: "absent.bias".into(),
            shape: vec![3],
        },
        &[],
    );
    let case = case.finish(PrimOp::Binary(BinaryFn::Add), &[x, p]);
    let executables: Vec<Executable> = [1, 2]
        .iter()
        .map(|threads| Executable::new(case.graph.clone(), *threads).unwrap())
        .collect();
    let message = error_message(
        &executables,
        &runtime_common::param_store(&[]),
        &case.inputs,
    );
    assert_eq!(
        message,
        "parameter `absent.bias` is missing from the bound weights"
    );
}

#[test]
fn parameters_of_the_wrong_shape_are_errors_naming_both_shapes() {
    let (_, executables, params) = mlp();
    let inputs = [Tensor::zeros(&[2, 784])];
    let mut bad = params.clone();
    *bad.get_mut("fc2.bias").unwrap() = Tensor::zeros(&[3]);
    assert_eq!(
        error_message(&executables, &bad, &inputs),
        "parameter `fc2.bias` should have shape [256], but has shape [3]"
    );
    // The same element count transposed is still the wrong shape.
    let mut bad = params.clone();
    *bad.get_mut("fc1.weight").unwrap() = Tensor::zeros(&[784, 256]);
    assert_eq!(
        error_message(&executables, &bad, &inputs),
        "parameter `fc1.weight` should have shape [256, 784], but has shape [784, 256]"
    );
    // Another spec's tensor under the same name.
    let lenet_params = ParamStore::initialize(&compile_spec("lenet5", &[]), 1);
    assert_eq!(
        error_message(&executables, &lenet_params, &inputs),
        "parameter `fc1.weight` should have shape [256, 784], but has shape [120, 400]"
    );
}

/// A parameter whose data is shorter than its own shape is rejected before any kernel reads it.
#[test]
fn parameter_data_shorter_than_its_shape_is_an_error() {
    let (_, executables, params) = mlp();
    let mut bad = params.clone();
    bad.get_mut("fc1.bias").unwrap().data.truncate(3);
    let message = error_message(&executables, &bad, &[Tensor::zeros(&[2, 784])]);
    assert_mentions(&message, &["parameter `fc1.bias`", "[256]"]);
}

#[test]
fn parameter_data_shorter_than_its_shape_names_the_length() {
    let (_, executables, params) = mlp();
    let mut bad = params.clone();
    bad.get_mut("fc1.bias").unwrap().data.truncate(3);
    let message = error_message(&executables, &bad, &[Tensor::zeros(&[2, 784])]);
    assert_mentions(&message, &["parameter `fc1.bias`", "[256]", "3 elements"]);
}

/// Token ids outside the embedding table (negative, the row count, far beyond, fractional) on a
/// whole network: an error naming the id and the table's size.
#[test]
fn token_ids_outside_the_table_are_errors() {
    let compilation = compile_spec(
        "lstm_classifier",
        &[("vocab", 50), ("hidden", 8), ("embed", 4)],
    );
    let executables = compile_executables(&compilation, &[("N", 1), ("T", 3)]);
    let params = ParamStore::initialize(&compilation, 1);
    for bad in [-3.0f32, 50.0, 1e9, 2.5] {
        let tokens = Tensor::from_vec(&[1, 3], vec![1.0, bad, 2.0]).unwrap();
        let message = error_message(&executables, &params, &[tokens]);
        assert_mentions(&message, &[&format!("index {bad}"), "50 rows"]);
    }
}

/// An error leaves nothing behind: the same executable then runs good input to the same result
/// as a fresh one.
#[test]
fn an_executable_still_runs_after_an_error() {
    let (compilation, executables, params) = mlp();
    let image = Tensor::from_vec(
        &[2, 784],
        (0..1568)
            .map(|index| (index % 17) as f32 / 17.0 - 0.5)
            .collect(),
    )
    .unwrap();
    let fresh = compile_executables(&compilation, &[("N", 2)]);
    for (used, fresh) in executables.iter().zip(&fresh) {
        let _: RuntimeError = used.run(&params, &[]).unwrap_err();
        let _: RuntimeError = used.run(&params, &[Tensor::zeros(&[3, 784])]).unwrap_err();
        assert_eq!(
            used.run(&params, std::slice::from_ref(&image)).unwrap(),
            fresh.run(&params, std::slice::from_ref(&image)).unwrap()
        );
    }
}
