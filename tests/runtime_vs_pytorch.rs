//! The f32 runtime against PyTorch on whole networks and single layers: the fixtures of
//! `tests/interpreter_vs_pytorch.rs` and `tests/lowering.rs` (made by
//! `scripts/make_forward_fixtures.py`), run through [`Executable`] at 1 and 2 threads.
//!
//! Weights and inputs come from the tensors' names through the generator shared with the script
//! (`tests/forward_common`), so the runtime and PyTorch compute from bit-identical numbers. The
//! weights are written into a `ParamStore::zeros` store through `get_mut`, which is how a caller
//! binds its own values. Each output must be within 1e-4 of PyTorch's by the metric of
//! `forward_common::relative_error` (`max |ours - torch| / max |torch|`), and the outputs at 1 and
//! 2 threads must be bit-identical.

#[allow(dead_code)]
mod forward_common;

use std::path::{Path, PathBuf};

use forward_common::{
    compile_fixture, input_tensor, load_fixture, parameter_tensor, relative_error, repository_root,
};
use nnc::lower::SymbolValues;
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

/// The thread counts every fixture runs at; their outputs must agree bit for bit.
const THREAD_COUNTS: [usize; 2] = [1, 2];

/// Runs one fixture at every thread count; returns `(output name, error)` per output, or a
/// description of what went wrong (names, shapes, a runtime error, threads disagreeing).
fn run_fixture_on_runtime(path: &Path) -> Result<Vec<(String, f64)>, String> {
    let fixture = load_fixture(path);
    let compilation = compile_fixture(&fixture);
    let mut params = ParamStore::zeros(&compilation);
    let mut entries: Vec<(String, Vec<u64>)> = compilation
        .shapes
        .params
        .state_dict_entries()
        .into_iter()
        .map(|(name, shape, _)| (name, shape))
        .collect();
    entries.sort();
    if entries != fixture.parameters {
        return Err(format!(
            "parameters differ:\n  nnc:     {entries:?}\n  pytorch: {:?}",
            fixture.parameters
        ));
    }
    for (name, shape) in &entries {
        let values = parameter_tensor(name, shape).to_f32();
        let slot = params
            .get_mut(name)
            .ok_or(format!("the store has no tensor `{name}`"))?;
        if slot.shape != values.shape {
            return Err(format!(
                "`{name}`: store shape {:?}, fixture shape {:?}",
                slot.shape, values.shape
            ));
        }
        *slot = values;
    }
    let mut symbols = SymbolValues::new();
    for (name, value) in &fixture.symbols {
        symbols.set(name, *value);
    }
    let graph = nnc::lower::lower(&compilation, &symbols).map_err(|error| error.to_string())?;
    let mut inputs = Vec::new();
    for (name, _) in &graph.inputs {
        let input = fixture
            .inputs
            .iter()
            .find(|input| &input.name == name)
            .ok_or(format!("no fixture input `{name}`"))?;
        inputs.push(input_tensor(input).to_f32());
    }
    let mut runs: Vec<Vec<Tensor<f32>>> = Vec::new();
    for threads in THREAD_COUNTS {
        let executable = Executable::new(graph.clone(), threads)
            .map_err(|error| format!("compiling at {threads} threads: {error}"))?;
        let outputs = executable
            .run(&params, &inputs)
            .map_err(|error| format!("running at {threads} threads: {error}"))?;
        runs.push(outputs);
    }
    for (threads, outputs) in THREAD_COUNTS.iter().zip(&runs).skip(1) {
        if !bit_identical(&runs[0], outputs) {
            return Err(format!(
                "outputs at {threads} threads differ from those at {} bit for bit",
                THREAD_COUNTS[0]
            ));
        }
    }
    let mut errors = Vec::new();
    for ((name, _), output) in graph.outputs.iter().zip(&runs[0]) {
        let reference = fixture
            .outputs
            .iter()
            .find(|output| &output.name == name)
            .ok_or(format!("no fixture output `{name}`"))?;
        if output.shape != reference.shape {
            return Err(format!(
                "output `{name}` has shape {:?}, pytorch's {:?}",
                output.shape, reference.shape
            ));
        }
        let ours: Vec<f64> = output.data.iter().map(|value| f64::from(*value)).collect();
        errors.push((name.clone(), relative_error(&ours, &reference.data)));
    }
    Ok(errors)
}

/// Equal shapes and equal bits (NaN included) for every output.
fn bit_identical(left: &[Tensor<f32>], right: &[Tensor<f32>]) -> bool {
    left.len() == right.len()
        && left.iter().zip(right).all(|(a, b)| {
            a.shape == b.shape
                && a.data.len() == b.data.len()
                && a.data
                    .iter()
                    .zip(&b.data)
                    .all(|(x, y)| x.to_bits() == y.to_bits())
        })
}

/// Runs the given fixtures on the runtime and fails listing every output beyond tolerance.
fn check_fixtures(paths: &[PathBuf]) {
    assert!(!paths.is_empty(), "no fixtures to check");
    forward_common::check_paths(paths, run_fixture_on_runtime, "runtime outputs");
}

fn network_fixture(name: &str) -> PathBuf {
    repository_root()
        .join("tests/fixtures/forward/networks")
        .join(format!("{name}.json"))
}

#[test]
fn resnet18_matches_pytorch() {
    check_fixtures(&[network_fixture("resnet18")]);
}

#[test]
fn lstm_classifier_matches_pytorch() {
    check_fixtures(&[network_fixture("lstm_classifier")]);
}

#[test]
fn gru_classifier_matches_pytorch() {
    check_fixtures(&[network_fixture("gru_classifier")]);
}

#[test]
fn char_rnn_matches_pytorch() {
    check_fixtures(&[network_fixture("char_rnn")]);
}

#[test]
fn custom_cell_matches_pytorch() {
    check_fixtures(&[network_fixture("custom_cell")]);
}

#[test]
fn transformer_matches_pytorch() {
    check_fixtures(&[network_fixture("transformer")]);
}

/// Every network fixture has a test above, so a new fixture cannot go unchecked.
#[test]
fn every_network_fixture_is_checked() {
    let checked = [
        "char_rnn",
        "custom_cell",
        "gru_classifier",
        "lstm_classifier",
        "resnet18",
        "transformer",
    ];
    let mut found: Vec<String> = fixture_paths("tests/fixtures/forward/networks")
        .iter()
        .map(|path| path.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    found.sort();
    assert_eq!(found, checked, "network fixtures without a runtime test");
}

/// The single-layer fixtures (convolutions with groups and dilation, transposed convolutions,
/// pooling in ceil mode, norms, activations, layout ops, recurrences, attention).
#[test]
fn single_layers_match_pytorch() {
    check_fixtures(&fixture_paths("tests/fixtures/forward/layers"));
}

fn fixture_paths(directory: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repository_root().join(directory))
        .expect("the fixture directory exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .collect();
    paths.sort();
    paths
}
