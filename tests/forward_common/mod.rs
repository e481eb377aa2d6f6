//! Shared by the tests that compare the reference interpreter with PyTorch: reading a fixture
//! written by `scripts/make_forward_fixtures.py`, making its weights and inputs, and running it.
//!
//! Fixtures store outputs only. Weights and inputs come from the tensor's name through the same
//! counter-based generator as the script (SplitMix64 over the FNV-1a hash of the name), rounded
//! to f32 exactly as PyTorch held them, so both sides compute from bit-identical numbers.
//!
//! The error of an output is `max |ours - torch| / max |torch|`: the largest deviation relative
//! to the output's scale. It is robust to outputs near zero, where an elementwise relative error
//! would only measure float32 rounding of tiny numbers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::lower::SymbolValues;
use nnc::tensor::Tensor;

/// The largest allowed error of an f64 interpreter output against float32 PyTorch.
pub const TOLERANCE: f64 = 1e-4;

#[derive(serde::Deserialize)]
pub struct Fixture {
    pub spec: String,
    pub set: BTreeMap<String, i64>,
    pub input_shapes: BTreeMap<String, Vec<u64>>,
    pub symbols: BTreeMap<String, usize>,
    pub inputs: Vec<FixtureInput>,
    pub parameters: Vec<(String, Vec<u64>)>,
    pub outputs: Vec<FixtureOutput>,
}

#[derive(serde::Deserialize)]
pub struct FixtureInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub int_high: Option<u64>,
}

#[derive(serde::Deserialize)]
pub struct FixtureOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn load_fixture(path: &Path) -> Fixture {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `count` numbers in `[0, 1)`, as `uniforms` in the script.
pub fn fixture_values(key: &str, count: usize) -> Vec<f64> {
    let seed = fnv1a(key.as_bytes());
    (1..=count as u64)
        .map(|counter| {
            let mut z = seed.wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        })
        .collect()
}

fn through_f32(value: f64) -> f64 {
    value as f32 as f64
}

/// A parameter tensor, as `parameter_values` in the script.
pub fn parameter_tensor(name: &str, shape: &[u64]) -> Tensor<f64> {
    let shape: Vec<usize> = shape.iter().map(|size| *size as usize).collect();
    let uniforms = fixture_values(&format!("param:{name}"), shape.iter().product());
    let fan_in = if shape.len() >= 2 {
        shape[1..].iter().product::<usize>()
    } else {
        shape[0]
    };
    let value = |u: f64| {
        if name.ends_with("running_var") {
            0.5 + u
        } else if name.ends_with("running_mean") {
            u - 0.5
        } else if shape.len() == 1 && name.ends_with("weight") {
            0.5 + u
        } else {
            (2.0 * u - 1.0) / (fan_in as f64).sqrt()
        }
    };
    Tensor::from_vec(
        &shape,
        uniforms
            .into_iter()
            .map(|u| through_f32(value(u)))
            .collect(),
    )
    .expect("sizes match")
}

/// An input tensor, as `input_values` in the script: integer ids below `int_high`, or floats.
pub fn input_tensor(input: &FixtureInput) -> Tensor<f64> {
    let uniforms = fixture_values(
        &format!("input:{}", input.name),
        input.shape.iter().product(),
    );
    let data = match input.int_high {
        Some(high) => uniforms
            .into_iter()
            .map(|u| (u * high as f64).floor())
            .collect(),
        None => uniforms
            .into_iter()
            .map(|u| through_f32(2.0 * u - 1.0))
            .collect(),
    };
    Tensor::from_vec(&input.shape, data).expect("sizes match")
}

pub fn compile_fixture(fixture: &Fixture) -> nnc::Compilation {
    let spec_path = repository_root().join(&fixture.spec);
    let text = std::fs::read_to_string(&spec_path).expect("the fixture's spec is readable");
    let options = ElaborateOptions {
        param_overrides: fixture
            .set
            .iter()
            .map(|(name, value)| (name.clone(), OverrideValue::Int(*value)))
            .collect(),
        input_shape_overrides: fixture
            .input_shapes
            .iter()
            .map(|(name, dims)| (name.clone(), dims.clone()))
            .collect(),
    };
    nnc::compile(&text, &options).unwrap_or_else(|diagnostics| {
        panic!(
            "{}",
            nnc::render_diagnostics(&diagnostics, &fixture.spec, &text)
        )
    })
}

/// `max |ours - reference| / max |reference|`.
pub fn relative_error(ours: &[f64], reference: &[f64]) -> f64 {
    let scale = reference
        .iter()
        .fold(0.0f64, |largest, value| largest.max(value.abs()));
    let deviation = ours.iter().zip(reference).fold(0.0f64, |largest, (a, b)| {
        if (a - b).is_nan() {
            f64::INFINITY
        } else {
            largest.max((a - b).abs())
        }
    });
    deviation / scale.max(f64::MIN_POSITIVE)
}

/// Lowers and interprets a fixture's spec; returns `(output name, error)` per output, or a
/// description of what does not match (names, shapes).
pub fn run_fixture(path: &Path) -> Result<Vec<(String, f64)>, String> {
    let fixture = load_fixture(path);
    let compilation = compile_fixture(&fixture);
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
    let params: BTreeMap<String, Tensor<f64>> = entries
        .iter()
        .map(|(name, shape)| (name.clone(), parameter_tensor(name, shape)))
        .collect();
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
        inputs.push(input_tensor(input));
    }
    let outputs =
        nnc::interpret::interpret(&graph, &inputs, &params).map_err(|error| error.to_string())?;
    let mut errors = Vec::new();
    for ((name, _), output) in graph.outputs.iter().zip(&outputs) {
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
        errors.push((name.clone(), relative_error(&output.data, &reference.data)));
    }
    Ok(errors)
}

/// Runs every fixture in `directory` and fails listing each output beyond [`TOLERANCE`].
pub fn check_directory(directory: &str) {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repository_root().join(directory))
        .expect("the fixture directory exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {directory}");
    check_paths(&paths, run_fixture, "outputs");
}

/// Runs each fixture with `run` (which returns the relative error of every output) and fails
/// listing each output beyond [`TOLERANCE`]; `what` names the outputs in the failure message.
pub fn check_paths(
    paths: &[PathBuf],
    run: impl Fn(&Path) -> Result<Vec<(String, f64)>, String>,
    what: &str,
) {
    let mut failures = Vec::new();
    for path in paths {
        let case = path.file_stem().unwrap().to_string_lossy().to_string();
        match run(path) {
            Ok(errors) => {
                for (output, error) in errors {
                    println!("{case}.{output}: relative error {error:.2e}");
                    if error.is_nan() || error >= TOLERANCE {
                        failures.push(format!("{case}.{output}: relative error {error:.2e}"));
                    }
                }
            }
            Err(message) => failures.push(format!("{case}: {message}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{what} differ from PyTorch:\n{}",
        failures.join("\n")
    );
}
