//! The command line as a user meets it: exit codes, budgets, formats, overrides and errors.

use std::process::{Command, Output};

fn nnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the nnc binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_temp_spec(name: &str, text: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("nnc-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let path = directory.join(name);
    std::fs::write(&path, text).expect("temp spec written");
    path
}

#[test]
fn build_prints_the_reference_parameter_count() {
    let output = nnc(&["build", "specs/resnet18.nn"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // torchvision.models.resnet18(): 11,689,512 parameters.
    assert!(
        stdout(&output).contains("11,689,512"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn json_report_has_the_documented_keys() {
    let output = nnc(&["build", "specs/resnet18.nn", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("valid JSON");
    for key in [
        "schema_version",
        "params",
        "trainable_params",
        "buffers",
        "macs",
        "flops",
        "param_bytes",
        "activation_bytes",
        "layers",
        "blocks",
        "inputs",
        "outputs",
    ] {
        assert!(report.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(report["params"], 11_689_512);
    let layers = report["layers"].as_array().expect("layers is an array");
    let fc = layers
        .iter()
        .find(|layer| layer["path"] == "fc")
        .expect("fc layer present");
    for key in ["path", "op", "shape", "params", "macs"] {
        assert!(fc.get(key).is_some(), "layer lacks {key}");
    }
    assert_eq!(fc["op"], "dense");
    assert_eq!(fc["shape"], serde_json::json!(["N", 1000]));
    // nn.Linear(512, 1000): 512 * 1000 weights + 1000 biases, 512 * 1000 MACs per example.
    assert_eq!(fc["params"], 512 * 1000 + 1000);
    assert_eq!(fc["macs"], 512 * 1000);
    let sum: u64 = layers
        .iter()
        .map(|layer| layer["params"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sum, 11_689_512, "per-layer params add up to the total");
}

#[test]
fn budgets_pass_and_fail_with_documented_exit_codes() {
    let within = nnc(&[
        "build",
        "specs/resnet18.nn",
        "--assert",
        "params <= 12M",
        "--assert",
        "macs < 2G",
    ]);
    assert_eq!(within.status.code(), Some(0), "{}", stderr(&within));
    let broken = nnc(&["build", "specs/resnet18.nn", "--assert", "params <= 11M"]);
    assert_eq!(broken.status.code(), Some(3));
    assert!(
        stderr(&broken).contains("params <= 11M"),
        "{}",
        stderr(&broken)
    );
    let malformed = nnc(&["build", "specs/resnet18.nn", "--assert", "weights ~ 3"]);
    assert_eq!(malformed.status.code(), Some(2));
}

#[test]
fn overrides_change_the_network() {
    let output = nnc(&[
        "build",
        "specs/resnet18.nn",
        "--set",
        "classes=10",
        "--input-shape",
        "image=3x32x32",
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("valid JSON");
    // The reference count with the 1000-way fc (512*1000 + 1000) swapped for a 10-way one.
    assert_eq!(
        report["params"],
        11_689_512 - (512 * 1000 + 1000) + (512 * 10 + 10)
    );
    assert_eq!(
        report["inputs"][0]["shape"],
        serde_json::json!(["N", 3, 32, 32])
    );
    let unknown = nnc(&["build", "specs/resnet18.nn", "--set", "clases=10"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("clases"), "{}", stderr(&unknown));
}

#[test]
fn check_exit_codes() {
    assert_eq!(nnc(&["check", "specs/resnet18.nn"]).status.code(), Some(0));
    let bad = write_temp_spec(
        "bad.nn",
        "input x: [N, 1, 28, 28]\noutput y = x -> conv2d(6, 5, stride = 2)\n",
    );
    let output = nnc(&["check", bad.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("(28 + 2*0 - 5)/2 + 1 = 12.5 is not an integer"),
        "{message}"
    );
    assert!(message.contains(":2:"), "points at line 2: {message}");
    let missing = nnc(&["check", "specs/does-not-exist.nn"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("does-not-exist.nn"));
    assert_eq!(nnc(&["build"]).status.code(), Some(2));
}

#[test]
fn depth_collapses_blocks() {
    let output = nnc(&["build", "specs/resnet18.nn", "--depth", "1"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(
        text.contains("layer1") && text.contains("(collapsed)"),
        "{text}"
    );
    assert!(!text.contains("layer1.0.conv1"), "{text}");
}

#[test]
fn graph_writes_dot_with_block_clusters() {
    let output = nnc(&["graph", "specs/resnet18.nn"]);
    assert_eq!(output.status.code(), Some(0));
    let dot = stdout(&output);
    assert!(dot.starts_with("digraph network {"));
    assert!(
        dot.contains("subgraph \"cluster_layer1.0\""),
        "blocks become clusters"
    );
    assert!(dot.contains(" -> "));
}

#[test]
fn emit_ir_prints_the_layer_graph() {
    let output = nnc(&["build", "specs/resnet18.nn", "--emit", "ir"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(
        text.contains("conv2d[out=64, kernel=7, stride=2, pad=3, bias=false]"),
        "{text}"
    );
    assert!(text.contains("output logits = %"));
}
