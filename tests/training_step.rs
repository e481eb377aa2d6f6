//! The training step (forward, loss, backward and optimizer update as one executable that
//! updates parameters in place) against independent computations: the gradients come from a
//! separate executable of the gradient graph (no optimizer, nothing in place), and the expected
//! new parameters are computed from them here with PyTorch's SGD formulas. Also: the loss goes
//! down on a fixed batch, batch norm's running statistics are written back, results do not
//! depend on the thread count, dropout draws with the step number, every update is written in
//! place, and a training executable refuses read-only parameters.

use std::collections::BTreeMap;

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::fuse::KernelKind;
use nnc::lower::SymbolValues;
use nnc::prim::PrimOp;
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use nnc::train::{
    data_inputs, gradient_graph, lower_for_training, random_data, training_graph_for_spec, Sgd,
    TrainingStep,
};
use nnc::weights::ParamStore;
use nnc::Compilation;

struct Setup {
    compilation: Compilation,
    symbols: SymbolValues,
}

fn setup(spec: &str, set: &[(&str, i64)], shapes: &[(&str, &[u64])], batch: usize) -> Setup {
    let path = format!("{}/specs/{spec}.nn", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("spec readable");
    let options = ElaborateOptions {
        param_overrides: (set.iter())
            .map(|(name, value)| (name.to_string(), OverrideValue::Int(*value)))
            .collect(),
        input_shape_overrides: (shapes.iter())
            .map(|(name, dims)| (name.to_string(), dims.to_vec()))
            .collect(),
    };
    let compilation = nnc::compile(&text, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, &path, &text))
    });
    let symbols = SymbolValues::report_values(&compilation.network).with("N", batch);
    Setup {
        compilation,
        symbols,
    }
}

fn mlp() -> Setup {
    setup("mlp", &[("hidden", 16)], &[], 4)
}

impl Setup {
    fn step(&self, optimizer: &Sgd, threads: usize) -> TrainingStep {
        let training = training_graph_for_spec(&self.compilation, &self.symbols, optimizer)
            .expect("training graph");
        TrainingStep::compile(training, threads).expect("compiles")
    }

    fn data(&self, seed: u64) -> Vec<Tensor<f32>> {
        let (forward, _) = lower_for_training(&self.compilation, &self.symbols).expect("lowers");
        random_data(
            &data_inputs(&forward, forward.inputs.len(), &self.compilation),
            seed,
        )
    }

    /// Gradients (`grad.<name>`) and buffer updates (`buffer_update.<name>`) at `params`, from
    /// an executable of the gradient graph alone.
    fn reference(
        &self,
        params: &ParamStore,
        data: &[Tensor<f32>],
    ) -> BTreeMap<String, Tensor<f32>> {
        let (forward, loss) = lower_for_training(&self.compilation, &self.symbols).expect("lowers");
        let trainable = nnc::autodiff::trainable_parameters(&self.compilation);
        let mut graph =
            gradient_graph(&forward, &loss, &|name| trainable.contains(name)).expect("gradient");
        graph.outputs.retain(|(name, _)| {
            name.starts_with("grad.") || name.starts_with("buffer_update.") || *name == loss
        });
        let names: Vec<String> = graph.outputs.iter().map(|(name, _)| name.clone()).collect();
        let outputs = Executable::new(graph, 1)
            .expect("compiles")
            .run(params, data)
            .expect("runs");
        names.into_iter().zip(outputs).collect()
    }
}

/// `max |a - b|` over two tensors of one shape.
fn max_difference(a: &Tensor<f32>, b: &Tensor<f32>) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.data
        .iter()
        .zip(&b.data)
        .fold(0.0f32, |max, (x, y)| max.max((x - y).abs()))
}

fn max_magnitude(tensor: &Tensor<f32>) -> f32 {
    tensor.data.iter().fold(0.0f32, |max, x| max.max(x.abs()))
}

/// After one plain SGD step every trainable parameter is `p - lr * g` (f32 arithmetic, up to
/// rounding of differently fused kernels) and every buffer holds its `buffer_update` value.
fn check_sgd_step(setup: &Setup, learning_rate: f32) {
    let step = setup.step(&Sgd::new(learning_rate), 1);
    let (in_place, copied) = step.executable().update_placement();
    assert_eq!(copied, 0, "every update is written in place");
    assert!(in_place >= step.updated_parameters().len());
    let before = ParamStore::initialize(&setup.compilation, 3);
    let data = setup.data(5);
    let reference = setup.reference(&before, &data);
    let mut after = before.clone();
    let mut state = step.initial_state();
    let loss = step
        .run(&mut after, &mut state, &data, &[learning_rate], 0)
        .expect("steps");
    let expected_loss = reference[step.loss_name()].data[0];
    assert!((loss - expected_loss).abs() <= 1e-5 * expected_loss.abs().max(1.0));
    for (name, old) in before.iter() {
        let new = after.get(name).expect("same names");
        if let Some(gradient) = reference.get(&format!("grad.{name}")) {
            let expected = Tensor {
                shape: old.shape.clone(),
                data: (old.data.iter().zip(&gradient.data))
                    .map(|(p, g)| p - learning_rate * g)
                    .collect(),
            };
            let scale = max_magnitude(old) + learning_rate * max_magnitude(gradient);
            let difference = max_difference(new, &expected);
            assert!(
                difference <= 1e-6 * scale,
                "`{name}`: off by {difference:e} from p - lr g (scale {scale:e})"
            );
        } else if let Some(update) = reference.get(&format!("buffer_update.{name}")) {
            let difference = max_difference(new, update);
            assert!(
                difference <= 1e-5 * max_magnitude(update).max(1.0),
                "buffer `{name}`: off by {difference:e} from its update"
            );
        } else {
            assert_eq!(new, old, "`{name}` has no update and must not change");
        }
    }
}

#[test]
fn sgd_step_is_p_minus_learning_rate_times_gradient() {
    check_sgd_step(&mlp(), 0.1);
    check_sgd_step(&setup("lenet5", &[], &[], 2), 0.05);
}

/// A transformer's step reads its weights, the attention heads and the weight gradients' operands
/// through strided views instead of copying them: no kernel transposes or slices a parameter
/// or the projection, nothing is folded at bind time (the weights change every step), and
/// every weight gradient is one GEMM over all the batch's rows rather than a batched product
/// summed afterwards; dropout masks are computed inside the kernels that read them. The
/// numbers still follow `p - lr g`.
#[test]
fn transformer_step_copies_no_weights_heads_or_dropout_masks() {
    let mut transformer = setup(
        "transformer",
        &[
            ("vocab", 50),
            ("max_len", 16),
            ("d_model", 32),
            ("heads", 4),
            ("ff", 64),
            ("layers", 2),
        ],
        &[],
        2,
    );
    transformer.symbols.set("T", 7);
    check_sgd_step(&transformer, 0.05);
    let step = transformer.step(&Sgd::new(0.05), 1);
    let fused = step.executable().fused();
    let graph = &fused.state.graph;
    assert!(fused.state.bind.outputs.is_empty(), "nothing folds");
    for kernel in &fused.kernels.kernels {
        let node = graph.node(kernel.output);
        let operands = graph.operands(kernel.output);
        let reads_parameter = operands
            .iter()
            .any(|operand| matches!(graph.node(*operand).op, PrimOp::Parameter { .. }));
        let label = kernel.kind.name(graph, kernel.output);
        if let KernelKind::Elementwise(group) = &kernel.kind {
            let reads_only_a_draw = matches!(
                group.inputs.as_slice(),
                [input] if matches!(graph.node(*input).op, PrimOp::RandomUniform { .. })
            );
            assert!(
                !reads_only_a_draw,
                "a dropout mask is computed on its own: %{}",
                kernel.output.index()
            );
        }
        match &node.op {
            PrimOp::Slice { .. } => panic!("a slice is copied: %{}", kernel.output.index()),
            PrimOp::Transpose { .. } if reads_parameter => {
                panic!("a parameter is transposed: %{}", kernel.output.index())
            }
            PrimOp::Reduce { .. } if matches!(graph.node(operands[0]).op, PrimOp::MatMul) => {
                panic!("a product is summed: %{} ({label})", kernel.output.index())
            }
            _ => {}
        }
    }
}

#[test]
fn sgd_step_writes_batch_norm_running_statistics() {
    let resnet = setup(
        "resnet18",
        &[("classes", 10)],
        &[("image", &[3, 64, 64])],
        2,
    );
    check_sgd_step(&resnet, 0.01);
}

#[test]
fn momentum_and_weight_decay_follow_pytorch_sgd() {
    let setup = mlp();
    let (learning_rate, momentum, weight_decay) = (0.1f32, 0.9f32, 0.01f32);
    let optimizer = Sgd::new(learning_rate)
        .momentum(momentum)
        .weight_decay(weight_decay);
    let step = setup.step(&optimizer, 1);
    let hyperparameters = [learning_rate, weight_decay, momentum];
    assert_eq!(
        step.hyperparameter_names(),
        ["lr", "weight_decay", "momentum"]
    );
    let data = setup.data(9);
    let mut params = ParamStore::initialize(&setup.compilation, 4);
    let mut state = step.initial_state();
    assert_eq!(state.len(), step.updated_parameters().len());
    let mut buffers: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for step_number in 0..2 {
        let before = params.clone();
        let reference = setup.reference(&before, &data);
        step.run(
            &mut params,
            &mut state,
            &data,
            &hyperparameters,
            step_number,
        )
        .expect("steps");
        for name in step.updated_parameters() {
            let old = before.get(name).expect("parameter");
            let gradient = &reference[&format!("grad.{name}")];
            let buffer = buffers
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; old.data.len()]);
            let mut expected = old.clone();
            for (index, value) in expected.data.iter_mut().enumerate() {
                let direction = gradient.data[index] + weight_decay * old.data[index];
                buffer[index] = momentum * buffer[index] + direction;
                *value = old.data[index] - learning_rate * buffer[index];
            }
            let scale = max_magnitude(old) + learning_rate * max_magnitude(gradient) * 2.0;
            let difference = max_difference(params.get(name).expect("parameter"), &expected);
            assert!(
                difference <= 2e-6 * scale,
                "step {step_number} `{name}`: off by {difference:e}"
            );
            let stored = state
                .get(&format!("{name}%momentum_buffer"))
                .expect("momentum buffer");
            let buffer_tensor = Tensor {
                shape: old.shape.clone(),
                data: buffer.clone(),
            };
            let difference = max_difference(stored, &buffer_tensor);
            assert!(difference <= 1e-5 * max_magnitude(&buffer_tensor).max(1e-3));
        }
    }
}

#[test]
fn loss_goes_down_on_a_fixed_batch() {
    for (setup, learning_rate) in [(mlp(), 0.1), (setup("lenet5", &[], &[], 4), 0.1)] {
        let step = setup.step(&Sgd::new(learning_rate), 1);
        let data = setup.data(2);
        let mut params = ParamStore::initialize(&setup.compilation, 1);
        let mut state = step.initial_state();
        let losses: Vec<f32> = (0..6)
            .map(|number| {
                step.run(&mut params, &mut state, &data, &[learning_rate], number)
                    .expect("steps")
            })
            .collect();
        for pair in losses.windows(2) {
            assert!(pair[1] < pair[0], "the loss rose: {losses:?}");
        }
        assert!(
            losses[5] < 0.95 * losses[0],
            "too little progress: {losses:?}"
        );
    }
}

#[test]
fn steps_are_bit_identical_at_one_and_two_threads() {
    let setup = setup("lenet5", &[], &[], 4);
    let data = setup.data(6);
    // With momentum the update is its own kernel; plain SGD's dense-layer updates are written
    // by the weight-gradient GEMMs straight into the weights.
    for (optimizer, hyperparameters) in [
        (Sgd::new(0.05).momentum(0.5), vec![0.05, 0.5]),
        (Sgd::new(0.05), vec![0.05]),
    ] {
        let mut results = Vec::new();
        for threads in [1, 2] {
            let step = setup.step(&optimizer, threads);
            let mut params = ParamStore::initialize(&setup.compilation, 2);
            let mut state = step.initial_state();
            let losses: Vec<f32> = (0..3)
                .map(|number| {
                    step.run(&mut params, &mut state, &data, &hyperparameters, number)
                        .expect("steps")
                })
                .collect();
            results.push((losses, params, state));
        }
        assert_eq!(results[0], results[1]);
    }
}

#[test]
fn dropout_draws_with_the_step_number() {
    let setup = setup("char_rnn", &[("hidden", 16), ("embed", 8)], &[], 2);
    let step = setup.step(&Sgd::new(0.0), 1);
    let data = setup.data(3);
    let params = ParamStore::initialize(&setup.compilation, 0);
    let loss_at = |key: u64| {
        let mut params = params.clone();
        let mut state = step.initial_state();
        step.run(&mut params, &mut state, &data, &[0.0], key)
            .expect("steps")
    };
    assert_eq!(loss_at(0), loss_at(0), "the same key draws the same mask");
    assert_ne!(loss_at(0), loss_at(1), "another step draws another mask");
}

#[test]
fn a_training_executable_refuses_read_only_parameters() {
    let setup = mlp();
    let step = setup.step(&Sgd::new(0.1), 1);
    let params = ParamStore::initialize(&setup.compilation, 0);
    let mut inputs = setup.data(0);
    inputs.push(Tensor {
        shape: vec![],
        data: vec![0.1],
    });
    let error = step
        .executable()
        .run(&params, &inputs)
        .expect_err("read-only run");
    assert!(error.to_string().contains("run_in_place"), "{error}");
    assert_eq!(step.executable().returned_output_names(), ["loss"]);
}
