//! The library API (`nnc::api`): results against the f64 reference interpreter, the cache of
//! specializations, symbols bound from input shapes, and every input or weight mistake as an
//! error value (never a panic).

use std::collections::BTreeMap;
use std::sync::Arc;

use nnc::api::{ApiError, Model, ModelOptions};
use nnc::tensor::Tensor;

const TOLERANCE: f64 = 1e-4;

fn spec(name: &str) -> String {
    format!("{}/specs/{name}.nn", env!("CARGO_MANIFEST_DIR"))
}

fn model(name: &str, options: &ModelOptions) -> Model {
    Model::compile_file(spec(name), options).unwrap_or_else(|error| panic!("{error}"))
}

fn ramp(count: usize) -> Vec<f32> {
    (0..count)
        .map(|index| ((index * 37 % 101) as f32 / 50.0) - 1.0)
        .collect()
}

#[test]
fn forward_matches_the_interpreter_and_reads_outputs_by_name() {
    let model = model("lenet5", &ModelOptions::new().threads(2));
    let params = model.init_params(5);
    let image = ramp(3 * 28 * 28);
    let forward = model.for_batch(3).expect("compiles");
    let outputs = forward.run(&params, &[&image]).expect("runs");
    let logits = outputs.output("logits").expect("named output");
    assert_eq!(logits.shape, vec![3, 10]);
    let graph = nnc::lower::lower(model.compilation(), forward.symbols()).expect("lowers");
    let params64: BTreeMap<String, Tensor<f64>> = params
        .iter()
        .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
        .collect();
    let input = Tensor::from_vec(&[3, 1, 28, 28], image.iter().map(|v| *v as f64).collect())
        .expect("sizes");
    let reference = nnc::interpret::interpret(&graph, &[input], &params64).expect("interprets");
    let scale = reference[0]
        .data
        .iter()
        .fold(0.0f64, |max, value| max.max(value.abs()));
    let deviation = logits
        .data
        .iter()
        .zip(&reference[0].data)
        .fold(0.0f64, |max, (a, b)| max.max((*a as f64 - b).abs()));
    assert!(
        deviation / scale <= TOLERANCE,
        "error {:e}",
        deviation / scale
    );
    match outputs.output("probabilities") {
        Err(ApiError::UnknownOutput { known, .. }) => assert_eq!(known, "logits"),
        other => panic!("expected an unknown-output error, got {other:?}"),
    }
}

#[test]
fn specializations_are_cached_by_symbol_values() {
    let model = model("mlp", &ModelOptions::new());
    let first = model.for_batch(4).expect("compiles");
    let again = model.for_batch(4).expect("cached");
    let other = model.for_batch(5).expect("compiles");
    assert!(Arc::ptr_eq(&first, &again));
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(other.input_shapes(), vec![("image", &[5usize, 784][..])]);
    model.clear_cache();
    assert!(!Arc::ptr_eq(
        &first,
        &model.for_batch(4).expect("recompiles")
    ));
    // 784*256 + 256*256 + 256*10 multiply-accumulates per example (nn.Linear layers).
    let symbols = model.symbols_for_batch(4).expect("has N");
    assert_eq!(
        model.forward_macs(&symbols),
        4 * (784 * 256 + 256 * 256 + 256 * 10)
    );
}

#[test]
fn forward_binds_batch_and_sequence_length_from_the_inputs() {
    let options = ModelOptions::new()
        .set_int("vocab", 50)
        .set_int("max_len", 16)
        .set_int("d_model", 16)
        .set_int("heads", 2)
        .set_int("ff", 32)
        .set_int("layers", 1);
    let model = model("transformer", &options);
    let params = model.init_params(0);
    let ids = |rows: usize, steps: usize| {
        Tensor::from_vec(
            &[rows, steps],
            (0..rows * steps).map(|i| (i % 7) as f32).collect(),
        )
        .expect("sizes")
    };
    let outputs = model
        .forward(&params, &[ids(2, 5), ids(2, 5)])
        .expect("runs at N=2, T=5");
    assert_eq!(outputs.get("logits").expect("output").shape, vec![2, 2]);
    let inconsistent = model.forward(&params, &[ids(2, 5), ids(2, 6)]);
    assert!(
        matches!(inconsistent, Err(ApiError::InconsistentSymbol { ref symbol, .. }) if symbol == "T"),
        "{inconsistent:?}"
    );
    let fractional = Tensor::from_vec(&[1, 2], vec![1.0, 2.5]).expect("sizes");
    let result = model.forward(&params, &[fractional.clone(), ids(1, 2)]);
    assert!(
        matches!(result, Err(ApiError::NotAnInteger { index: 1, .. })),
        "{result:?}"
    );
    let beyond = Tensor::from_vec(&[1, 2], vec![1.0, 50.0]).expect("sizes");
    let result = model.forward(&params, &[beyond, ids(1, 2)]);
    assert!(
        matches!(result, Err(ApiError::IdOutOfRange { rows: 50, .. })),
        "{result:?}"
    );
}

#[test]
fn input_and_weight_mistakes_are_errors() {
    let model = model("mlp", &ModelOptions::new().check_nan(true));
    let params = model.init_params(0);
    let forward = model.for_batch(2).expect("compiles");
    let good = ramp(2 * 784);
    let mut with_nan = good.clone();
    with_nan[900] = f32::NAN;
    let short = &good[..2 * 784 - 1];
    let checks: Vec<(&str, Result<_, ApiError>, &str)> = vec![
        (
            "no inputs",
            forward.run(&params, &[]),
            "takes 1 input(s) (image), but 0 were given",
        ),
        (
            "two inputs",
            forward.run(&params, &[&good, &good]),
            "but 2 were given",
        ),
        (
            "short slice",
            forward.run(&params, &[short]),
            "should have 1568 elements",
        ),
        (
            "NaN",
            forward.run(&params, &[&with_nan]),
            "contains NaN at element 900",
        ),
        (
            "other spec's weights",
            forward.run(&model_weights("lenet5"), &[&good]),
            "parameter `fc1.weight` should have shape [256, 784]",
        ),
        (
            "wrong tensor shape",
            forward.run_tensors(
                &params,
                &[Tensor::from_vec(&[1, 1568], good.clone()).expect("sizes")],
            ),
            "should have shape [2, 784]",
        ),
        (
            "wrong rank for forward",
            model.forward(
                &params,
                &[Tensor::from_vec(&[1568], good.clone()).expect("sizes")],
            ),
            "should have shape [N, 784]",
        ),
    ];
    for (what, result, message) in checks {
        match result {
            Ok(_) => panic!("{what}: expected an error"),
            Err(error) => assert!(error.to_string().contains(message), "{what}: {error}"),
        }
    }
    let mut wrong_shape = params.clone();
    wrong_shape.get_mut("fc1.weight").expect("exists").shape = vec![784, 256];
    let error = forward
        .run(&wrong_shape, &[&good])
        .expect_err("shape checked");
    assert!(error.to_string().contains("fc1.weight"), "{error}");
}

fn model_weights(name: &str) -> nnc::weights::ParamStore {
    model(name, &ModelOptions::new()).init_params(0)
}

#[test]
fn a_network_without_a_batch_dim_says_so() {
    let model = Model::compile("input x: [4]\noutput y = x -> relu\n", &ModelOptions::new())
        .expect("compiles");
    assert!(matches!(
        model.for_batch(2),
        Err(ApiError::NoBatchDim { .. })
    ));
    let forward = model
        .specialize(&model.default_symbols())
        .expect("no symbols to set");
    let outputs = forward
        .run(&model.init_params(0), &[&[-1.0, 0.5, -0.25, 2.0]])
        .expect("runs");
    assert_eq!(
        outputs.get("y").expect("output").data,
        vec![0.0, 0.5, 0.0, 2.0]
    );
    let error = Model::compile(
        "input x: [4]\noutput y = x -> nonsense\n",
        &ModelOptions::new(),
    )
    .err()
    .expect("a spec error");
    assert!(matches!(error, ApiError::Spec { .. }));
}
