//! The reference specs match torchvision: the same parameter count and the same `state_dict`
//! (names, shapes, parameter vs buffer). The expected values come from
//! tests/fixtures/torchvision/<name>.json, written by scripts/make_torchvision_fixtures.py from
//! torchvision itself (default arguments, 1000 classes). torchvision's `num_batches_tracked`
//! counters are not in the fixtures: they are not tensors of the network but int64 counters
//! that the weight store keeps beside it (`ParamStore::batch_counters`).

use std::collections::BTreeMap;
use std::path::Path;

use nnc::elaborate::ElaborateOptions;
use serde_json::Value;

/// `name -> (shape, is_parameter)`.
type StateDict = BTreeMap<String, (Vec<u64>, bool)>;

struct Fixture {
    params: u64,
    state_dict: StateDict,
}

fn read_fixture(network: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision")
        .join(format!("{network}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()));
    let params = json["params"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: \"params\" is not a count", path.display()));
    let entries = json["state_dict"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: \"state_dict\" is not a list", path.display()));
    let mut state_dict = StateDict::new();
    for entry in entries {
        let malformed = || panic!("{}: malformed state_dict entry {entry}", path.display());
        let Some([name, shape, is_parameter]) = entry.as_array().map(Vec::as_slice) else {
            malformed()
        };
        let (Some(name), Some(shape), Some(is_parameter)) =
            (name.as_str(), shape.as_array(), is_parameter.as_bool())
        else {
            malformed()
        };
        let shape = shape
            .iter()
            .map(|dim| dim.as_u64().unwrap_or_else(|| malformed()))
            .collect();
        let previous = state_dict.insert(name.to_string(), (shape, is_parameter));
        assert!(
            previous.is_none(),
            "{}: duplicate entry {name}",
            path.display()
        );
    }
    Fixture { params, state_dict }
}

/// Compiles specs/<network>.nn and compares it with the torchvision fixture of the same name.
fn check_against_torchvision(network: &str) {
    let fixture = read_fixture(network);
    let spec_path = format!("specs/{network}.nn");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&spec_path))
        .unwrap_or_else(|error| panic!("cannot read {spec_path}: {error}"));
    let compilation = match nnc::compile(&text, &ElaborateOptions::default()) {
        Ok(compilation) => compilation,
        Err(diagnostics) => panic!(
            "{spec_path} does not compile:\n{}",
            nnc::render_diagnostics(&diagnostics, &spec_path, &text)
        ),
    };

    let mut ours = StateDict::new();
    let mut duplicates = Vec::new();
    for (name, shape, trainable) in compilation.shapes.params.state_dict_entries() {
        if ours.insert(name.clone(), (shape, trainable)).is_some() {
            duplicates.push(name);
        }
    }

    let mut problems = Vec::new();
    for name in &duplicates {
        problems.push(format!("  nnc has {name} more than once"));
    }
    for (name, (shape, is_parameter)) in &fixture.state_dict {
        match ours.get(name) {
            None => problems.push(format!(
                "  missing in nnc: {name} {shape:?} ({})",
                kind(*is_parameter)
            )),
            Some(found) if found != &(shape.clone(), *is_parameter) => problems.push(format!(
                "  {name}: torchvision has {shape:?} ({}), nnc has {:?} ({})",
                kind(*is_parameter),
                found.0,
                kind(found.1)
            )),
            Some(_) => {}
        }
    }
    for (name, (shape, trainable)) in &ours {
        if !fixture.state_dict.contains_key(name) {
            problems.push(format!(
                "  not in torchvision: {name} {shape:?} ({})",
                kind(*trainable)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{spec_path}: state_dict differs from torchvision's {network} ({} problem(s)):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(
        compilation.shapes.params.trainable_count(),
        fixture.params,
        "{spec_path}: trainable parameter count differs from torchvision's {network}"
    );
}

fn kind(is_parameter: bool) -> &'static str {
    if is_parameter {
        "parameter"
    } else {
        "buffer"
    }
}

#[test]
fn resnet18() {
    check_against_torchvision("resnet18");
}

#[test]
fn resnet50() {
    check_against_torchvision("resnet50");
}

#[test]
fn vgg16() {
    check_against_torchvision("vgg16");
}

#[test]
fn alexnet() {
    check_against_torchvision("alexnet");
}

#[test]
fn googlenet() {
    check_against_torchvision("googlenet");
}

#[test]
fn densenet121() {
    check_against_torchvision("densenet121");
}
