//! Fusion (`src/fuse`) and the fused runtime.
//!
//! Snapshots: for small networks, the graph after lowering and after every pass that changed
//! it, round by round as the fixpoint driver runs them, then the run graph grouped into kernels
//! (`--emit fused`) and the kernel list (`--emit kernels`, compile times left out). Review with
//! `cargo insta review`.
//!
//! Numbers: fused execution against the f64 reference interpreter on the unfused graph (within
//! 1e-4 of the output's scale), bit-identical at 1 and 2 threads, with random parameters (batch
//! norm statistics included, so folding them is not a no-op).

use std::collections::BTreeMap;

use nnc::elaborate::ElaborateOptions;
use nnc::fuse::print::{print_fused, print_kernels, print_state};
use nnc::fuse::{fuse, FuseOptions, FuseState, REWRITE_PASSES};
use nnc::lower::{lower, SymbolValues};
use nnc::prim::{PrimGraph, PrimOp};
use nnc::runtime::{Executable, ExecutableOptions};
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

const TOLERANCE: f64 = 1e-4;

/// conv -> batch norm -> relu -> conv -> batch norm, plus the input, then relu: the residual
/// block of resnet18, with a bias on the second convolution so the bias chain has two steps.
const RESIDUAL_BLOCK: &str = "
input image: [N, 4, 6, 6]

block residual(c) {
  y = in -> conv2d(c, 3, pad = 1, bias = false) as conv1 -> batch_norm as bn1 -> relu
         -> conv2d(c, 3, pad = 1) as conv2 -> batch_norm as bn2
  out relu(y + in)
}

output features = image -> residual(4) as block
";

/// Dense layers with gelu, one followed by a batch norm (folded into the matmul's weight).
const DENSE_GELU_MLP: &str = "
input x: [N, 12]

output y = x
  -> dense(16) as fc1 -> gelu
  -> dense(16) as fc2 -> batch_norm as bn -> gelu
  -> dense(5) as fc3
";

struct Network {
    name: &'static str,
    graph: PrimGraph,
    params: ParamStore,
}

fn spec_file(name: &str) -> String {
    let path = format!("{}/specs/{name}.nn", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).expect("spec readable")
}

/// The spec compiled with its integer `param`s overridden.
fn compile_with(name: &str, text: &str, set: &[(&str, i64)]) -> nnc::Compilation {
    let options = ElaborateOptions {
        param_overrides: set
            .iter()
            .map(|(name, value)| (name.to_string(), nnc::elaborate::OverrideValue::Int(*value)))
            .collect(),
        ..ElaborateOptions::default()
    };
    nnc::compile(text, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, name, text))
    })
}

fn network(
    name: &'static str,
    text: &str,
    set: &[(&str, i64)],
    symbols: &[(&str, usize)],
) -> Network {
    let compilation = compile_with(name, text, set);
    let mut values = SymbolValues::report_values(&compilation.network);
    for (symbol, value) in symbols {
        values.set(symbol, *value);
    }
    let graph = lower(&compilation, &values).expect("lowers");
    let mut params = ParamStore::initialize(&compilation, 3);
    randomize(&mut params);
    Network {
        name,
        graph,
        params,
    }
}

fn networks() -> Vec<Network> {
    vec![
        network("lenet5", &spec_file("lenet5"), &[], &[("N", 2)]),
        network("residual_block", RESIDUAL_BLOCK, &[], &[("N", 2)]),
        network("dense_gelu_mlp", DENSE_GELU_MLP, &[], &[("N", 3)]),
        network(
            "lstm",
            &spec_file("lstm_classifier"),
            &[("vocab", 20), ("embed", 4), ("hidden", 6), ("classes", 3)],
            &[("N", 2), ("T", 3)],
        ),
        // Attention's softmax and the layer norms become row kernels.
        network(
            "transformer",
            &spec_file("transformer"),
            &[
                ("vocab", 20),
                ("max_len", 16),
                ("d_model", 8),
                ("heads", 2),
                ("ff", 16),
                ("layers", 1),
                ("classes", 3),
            ],
            &[("N", 2), ("T", 5)],
        ),
    ]
}

/// SplitMix64, independent of any crate.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Every tensor random in [-1, 1), variances in [0.5, 1.5), so that batch norm is not the
/// identity that PyTorch's initial statistics make it.
fn randomize(params: &mut ParamStore) {
    let mut numbers = Numbers(17);
    for (name, tensor) in params.iter_mut() {
        let variance = name.ends_with("running_var");
        for value in tensor.data.iter_mut() {
            let unit = numbers.next();
            *value = if variance {
                0.5 + unit
            } else {
                2.0 * unit - 1.0
            } as f32;
        }
    }
}

fn inputs(graph: &PrimGraph) -> Vec<Tensor<f32>> {
    let mut numbers = Numbers(5);
    graph
        .inputs
        .iter()
        .map(|(_, id)| {
            let ty = &graph.node(*id).ty;
            let data = (0..ty.element_count())
                .map(|_| match ty.element_type {
                    nnc::ir::ElementType::Int64 => (numbers.next() * 16.0).floor() as f32,
                    nnc::ir::ElementType::Float32 => (numbers.next() * 2.0 - 1.0) as f32,
                })
                .collect();
            Tensor {
                shape: ty.shape.clone(),
                data,
            }
        })
        .collect()
}

/// The lowered graph, then the graph after each pass that changed it, then the kernels.
fn pass_trace(graph: &PrimGraph) -> String {
    let mut state = FuseState::new(graph.clone());
    let mut trace = format!("== lowered ==\n{}", print_state(&state));
    for round in 1..=8 {
        let mut changed = false;
        for (name, pass) in REWRITE_PASSES {
            if pass(&mut state).expect("the pass succeeds") {
                changed = true;
                nnc::prim::verify(&state.graph).expect("the run graph verifies");
                nnc::prim::verify(&state.bind).expect("the bind graph verifies");
                trace.push_str(&format!(
                    "\n== round {round}: after {name} ==\n{}",
                    print_state(&state)
                ));
            }
        }
        if !changed {
            trace.push_str(&format!(
                "\n== round {round}: no pass changes anything ==\n"
            ));
            break;
        }
    }
    let fused = fuse(graph.clone(), FuseOptions::default()).expect("fuses");
    assert_eq!(
        print_state(&fused.state),
        print_state(&state),
        "the driver reaches the traced graph"
    );
    trace.push_str(&format!(
        "\n== kernels (--emit fused) ==\n{}",
        print_fused(&fused)
    ));
    trace.push_str(&format!(
        "\n== kernels (--emit kernels) ==\n{}",
        print_kernels(&fused, None)
    ));
    trace
}

#[test]
fn passes_and_kernels_snapshots() {
    for network in networks() {
        insta::assert_snapshot!(
            format!("passes_{}", network.name),
            pass_trace(&network.graph)
        );
    }
}

fn relative_error(ours: &[f32], reference: &[f64]) -> f64 {
    let scale = reference
        .iter()
        .fold(0.0f64, |max, value| max.max(value.abs()))
        .max(1e-30);
    let deviation = ours
        .iter()
        .zip(reference)
        .fold(0.0f64, |max, (a, b)| max.max((*a as f64 - b).abs()));
    deviation / scale
}

#[test]
fn fused_execution_matches_the_interpreter_at_one_and_two_threads() {
    for network in networks() {
        let inputs = inputs(&network.graph);
        let params_f64: BTreeMap<String, Tensor<f64>> = network
            .params
            .iter()
            .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
            .collect();
        let inputs_f64: Vec<Tensor<f64>> = inputs.iter().map(Tensor::to_f64).collect();
        let reference = nnc::interpret::interpret(&network.graph, &inputs_f64, &params_f64)
            .expect("interprets");
        let mut runs = Vec::new();
        for threads in [1, 2] {
            let executable = Executable::new(network.graph.clone(), threads).expect("compiles");
            let outputs = executable.run(&network.params, &inputs).expect("runs");
            for (output, expected) in outputs.iter().zip(&reference) {
                assert_eq!(output.shape, expected.shape);
                let error = relative_error(&output.data, &expected.data);
                assert!(
                    error <= TOLERANCE,
                    "{} at {threads} threads: relative error {error:e}",
                    network.name
                );
            }
            let bound = executable.bind(&network.params).expect("binds");
            assert_eq!(
                bound.run(&inputs).expect("runs"),
                outputs,
                "{}: bind and run differ",
                network.name
            );
            runs.push(outputs);
        }
        assert_eq!(runs[0], runs[1], "{}: 1 and 2 threads differ", network.name);
    }
}

/// The folded values `run` caches are recomputed when a parameter they come from changes in
/// place, as training does.
#[test]
fn run_recomputes_folded_parameters_after_an_update() {
    let mut network = network("residual_block", RESIDUAL_BLOCK, &[], &[("N", 2)]);
    let inputs = inputs(&network.graph);
    let executable = Executable::new(network.graph.clone(), 1).expect("compiles");
    let before = executable.run(&network.params, &inputs).expect("runs");
    for value in network
        .params
        .get_mut("block.bn1.running_var")
        .expect("exists")
        .data
        .iter_mut()
    {
        *value *= 4.0;
    }
    let after = executable.run(&network.params, &inputs).expect("runs");
    let fresh = Executable::new(network.graph.clone(), 1).expect("compiles");
    assert_ne!(before, after, "the update changes the output");
    assert_eq!(after, fresh.run(&network.params, &inputs).expect("runs"));
}

/// Fusion actually happens: batch norms leave the run graph, and every convolution or matmul
/// of these networks carries its epilogue.
#[test]
fn batch_norm_folds_away_and_gemms_take_their_epilogues() {
    // The transformer has no batch norm: its layer norms keep their square roots (see
    // `softmax_and_layer_norms_become_row_kernels`).
    let networks = networks().into_iter();
    for network in networks.filter(|network| network.name != "transformer") {
        let fused = fuse(network.graph.clone(), FuseOptions::default()).expect("fuses");
        let graph = &fused.state.graph;
        let run_time_ops: Vec<&str> = graph
            .node_ids()
            .map(|id| graph.node(id).op.name())
            .collect();
        assert!(
            !run_time_ops.contains(&"sqrt") && !run_time_ops.contains(&"reciprocal"),
            "{}: {run_time_ops:?}",
            network.name
        );
        // Weight transposes fold into the bind graph, and the recurrent layers' time-major
        // transposes are read by their matmuls as strided views: no kernel copies a transpose.
        let transposing_kernels: Vec<String> = fused
            .kernels
            .kernels
            .iter()
            .filter(|kernel| matches!(kernel.kind, nnc::fuse::KernelKind::Primitive))
            .filter(|kernel| matches!(graph.node(kernel.output).op, PrimOp::Transpose { .. }))
            .map(|kernel| format!("%{}", kernel.output.index()))
            .collect();
        assert!(
            transposing_kernels.is_empty(),
            "{}: transpose kernels {transposing_kernels:?}",
            network.name
        );
        let unfused = nnc::fuse::KernelPlan::one_per_node(&network.graph)
            .kernels
            .len();
        assert!(
            fused.kernels.kernels.len() < unfused,
            "{}: {} kernels, {unfused} unfused",
            network.name,
            fused.kernels.kernels.len()
        );
    }
    let residual = network("residual_block", RESIDUAL_BLOCK, &[], &[("N", 2)]);
    let fused = fuse(residual.graph, FuseOptions::default()).expect("fuses");
    let muls = fused
        .state
        .graph
        .node_ids()
        .filter(|id| {
            matches!(
                fused.state.graph.node(*id).op,
                PrimOp::Binary(nnc::prim::BinaryFn::Mul)
            )
        })
        .count();
    assert_eq!(
        muls, 0,
        "both batch norm scales moved into the convolution weights"
    );
}

/// Inference groups attention's softmax and each layer norm into one row kernel, and no
/// reduction of theirs runs on its own (the one left is the classifier's mean over time).
#[test]
fn softmax_and_layer_norms_become_row_kernels() {
    let network = networks()
        .into_iter()
        .find(|network| network.name == "transformer")
        .expect("the transformer is one of the networks");
    let fused = fuse(network.graph.clone(), FuseOptions::default()).expect("fuses");
    let names: Vec<String> = fused
        .kernels
        .kernels
        .iter()
        .map(|kernel| kernel.kind.name(&fused.state.graph, kernel.output))
        .collect();
    let count = |name: &str| names.iter().filter(|kernel| *kernel == name).count();
    assert_eq!(count("softmax_rows"), 1, "{names:?}");
    assert_eq!(count("layer_norm_rows"), 2, "{names:?}");
    assert_eq!(count("reduce_max") + count("reduce_sum"), 0, "{names:?}");
    assert_eq!(count("reduce_mean"), 1, "{names:?}");
}

/// A convolution whose output is also read elsewhere keeps its batch norm: scaling the weight
/// would change the other reader's value.
#[test]
fn batch_norm_stays_when_the_convolution_has_another_reader() {
    let text = "
input image: [N, 3, 5, 5]
features = image -> conv2d(4, 3, pad = 1, bias = false) as conv
output normalized = features -> batch_norm as bn
output raw = features
";
    let network = network("shared_conv", text, &[], &[("N", 1)]);
    let fused = fuse(network.graph.clone(), FuseOptions::default()).expect("fuses");
    let graph = &fused.state.graph;
    let has_mul = graph
        .node_ids()
        .any(|id| matches!(graph.node(id).op, PrimOp::Binary(nnc::prim::BinaryFn::Mul)));
    assert!(has_mul, "{}", print_state(&fused.state));
    let executable = Executable::new(network.graph.clone(), 1).expect("compiles");
    let unfused = Executable::with_options(
        network.graph.clone(),
        1,
        &ExecutableOptions {
            fuse: false,
            ..ExecutableOptions::default()
        },
    )
    .expect("compiles");
    let inputs = inputs(&network.graph);
    let (fused_outputs, unfused_outputs) = (
        executable.run(&network.params, &inputs).unwrap(),
        unfused.run(&network.params, &inputs).unwrap(),
    );
    for (fused, unfused) in fused_outputs.iter().zip(&unfused_outputs) {
        let reference: Vec<f64> = unfused.data.iter().map(|value| *value as f64).collect();
        assert!(relative_error(&fused.data, &reference) <= TOLERANCE);
    }
}

/// Reshapes share their operand's memory, so a chain of them costs no arena.
#[test]
fn reshapes_alias_their_operand() {
    let text = "
input x: [N, 4, 3, 2]
output y = x -> relu -> flatten -> dense(5) as fc
";
    let network = network("flatten", text, &[], &[("N", 2)]);
    let executable = Executable::new(network.graph.clone(), 1).expect("compiles");
    // relu's [2, 24] output and the matmul's [2, 5] are the only arena values.
    assert_eq!(
        executable.planned_arena_floats(),
        48 + 16,
        "{}",
        executable.fused_listing()
    );
}

#[test]
fn kernel_listing_reports_compile_times() {
    let network = network("lenet5", &spec_file("lenet5"), &[], &[("N", 2)]);
    let executable = Executable::new(network.graph.clone(), 1).expect("compiles");
    let listing = executable.kernel_listing();
    assert!(
        listing.contains("; compile ") && listing.contains("total: 7 kernels"),
        "{listing}"
    );
    assert!(executable.compile_time() > std::time::Duration::ZERO);
}

/// Small feature maps under large windows: the taps that only meet padding are sliced off
/// (`shrink_conv_windows`), and the result still matches the interpreter.
#[test]
fn convolution_windows_shrink_to_the_taps_that_reach_the_input() {
    let cases: &[(&str, &str)] = &[
        ("1x1 input, 3x3 window", "input x: [N, 3, 1, 1]\noutput y = x -> conv2d(4, 3, pad = 1) as conv\n"),
        ("2x2 input, stride 2", "input x: [N, 3, 2, 2]\noutput y = x -> conv2d(4, 3, stride = 2, pad = 1) as conv\n"),
        ("3x2 input, 5x5 window, dilation", "input x: [N, 2, 3, 2]\noutput y = x -> conv2d(3, 5, pad = 4, dilation = 2) as conv -> relu\n"),
        ("same padding", "input x: [N, 2, 1, 4]\noutput y = x -> conv2d(3, 3, pad = \"same\") as conv\n"),
    ];
    for (label, text) in cases {
        let network = network("shrink", text, &[], &[("N", 2)]);
        let fused = fuse(network.graph.clone(), FuseOptions::default()).expect("fuses");
        let graph = &fused.state.graph;
        let conv = graph
            .node_ids()
            .find(|id| matches!(graph.node(*id).op, PrimOp::Conv2d(_)))
            .expect("a convolution");
        let weight = graph.operands(conv)[1];
        let taps: usize = graph.node(weight).ty.shape[2..].iter().product();
        assert!(
            taps < 9,
            "{label}: the window keeps {taps} taps\n{}",
            print_state(&fused.state)
        );
        let inputs = inputs(&network.graph);
        let params_f64: BTreeMap<String, Tensor<f64>> = network
            .params
            .iter()
            .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
            .collect();
        let inputs_f64: Vec<Tensor<f64>> = inputs.iter().map(Tensor::to_f64).collect();
        let reference = nnc::interpret::interpret(&network.graph, &inputs_f64, &params_f64)
            .expect("interprets");
        for threads in [1, 2] {
            let outputs = Executable::new(network.graph.clone(), threads)
                .expect("compiles")
                .run(&network.params, &inputs)
                .expect("runs");
            let error = relative_error(&outputs[0].data, &reference[0].data);
            assert!(
                error <= TOLERANCE,
                "{label} at {threads} threads: relative error {error:e}"
            );
        }
    }
}

#[test]
fn executables_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Executable>();
    assert_send_sync::<nnc::runtime::BoundExecutable<'static>>();
}

/// The recording scan autodiff adds for a recurrence's gradient (the forward body run again to
/// record the states entering each step) merges with the forward scan in a training graph:
/// one scan per layer fewer, and the merged graph gives the same loss and gradients as the
/// unmerged one (run through the reference interpreter, so only the rewrite is compared).
#[test]
fn recording_scans_merge_with_their_forward_scans() {
    for (spec, set) in [
        (
            "lstm_classifier",
            &[("vocab", 20), ("embed", 4), ("hidden", 6), ("classes", 3)][..],
        ),
        (
            "gru_classifier",
            &[("vocab", 20), ("embed", 4), ("hidden", 6), ("classes", 3)][..],
        ),
    ] {
        let text = spec_file(spec);
        let compilation = compile_with(spec, &text, set);
        let mut symbols = SymbolValues::report_values(&compilation.network);
        symbols.set("N", 2);
        symbols.set("T", 3);
        let training =
            nnc::autodiff::training_gradient(&compilation, &symbols).expect("differentiates");
        let count_scans = |graph: &PrimGraph| {
            graph
                .node_ids()
                .filter(|id| matches!(graph.node(*id).op, PrimOp::Scan { .. }))
                .count()
        };
        let before = count_scans(&training.graph);
        let mut state = nnc::fuse::FuseState::new(training.graph.clone());
        let merged = nnc::fuse::run_to_fixpoint(
            &mut state,
            &[
                (
                    "merge_recording_scans",
                    nnc::fuse::merge_recording_scans::run,
                ),
                ("eliminate_dead_nodes", nnc::fuse::eliminate_dead_nodes::run),
            ],
        )
        .expect("merges");
        assert!(merged, "{spec}: nothing merged");
        let after = count_scans(&state.graph);
        assert_eq!(
            before % 3,
            0,
            "{spec}: forward, recording and backward scans"
        );
        assert_eq!(
            after,
            before / 3 * 2,
            "{spec}: {before} scans became {after}"
        );
        let mut params = ParamStore::initialize(&compilation, 3);
        randomize(&mut params);
        let f64_params: BTreeMap<String, Tensor<f64>> = params
            .iter()
            .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
            .collect();
        // Token ids and class labels below 3, valid for the vocabulary and the classes.
        let inputs: Vec<Tensor<f64>> = inputs(&training.graph)
            .iter()
            .zip(&training.graph.inputs)
            .map(|(input, (_, id))| {
                let mut input = input.to_f64();
                if training.graph.node(*id).ty.element_type == nnc::ir::ElementType::Int64 {
                    input.data.iter_mut().for_each(|value| *value %= 3.0);
                }
                input
            })
            .collect();
        let reference = nnc::interpret::interpret(&training.graph, &inputs, &f64_params)
            .expect("interprets the unmerged graph");
        let rewritten = nnc::interpret::interpret(&state.graph, &inputs, &f64_params)
            .expect("interprets the merged graph");
        assert_eq!(reference, rewritten, "{spec}: the merge changed a value");
    }
}
