//! Dropout in training mode, by its statistics (the kept fraction within a few standard errors
//! of `1 - p`, kept values scaled by exactly `1 / (1 - p)`), its masks under run keys (the same in
//! the interpreter and the runtime at any thread count for one key, different for another key
//! and for another layer), its gradient against finite differences; whole training-mode graphs
//! (batch norm with its running-statistics outputs, dropout) on the runtime against the
//! interpreter; and the errors for what training mode does not support.

#[allow(dead_code)]
mod runtime_common;

use std::collections::BTreeMap;

use nnc::elaborate::ElaborateOptions;
use nnc::lower::{lower_with, LowerError, LowerMode, LowerOptions, SymbolValues};
use nnc::prim::*;
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

const TRAINING: LowerOptions = LowerOptions {
    mode: LowerMode::Training,
    losses: false,
};

fn compile(spec: &str) -> nnc::Compilation {
    nnc::compile(spec, &ElaborateOptions::default()).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, "test.nn", spec))
    })
}

fn lower_training(spec: &str, batch: usize) -> Result<PrimGraph, LowerError> {
    lower_with(
        &compile(spec),
        &SymbolValues::new().with("N", batch),
        &TRAINING,
    )
}

/// Inputs in `[1, 2)`: never zero, so a zero in the output is a dropped element.
fn positive_inputs(graph: &PrimGraph, seed: u64) -> Vec<Tensor<f64>> {
    let mut rng = runtime_common::Rng(seed);
    let inputs = graph.inputs.iter();
    inputs
        .map(|(_, id)| {
            let shape = &graph.node(*id).ty.shape;
            let data = rng.values(shape.iter().product(), 1.0, 2.0);
            Tensor::from_vec(shape, data.iter().map(|v| f64::from(*v)).collect()).unwrap()
        })
        .collect()
}

fn interpret_with_key(graph: &PrimGraph, inputs: &[Tensor<f64>], key: u64) -> Vec<Tensor<f64>> {
    nnc::interpret::interpret_with_key(graph, inputs, &BTreeMap::new(), key).unwrap()
}

fn dropped(output: &Tensor<f64>) -> Vec<bool> {
    output.data.iter().map(|value| *value == 0.0).collect()
}

#[test]
fn dropout_keeps_one_minus_p_of_the_elements_scaled_by_its_inverse() {
    for p in [0.1, 0.5, 0.8] {
        let spec = format!("input x: [N, 4000]\noutput y = x -> dropout({p}) as drop\n");
        let graph = lower_training(&spec, 2).unwrap();
        let inputs = positive_inputs(&graph, 1);
        for key in [0, 1, 77] {
            let output = &interpret_with_key(&graph, &inputs, key)[0];
            let count = output.data.len() as f64;
            let dropped_share = dropped(output).iter().filter(|d| **d).count() as f64 / count;
            let standard_error = (p * (1.0 - p) / count).sqrt();
            assert!(
                (dropped_share - p).abs() < 5.0 * standard_error,
                "p {p}, key {key}: dropped {dropped_share}"
            );
            for (value, x) in output.data.iter().zip(&inputs[0].data) {
                assert!(*value == 0.0 || (value - x / (1.0 - p)).abs() <= 1e-12 * value.abs());
            }
        }
    }
}

/// One key gives one mask in the interpreter and the runtime (at 1 and 2 threads); another key
/// gives another mask, which agrees with the first about as often as independent masks do.
#[test]
fn dropout_masks_follow_the_run_key_in_the_interpreter_and_the_runtime() {
    let p = 0.4;
    let spec = format!("input x: [N, 3, 50]\noutput y = x -> dropout({p}) as drop\n");
    let graph = lower_training(&spec, 4).unwrap();
    let inputs = positive_inputs(&graph, 2);
    let inputs_f32: Vec<Tensor<f32>> = inputs.iter().map(Tensor::to_f32).collect();
    let store = runtime_common::param_store(&[]);
    let mut masks = Vec::new();
    for key in [0u64, 1, 2] {
        let reference = &interpret_with_key(&graph, &inputs, key)[0];
        for threads in [1, 2] {
            let executable = Executable::new(graph.clone(), threads).unwrap();
            let output = &executable.run_with_key(&store, &inputs_f32, key).unwrap()[0];
            let runtime_mask: Vec<bool> = output.data.iter().map(|v| *v == 0.0).collect();
            assert_eq!(
                runtime_mask,
                dropped(reference),
                "key {key}, {threads} threads"
            );
            let error = runtime_common::relative_error(&output.data, &reference.data);
            assert!(error < 1e-6, "key {key}: relative error {error:.2e}");
        }
        masks.push(dropped(reference));
    }
    let independent_agreement = p * p + (1.0 - p) * (1.0 - p);
    for (first, mask) in masks.iter().enumerate() {
        for other in &masks[first + 1..] {
            let agreement =
                mask.iter().zip(other).filter(|(a, b)| a == b).count() as f64 / mask.len() as f64;
            assert!(
                (agreement - independent_agreement).abs() < 0.1,
                "{agreement}"
            );
        }
    }
}

/// Two dropout layers, and two applications of one shared dropout layer (two calls of one
/// PyTorch module), draw different masks.
#[test]
fn every_dropout_application_draws_its_own_mask() {
    let spec = "input x: [N, 500]\nlayer shared = dropout(0.5)\n\
                output a = x -> dropout(0.5) as first\noutput b = x -> dropout(0.5) as second\n\
                output c = x -> shared\noutput d = x -> shared\n";
    let graph = lower_training(spec, 1).unwrap();
    let inputs = positive_inputs(&graph, 3);
    let outputs = interpret_with_key(&graph, &inputs, 0);
    let masks: Vec<Vec<bool>> = outputs.iter().map(dropped).collect();
    for (first, mask) in masks.iter().enumerate() {
        for other in &masks[first + 1..] {
            assert_ne!(mask, other);
        }
    }
}

fn random_op_count(graph: &PrimGraph) -> usize {
    graph
        .node_ids()
        .filter(|id| matches!(graph.node(*id).op, PrimOp::RandomUniform { .. }))
        .count()
}

/// (The language keeps `p` below 1, so the lowering's `p = 1` case, zeros, has no spec.)
#[test]
fn dropout_is_the_identity_at_inference_and_at_p_zero() {
    let spec = "input x: [N, 6]\noutput keep = x -> dropout(0.0) as none\n\
                output half = x -> dropout as half\n";
    let compilation = compile(spec);
    let symbols = SymbolValues::new().with("N", 3);
    let inference = nnc::lower::lower(&compilation, &symbols).unwrap();
    assert_eq!(random_op_count(&inference), 0);
    let inputs = positive_inputs(&inference, 4);
    for output in interpret_with_key(&inference, &inputs, 5) {
        assert_eq!(output, inputs[0]);
    }
    let training = lower_with(&compilation, &symbols, &TRAINING).unwrap();
    assert_eq!(random_op_count(&training), 1, "only p = 0.5 draws a mask");
    let outputs = interpret_with_key(&training, &inputs, 5);
    assert_eq!(outputs[0], inputs[0]);
    assert_ne!(outputs[1], inputs[0]);
}

/// The gradient of a training-mode dropout is the mask scaled by `1 / (1 - p)`: against
/// central differences of `sum(y * w)` under a fixed key.
#[test]
fn dropout_gradient_matches_finite_differences() {
    let spec = "input x: [N, 12]\noutput y = x -> dropout(0.3) as drop -> tanh\n";
    let mut graph = lower_training(spec, 2).unwrap();
    let y = graph.outputs[0].1;
    let origin = graph.node(y).origin.clone();
    let sum = PrimOp::Reduce {
        op: ReduceFn::Sum,
        axes: vec![0, 1],
        keepdim: false,
    };
    let loss = graph.add(sum, &[y], origin).unwrap();
    graph.outputs = vec![("loss".into(), loss)];
    let gradient_graph = nnc::autodiff::gradient(&graph, 0, &[0]).unwrap();
    let inputs = positive_inputs(&graph, 6);
    let analytic = interpret_with_key(&gradient_graph, &inputs, 0)[1].clone();
    let step = 1e-6;
    for element in 0..inputs[0].data.len() {
        let mut shifted = inputs.clone();
        shifted[0].data[element] += step;
        let above = interpret_with_key(&graph, &shifted, 0)[0].data[0];
        shifted[0].data[element] -= 2.0 * step;
        let below = interpret_with_key(&graph, &shifted, 0)[0].data[0];
        let numeric = (above - below) / (2.0 * step);
        assert!(
            (analytic.data[element] - numeric).abs() < 1e-7,
            "element {element}"
        );
    }
}

/// A training-mode graph with batch norm (batch statistics, running-statistics outputs) and
/// dropout on the f32 runtime, against the interpreter under the same key.
#[test]
fn training_graphs_run_on_the_runtime_as_in_the_interpreter() {
    let spec = "input image: [N, 3, 6, 6]\n\
                output logits = image -> conv2d(4, 3, pad = 1) as conv -> batch_norm as bn\n\
                  -> relu -> max_pool2d(2) -> flatten -> dropout(0.25) as drop -> dense(3) as fc\n";
    let compilation = compile(spec);
    let graph = lower_with(&compilation, &SymbolValues::new().with("N", 2), &TRAINING).unwrap();
    let mut store = ParamStore::zeros(&compilation);
    let mut rng = runtime_common::Rng(7);
    let names: Vec<String> = store.iter().map(|(name, _)| name.to_string()).collect();
    for name in names {
        let tensor = store.get_mut(&name).unwrap();
        let offset = if name.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        tensor.data = rng.values(tensor.data.len(), offset - 0.5, offset + 0.5);
    }
    let params: BTreeMap<String, Tensor<f64>> = store
        .iter()
        .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
        .collect();
    let inputs = positive_inputs(&graph, 8);
    let inputs_f32: Vec<Tensor<f32>> = inputs.iter().map(Tensor::to_f32).collect();
    let executable = Executable::new(graph.clone(), 2).unwrap();
    for key in [0, 9] {
        let reference = nnc::interpret::interpret_with_key(&graph, &inputs, &params, key).unwrap();
        let outputs = executable.run_with_key(&store, &inputs_f32, key).unwrap();
        for ((name, _), (ours, expected)) in
            graph.outputs.iter().zip(outputs.iter().zip(&reference))
        {
            let error = runtime_common::relative_error(&ours.data, &expected.data);
            assert!(
                error < 1e-4,
                "key {key}, `{name}`: relative error {error:.2e}"
            );
        }
    }
}

#[test]
fn training_mode_reports_what_it_does_not_support() {
    let cell = |layer: &str| {
        format!(
            "block cell(hidden) {{\n  state h: [hidden]\n  h_next = tanh((in -> dense(hidden) as ih) \
             + (h -> {layer} -> dense(hidden) as hh))\n  next h = h_next\n  out h_next\n}}\n\
             dim T = 3\ninput x: [N, T, 3]\noutput y = x -> cell(4) as rnn\n"
        )
    };
    let sequence = SymbolValues::new().with("N", 2).with("T", 3);
    let cases = [
        (
            cell("dropout(0.2) as drop"),
            &sequence,
            "dropout inside a recurrent cell",
        ),
        (
            cell("batch_norm as bn"),
            &sequence,
            "batch norm inside a recurrent cell",
        ),
        (
            "input x: [N, 4]\noutput y = x -> batch_norm as bn\n".to_string(),
            &SymbolValues::new().with("N", 1),
            "more than one value per channel",
        ),
    ];
    for (spec, symbols, expected) in cases {
        let compilation = compile(&spec);
        let inference = nnc::lower::lower(&compilation, symbols);
        assert!(inference.is_ok(), "{spec}: inference lowers");
        let error = lower_with(&compilation, symbols, &TRAINING).unwrap_err();
        assert!(matches!(error, LowerError::Training { .. }), "{error}");
        assert!(error.to_string().contains(expected), "{error}");
    }
}
