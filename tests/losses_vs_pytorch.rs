//! The loss functions against PyTorch: each fixture (scripts/pytorch_loss_fixtures.py) is a tiny
//! spec whose inputs are a loss's operands, with the operands and PyTorch's float64 value of the
//! loss. The spec is lowered with its loss and run by the f64 reference interpreter; the two
//! must agree within 1e-6 relative. Also: lowering without losses leaves label inputs out, and
//! every spec in specs/ declares a loss that lowers to one scalar output after the network's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nnc::elaborate::ElaborateOptions;
use nnc::lower::{lower_with, LowerMode, LowerOptions, SymbolValues};
use nnc::tensor::Tensor;

const TOLERANCE: f64 = 1e-6;

#[derive(serde::Deserialize)]
struct Fixture {
    spec: String,
    symbols: BTreeMap<String, usize>,
    inputs: Vec<FixtureInput>,
    loss: f64,
    torch: String,
}

#[derive(serde::Deserialize)]
struct FixtureInput {
    name: String,
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn with_losses() -> LowerOptions {
    LowerOptions {
        mode: LowerMode::Inference,
        losses: true,
    }
}

fn compile(text: &str, name: &str) -> nnc::Compilation {
    nnc::compile(text, &ElaborateOptions::default()).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, name, text))
    })
}

fn fixture_paths() -> Vec<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/losses");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&directory)
        .expect("the loss fixtures exist")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .collect();
    paths.sort();
    paths
}

fn symbols_of(fixture: &Fixture) -> SymbolValues {
    let mut symbols = SymbolValues::new();
    for (name, value) in &fixture.symbols {
        symbols.set(name, *value);
    }
    symbols
}

/// Lowers the fixture's spec with its loss, interprets it, and returns nnc's loss value.
fn interpreted_loss(fixture: &Fixture, case: &str) -> Result<f64, String> {
    let compilation = compile(&fixture.spec, case);
    let (loss_name, _) = compilation
        .network
        .loss
        .clone()
        .ok_or("the spec has no loss")?;
    let graph = lower_with(&compilation, &symbols_of(fixture), &with_losses())
        .map_err(|error| error.to_string())?;
    let mut inputs = Vec::new();
    for (name, _) in &graph.inputs {
        let input = fixture
            .inputs
            .iter()
            .find(|input| &input.name == name)
            .ok_or(format!("no fixture input `{name}`"))?;
        inputs.push(Tensor::from_vec(&input.shape, input.data.clone()).ok_or("bad input size")?);
    }
    if inputs.len() != fixture.inputs.len() {
        return Err(format!(
            "the lowered graph takes {} inputs, the fixture has {}",
            inputs.len(),
            fixture.inputs.len()
        ));
    }
    let outputs = nnc::interpret::interpret(&graph, &inputs, &BTreeMap::new())
        .map_err(|error| error.to_string())?;
    let position = graph
        .outputs
        .iter()
        .position(|(name, _)| *name == loss_name)
        .ok_or(format!("no output named `{loss_name}`"))?;
    let loss = &outputs[position];
    if !loss.shape.is_empty() {
        return Err(format!("the loss has shape {:?}, not []", loss.shape));
    }
    Ok(loss.data[0])
}

#[test]
fn every_loss_matches_pytorch() {
    let paths = fixture_paths();
    assert!(
        paths.len() >= 20,
        "expected the loss fixtures, found {}",
        paths.len()
    );
    let mut failures = Vec::new();
    for path in &paths {
        let case = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).expect("readable fixture");
        let fixture: Fixture = serde_json::from_str(&text).expect("fixture parses");
        match interpreted_loss(&fixture, &case) {
            Ok(ours) => {
                let error = (ours - fixture.loss).abs() / fixture.loss.abs().max(1e-12);
                println!(
                    "{case}: nnc {ours:.12}, pytorch {:.12}, relative error {error:.1e}",
                    fixture.loss
                );
                if error.is_nan() || error > TOLERANCE {
                    failures.push(format!(
                        "{case} ({}): nnc {ours}, pytorch {}",
                        fixture.torch, fixture.loss
                    ));
                }
            }
            Err(message) => failures.push(format!("{case}: {message}")),
        }
    }
    assert!(
        failures.is_empty(),
        "losses differ from PyTorch:\n{}",
        failures.join("\n")
    );
}

/// The JIT runtime computes every fixture's loss as the interpreter does on the same f32
/// inputs (the runtime computes in f32, so within 1e-4 relative).
#[test]
fn every_loss_runs_in_the_jit_runtime() {
    let mut failures = Vec::new();
    for path in fixture_paths() {
        let case = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        let fixture: Fixture = serde_json::from_str(&text).expect("fixture parses");
        let compilation = compile(&fixture.spec, &case);
        let graph =
            lower_with(&compilation, &symbols_of(&fixture), &with_losses()).expect("lowers");
        let mut inputs_f32 = Vec::new();
        for (name, _) in &graph.inputs {
            let input = fixture
                .inputs
                .iter()
                .find(|input| &input.name == name)
                .expect("an input");
            let data = input.data.iter().map(|value| *value as f32).collect();
            inputs_f32.push(Tensor::from_vec(&input.shape, data).expect("sizes match"));
        }
        let inputs_f64: Vec<Tensor<f64>> = inputs_f32.iter().map(Tensor::to_f64).collect();
        let reference =
            nnc::interpret::interpret(&graph, &inputs_f64, &BTreeMap::new()).expect("interprets");
        let executable = nnc::runtime::Executable::new(graph, 1).expect("compiles");
        let params = nnc::weights::ParamStore::zeros(&compilation);
        let outputs = executable.run(&params, &inputs_f32).expect("runs");
        let (ours, expected) = (
            f64::from(outputs.last().unwrap().data[0]),
            reference.last().unwrap().data[0],
        );
        let error = (ours - expected).abs() / expected.abs().max(1e-12);
        println!(
            "{case}: runtime {ours:.8}, interpreter {expected:.8}, relative error {error:.1e}"
        );
        if error.is_nan() || error > 1e-4 {
            failures.push(format!("{case}: runtime {ours}, interpreter {expected}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the runtime differs:\n{}",
        failures.join("\n")
    );
}

/// Without losses, an input that only the loss reads is not an input of the lowered graph, and
/// the outputs are the network's alone; with them, the loss is one output after those.
#[test]
fn labels_are_inputs_only_when_the_loss_is_lowered() {
    let text = "input image: [N, 4]\ninput label: [N] int\noutput logits = image -> dense(3) as fc\nloss cross_entropy(logits, label)\n";
    let compilation = compile(text, "classifier.nn");
    let symbols = SymbolValues::new().with("N", 2);
    let names = |graph: &nnc::prim::PrimGraph| -> (Vec<String>, Vec<String>) {
        let inputs = graph.inputs.iter().map(|(name, _)| name.clone()).collect();
        let outputs = graph.outputs.iter().map(|(name, _)| name.clone()).collect();
        (inputs, outputs)
    };
    let inference = nnc::lower::lower(&compilation, &symbols).expect("lowers");
    assert_eq!(
        names(&inference),
        (vec!["image".into()], vec!["logits".into()])
    );
    let training = lower_with(&compilation, &symbols, &with_losses()).expect("lowers");
    assert_eq!(
        names(&training),
        (
            vec!["image".into(), "label".into()],
            vec!["logits".into(), "loss".into()]
        )
    );
}

/// A class id outside the logits' classes is a run-time error, as in PyTorch.
#[test]
fn a_class_id_out_of_range_is_an_error() {
    let text = "input logits: [N, 3]\ninput label: [N] int\noutput scores = logits -> identity\nloss cross_entropy(logits, label)\n";
    let compilation = compile(text, "range.nn");
    let graph = lower_with(
        &compilation,
        &SymbolValues::new().with("N", 1),
        &with_losses(),
    )
    .expect("lowers");
    let logits = Tensor::from_vec(&[1, 3], vec![0.1, 0.2, 0.3]).unwrap();
    let label = Tensor::from_vec(&[1], vec![3.0]).unwrap();
    let result = nnc::interpret::interpret(&graph, &[logits, label], &BTreeMap::new());
    assert!(result.is_err(), "class id 3 of 3 classes must fail");
}

/// Every spec declares the loss a course would train it with; lowered with losses at the
/// report sizes, it is one scalar output right after the network's outputs, and the graph
/// lowered without losses takes exactly the forward inputs that `Model::inputs` lists.
#[test]
fn every_spec_has_a_loss_that_lowers() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&directory)
        .expect("specs/ exists")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "nn"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).expect("readable spec");
        let compilation = compile(&text, &name);
        let network = &compilation.network;
        let (loss_name, _) = network
            .loss
            .clone()
            .unwrap_or_else(|| panic!("{name} declares no loss"));
        let symbols = SymbolValues::report_values(network);
        let graph = lower_with(&compilation, &symbols, &with_losses())
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        let outputs: Vec<&str> = graph
            .outputs
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let mut expected: Vec<&str> = network
            .outputs
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        expected.push(&loss_name);
        assert_eq!(outputs, expected, "{name}: outputs with the loss");
        let (_, loss) = graph.outputs.last().unwrap();
        assert!(
            graph.node(*loss).ty.shape.is_empty(),
            "{name}: the loss is not a scalar"
        );
        assert_eq!(
            graph.inputs.len(),
            network.inputs.len(),
            "{name}: every input feeds the loss step"
        );

        let inference = nnc::lower::lower(&compilation, &symbols).expect("lowers");
        let inference_inputs: Vec<String> = inference
            .inputs
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        let model =
            nnc::api::Model::compile_named(&name, &text, &Default::default()).expect("compiles");
        let forward_inputs: Vec<String> = model
            .inputs()
            .iter()
            .map(|input| input.name.clone())
            .collect();
        assert_eq!(inference_inputs, forward_inputs, "{name}: inference inputs");
    }
}
