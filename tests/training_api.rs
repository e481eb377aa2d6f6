//! The training API (`Model::trainer`, `Trainer::step`): what a caller hands in is checked with
//! clear errors (no loss, wrong input count or shape, labels that are not class ids), the
//! learning rate is an input of the compiled step, and the inputs include the loss's labels.

use nnc::api::{ApiError, Model, ModelOptions};
use nnc::tensor::Tensor;
use nnc::train::{Sgd, TrainError};

fn mlp() -> Model {
    let options = ModelOptions::new().set_int("hidden", 16);
    Model::compile_file(
        format!("{}/specs/mlp.nn", env!("CARGO_MANIFEST_DIR")),
        &options,
    )
    .expect("compiles")
}

#[test]
fn a_spec_without_a_loss_cannot_be_trained() {
    let text = "input image: [N, 8]\noutput logits = image -> dense(4) as fc\n";
    let model = Model::compile(text, &ModelOptions::new()).expect("compiles");
    match model.trainer(2, Sgd::new(0.1)) {
        Err(error @ ApiError::Train(TrainError::NoLoss)) => {
            assert!(error.to_string().contains("declares no loss"), "{error}")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a trainer without a loss"),
    }
}

#[test]
fn the_inputs_include_the_labels_with_their_class_count() {
    let model = mlp();
    let forward_inputs: Vec<String> = model
        .inputs()
        .iter()
        .map(|input| input.name.clone())
        .collect();
    assert_eq!(forward_inputs, ["image"]);
    let training: Vec<String> = (model.training_inputs().iter())
        .map(|input| input.to_string())
        .collect();
    assert_eq!(training, ["image: [N, 784]", "label: [N] int"]);
    let trainer = model.trainer(3, Sgd::new(0.1)).expect("trainer");
    let inputs = trainer.inputs();
    assert_eq!(inputs[1].name, "label");
    assert_eq!(inputs[1].shape, vec![3]);
    assert_eq!(inputs[1].id_limit, Some(10));
    let batch = trainer.random_inputs(4);
    assert!(batch[1]
        .data
        .iter()
        .all(|id| id.fract() == 0.0 && (0.0..10.0).contains(id)));
}

#[test]
fn wrong_inputs_are_errors_that_name_the_input() {
    let model = mlp();
    let mut params = model.init_params(0);
    let mut trainer = model.trainer(2, Sgd::new(0.1)).expect("trainer");
    let good = trainer.random_inputs(0);
    let error = trainer
        .step(&mut params, &good[..1])
        .expect_err("one input missing");
    assert!(
        matches!(
            error,
            ApiError::InputCount {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{error}"
    );
    let mut wrong_shape = good.clone();
    wrong_shape[0] = Tensor::zeros(&[2, 783]);
    let error = trainer.step(&mut params, &wrong_shape).expect_err("shape");
    assert!(
        matches!(&error, ApiError::InputShape { name, .. } if name == "image"),
        "{error}"
    );
    let mut fractional = good.clone();
    fractional[1].data[1] = 2.5;
    let error = trainer
        .step(&mut params, &fractional)
        .expect_err("not an id");
    assert!(matches!(&error, ApiError::NotAnInteger { name, index: 1, .. } if name == "label"));
    let mut outside = good.clone();
    outside[1].data[0] = 10.0;
    let error = trainer
        .step(&mut params, &outside)
        .expect_err("class 10 of 10");
    assert!(
        matches!(&error, ApiError::IdOutOfRange { rows: 10, .. }),
        "{error}"
    );
    assert_eq!(trainer.steps_taken(), 0, "failed steps are not counted");
    let before = params.clone();
    assert!(trainer.step(&mut params, &good).is_ok());
    assert_ne!(params, before);
    assert_eq!(trainer.steps_taken(), 1);
}

#[test]
fn the_learning_rate_changes_without_recompiling() {
    let model = mlp();
    let mut params = model.init_params(1);
    let mut trainer = model.trainer(2, Sgd::new(0.1)).expect("trainer");
    let batch = trainer.random_inputs(2);
    trainer.set_learning_rate(0.0);
    let before = params.clone();
    let first = trainer.step(&mut params, &batch).expect("steps");
    assert_eq!(
        params, before,
        "a zero learning rate leaves the weights alone"
    );
    trainer.set_learning_rate(0.5);
    let slices: Vec<&[f32]> = batch.iter().map(|tensor| tensor.data.as_slice()).collect();
    let again = trainer.step_slices(&mut params, &slices).expect("steps");
    assert_eq!(first, again, "the same weights give the same loss");
    let after = trainer.step(&mut params, &batch).expect("steps");
    assert!(after < first, "the loss went from {first} to {after}");
}

/// Each training step counts a batch for every batch norm, as PyTorch's `num_batches_tracked`
/// does in training mode; saved files carry the counters (int64 scalars, so PyTorch's strict
/// `load_state_dict` finds every key) and loading keeps them.
#[test]
fn batch_norm_counters_count_steps_and_survive_save_and_load() {
    let text = "input image: [N, 3, 6, 6]\ninput label: [N] int\n\
        output logits = image -> conv2d(4, 3, pad = 1) as conv -> batch_norm as bn -> relu\n\
        -> global_avg_pool2d -> flatten -> dense(3) as fc\n\
        loss cross_entropy(logits, label)\n";
    let model = Model::compile(text, &ModelOptions::new()).expect("compiles");
    let mut params = model.init_params(0);
    assert_eq!(
        params.batch_counters(),
        [("bn.num_batches_tracked".to_string(), 0)]
    );
    let mut trainer = model.trainer(2, Sgd::new(0.1)).expect("trainer");
    let batch = trainer.random_inputs(1);
    for _ in 0..3 {
        trainer.step(&mut params, &batch).expect("steps");
    }
    assert_eq!(params.batches_tracked("bn.num_batches_tracked"), 3);
    let bytes = params
        .to_safetensors_bytes(nnc::weights::NameStyle::PyTorch)
        .expect("saves");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let counter = file
        .tensor("bn.num_batches_tracked")
        .expect("the counter is saved");
    assert_eq!(counter.dtype(), safetensors::Dtype::I64);
    assert!(counter.shape().is_empty());
    assert_eq!(counter.data(), 3i64.to_le_bytes());
    let loaded = nnc::weights::ParamStore::from_safetensors_bytes(&bytes, model.compilation())
        .expect("loads");
    assert_eq!(loaded.batches_tracked("bn.num_batches_tracked"), 3);
    assert_eq!(loaded, params);
}
