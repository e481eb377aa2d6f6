//! Seeded initialization: each tensor follows PyTorch's default initializer for its layer, the
//! values drawn are the documented stream, and the same seed gives the same bits.
//!
//! Independent references:
//! - tests/fixtures/weights/init_reference.json: PyTorch's own initialization of the fixture
//!   networks, pooled over 100 constructions (scripts/make_weight_fixtures.py);
//! - tests/fixtures/weights/init_stream_reference.json: the first values of a few tensors,
//!   computed by the same script from the algorithm documented in src/weights/random.rs (its own
//!   ChaCha8, FNV-1a and Box-Muller, not nnc's code);
//! - the distributions themselves: samples must have the mean, spread and bounds they imply.

use std::path::Path;

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::weights::{param_layout, Init, ParamStore};
use nnc::Compilation;
use serde_json::Value;

fn repo_path(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn compile(spec: &str, overrides: &[(&str, i64)]) -> Compilation {
    let text = std::fs::read_to_string(repo_path(spec)).expect("spec is readable");
    let options = ElaborateOptions {
        param_overrides: overrides
            .iter()
            .map(|(name, value)| (name.to_string(), OverrideValue::Int(*value)))
            .collect(),
        ..ElaborateOptions::default()
    };
    nnc::compile(&text, &options)
        .unwrap_or_else(|errors| panic!("{}", nnc::render_diagnostics(&errors, spec, &text)))
}

fn read_json(name: &str) -> Value {
    let path = repo_path(&format!("tests/fixtures/weights/{name}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fixture_network(name: &str) -> Compilation {
    match name {
        "mlp" => compile("specs/mlp.nn", &[("hidden", 16)]),
        other => compile(&format!("tests/fixtures/weights/{other}.nn"), &[]),
    }
}

#[test]
fn initializers_match_what_pytorch_draws() {
    let reference = read_json("init_reference.json");
    for (network, tensors) in reference.as_object().unwrap() {
        let layout = param_layout(&fixture_network(network));
        let names: Vec<&str> = layout
            .iter()
            .map(|entry| entry.pytorch_name.as_str())
            .collect();
        let reference_names: Vec<&str> = tensors
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, reference_names, "{network}");
        for entry in &layout {
            let stats = &tensors[&entry.pytorch_name];
            let stat = |key: &str| stats[key].as_f64().unwrap();
            let count = stat("count");
            let context = format!(
                "{network} {}: {:?} vs PyTorch {stats}",
                entry.name, entry.init
            );
            match entry.init {
                Init::Constant(value) => {
                    assert_eq!(
                        (stat("min"), stat("max")),
                        (f64::from(value), f64::from(value)),
                        "{context}"
                    );
                }
                Init::Uniform { bound } => {
                    // PyTorch's samples reach to within a few `bound / count` of the bound and
                    // never beyond; their spread is bound/sqrt(3).
                    let reach = stat("max").max(-stat("min"));
                    assert!(reach <= bound * (1.0 + 1e-6), "{context}");
                    assert!(reach >= bound * (1.0 - 15.0 / count), "{context}");
                    let spread = bound / 3f64.sqrt();
                    assert!(
                        (stat("std") / spread - 1.0).abs() < 6.0 * 0.45 / count.sqrt(),
                        "{context}"
                    );
                }
                Init::Normal { std } => {
                    assert!(
                        (stat("std") / std - 1.0).abs() < 6.0 / (2.0 * count).sqrt(),
                        "{context}"
                    );
                    assert!(stat("mean").abs() < 6.0 * std / count.sqrt(), "{context}");
                }
            }
        }
    }
}

#[test]
fn the_first_values_are_the_documented_stream() {
    let reference = read_json("init_stream_reference.json");
    for (network, expected) in reference.as_object().unwrap() {
        let seed = expected["seed"].as_u64().unwrap();
        let store = ParamStore::initialize(&fixture_network(network), seed);
        for (name, bits) in expected["tensors"].as_object().unwrap() {
            let expected: Vec<u32> = bits
                .as_array()
                .unwrap()
                .iter()
                .map(|bit| bit.as_u64().unwrap() as u32)
                .collect();
            let values = &store.get(name).unwrap_or_else(|| panic!("{name}")).data;
            let actual: Vec<u32> = values[..expected.len()]
                .iter()
                .map(|value| value.to_bits())
                .collect();
            assert_eq!(actual, expected, "{network} {name}");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_bits_and_tensors_do_not_disturb_each_other() {
    let compilation = fixture_network("sequence");
    let bits = |store: &ParamStore| -> Vec<Vec<u32>> {
        store
            .iter()
            .map(|(_, tensor)| tensor.data.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    let first = ParamStore::initialize(&compilation, 11);
    assert_eq!(
        bits(&first),
        bits(&ParamStore::initialize(&compilation, 11))
    );
    let other_seed = ParamStore::initialize(&compilation, 12);
    assert_ne!(
        first.get("lstm.weight_ih_l0"),
        other_seed.get("lstm.weight_ih_l0")
    );
    // A different head leaves the other layers' values alone: each tensor has its own stream.
    let ten = ParamStore::initialize(&compile("specs/mlp.nn", &[("classes", 10)]), 5);
    let five = ParamStore::initialize(&compile("specs/mlp.nn", &[("classes", 5)]), 5);
    assert_eq!(ten.get("fc1.weight"), five.get("fc1.weight"));
    // A tensor's values depend only on the seed, its name and its initializer: a longer tensor
    // continues the same stream.
    assert_eq!(
        ten.get("fc3.bias").unwrap().data[..5],
        five.get("fc3.bias").unwrap().data[..]
    );
}

/// Checks that a tensor's values are a plausible sample of its initializer.
fn check_sample(name: &str, init: Init, values: &[f32]) {
    let count = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
    let variance = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / count;
    let std = variance.sqrt();
    let context = format!(
        "{name} {init:?}: {} values, mean {mean}, std {std}",
        values.len()
    );
    match init {
        Init::Constant(value) => assert!(values.iter().all(|&v| v == value), "{context}"),
        Init::Uniform { bound } => {
            // Mean 0 and std bound/sqrt(3) within 6 standard errors; every value within the
            // bound, and the extremes close to it.
            let spread = bound / 3f64.sqrt();
            assert!(mean.abs() < 6.0 * spread / count.sqrt(), "{context}");
            assert!(
                (std / spread - 1.0).abs() < 6.0 * 0.45 / count.sqrt(),
                "{context}"
            );
            let reach = values
                .iter()
                .fold(0f64, |reach, &v| reach.max(f64::from(v).abs()));
            assert!(
                reach <= bound && reach >= bound * (1.0 - 15.0 / count),
                "{context}"
            );
        }
        Init::Normal { std: expected } => {
            assert!(mean.abs() < 6.0 * expected / count.sqrt(), "{context}");
            assert!(
                (std / expected - 1.0).abs() < 6.0 / (2.0 * count).sqrt(),
                "{context}"
            );
            // About 68.27% within one standard deviation, as a normal distribution has.
            let within = values
                .iter()
                .filter(|&&v| f64::from(v).abs() < expected)
                .count() as f64
                / count;
            let tolerance = 6.0 * (0.6827f64 * 0.3173 / count).sqrt();
            assert!(
                (within - 0.6827).abs() < tolerance,
                "{context}: {within} within 1 std"
            );
        }
    }
}

#[test]
fn samples_follow_their_distributions_in_the_reference_networks() {
    let networks = [
        compile("specs/resnet18.nn", &[]),
        compile("specs/lstm_classifier.nn", &[]),
        compile("specs/dcgan_generator.nn", &[]),
        compile(
            "specs/transformer.nn",
            &[("layers", 1), ("d_model", 64), ("ff", 128), ("vocab", 1000)],
        ),
    ];
    let mut checked = 0;
    for compilation in &networks {
        let store = ParamStore::initialize(compilation, 2024);
        for entry in param_layout(compilation) {
            let values = &store.get(&entry.name).unwrap().data;
            assert_eq!(
                values.len(),
                entry.shape.iter().product::<usize>(),
                "{}",
                entry.name
            );
            if values.len() >= 1000 || matches!(entry.init, Init::Constant(_)) {
                check_sample(&entry.name, entry.init, values);
                checked += 1;
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} tensors were large enough to check"
    );
}

#[test]
fn initializers_follow_pytorch_rules_for_each_layer_kind() {
    let find = |compilation: &Compilation, name: &str| {
        param_layout(compilation)
            .into_iter()
            .find(|entry| entry.name == name)
            .unwrap()
            .init
    };
    let uniform = |bound: f64| Init::Uniform { bound };
    let resnet = compile("specs/resnet18.nn", &[]);
    // conv [64, 3, 7, 7]: fan_in 3*7*7; dense [1000, 512]: fan_in 512, its bias the same bound.
    assert_eq!(find(&resnet, "conv1.weight"), uniform(1.0 / 147f64.sqrt()));
    assert_eq!(find(&resnet, "fc.bias"), uniform(1.0 / 512f64.sqrt()));
    assert_eq!(find(&resnet, "bn1.running_var"), Init::Constant(1.0));
    // conv_transpose [100, 512, 4, 4]: PyTorch's fan_in is size(1)*kh*kw = 512*16.
    let dcgan = compile("specs/dcgan_generator.nn", &[]);
    assert_eq!(find(&dcgan, "main.0.weight"), uniform(1.0 / 8192f64.sqrt()));
    // nn.MultiheadAttention: xavier in_proj [3d, d], zero biases, out_proj.weight as nn.Linear.
    let transformer = compile("specs/transformer.nn", &[]);
    let attention = "encoder.layers.0.self_attn";
    assert_eq!(
        find(&transformer, &format!("{attention}.in_proj.weight")),
        uniform((6.0f64 / 2048.0).sqrt())
    );
    assert_eq!(
        find(&transformer, &format!("{attention}.in_proj.bias")),
        Init::Constant(0.0)
    );
    assert_eq!(
        find(&transformer, &format!("{attention}.out_proj.bias")),
        Init::Constant(0.0)
    );
    assert_eq!(
        find(&transformer, &format!("{attention}.out_proj.weight")),
        uniform(1.0 / 512f64.sqrt())
    );
    assert_eq!(
        find(&transformer, "encoder.layers.0.norm1.weight"),
        Init::Constant(1.0)
    );
    assert_eq!(
        find(&transformer, "embedding.weight"),
        Init::Normal { std: 1.0 }
    );
    // A cell written in the language: its dense layers are nn.Linear's.
    let cell = compile("specs/custom_cell.nn", &[]);
    assert_eq!(find(&cell, "lstm.hh.weight"), uniform(1.0 / 256f64.sqrt()));
}

#[test]
fn every_reference_spec_has_a_layout_matching_its_state_dict() {
    let mut specs: Vec<_> = std::fs::read_dir(repo_path("specs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    specs.sort();
    for path in specs {
        let relative = format!("specs/{}", path.file_name().unwrap().to_string_lossy());
        let compilation = compile(&relative, &[]);
        let layout = param_layout(&compilation);
        let entries = compilation.shapes.params.state_dict_entries();
        let layout_names: Vec<(&str, Vec<usize>)> = layout
            .iter()
            .map(|entry| (entry.name.as_str(), entry.shape.clone()))
            .collect();
        let entry_names: Vec<(&str, Vec<usize>)> = entries
            .iter()
            .map(|(name, shape, _)| {
                (
                    name.as_str(),
                    shape.iter().map(|&size| size as usize).collect(),
                )
            })
            .collect();
        assert_eq!(layout_names, entry_names, "{relative}");
    }
}
