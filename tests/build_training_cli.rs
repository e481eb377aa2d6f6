//! `nnc build` for training: `--emit grad`, `--emit recompute`, and the training lines of the
//! report (table and JSON). The backward MACs of the MLP are checked against a count by hand.

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

fn spec_without_loss() -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("nnc-training-cli-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let path = directory.join("no_loss.nn");
    std::fs::write(&path, "input x: [N, 4]\noutput y = x -> dense(3) as fc\n").expect("written");
    path
}

#[test]
fn emit_grad_needs_a_loss() {
    let path = spec_without_loss();
    let output = nnc(&["build", path.to_str().unwrap(), "--emit", "grad"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(
        message.contains("the spec declares no loss; add `loss ...`"),
        "{message}"
    );
    assert!(message.contains("no_loss.nn"), "{message}");
    // The report of such a spec has no training lines and a null `training`.
    let report = nnc(&["build", path.to_str().unwrap()]);
    assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
    assert!(!stdout(&report).contains("Backward MACs"));
    let json = nnc(&["build", path.to_str().unwrap(), "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("valid JSON");
    assert!(json["training"].is_null());
}

#[test]
fn emit_grad_prints_a_gradient_per_trainable_parameter() {
    let output = nnc(&["build", "specs/resnet18.nn", "--emit", "grad"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    for name in [
        "grad.conv1.weight",
        "grad.bn1.weight",
        "grad.fc.bias",
        "loss",
    ] {
        assert!(text.contains(&format!("output {name} = ")), "no {name}");
    }
    // Batch norm's running statistics are buffers: updated, not differentiated.
    assert!(text.contains("output buffer_update.bn1.running_mean = "));
    assert!(!text.contains("grad.bn1.running_mean"));
}

#[test]
fn emit_recompute_lists_kept_and_recomputed_values() {
    let output = nnc(&["build", "specs/resnet18.nn", "--emit", "recompute"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("conv2d") || text.contains("max_pool2d"),
        "{text}"
    );
    assert!(text.contains(" kept "), "{text}");
    assert!(text.contains(" recomputed "), "{text}");
    assert!(text.lines().last().unwrap().starts_with("kept "), "{text}");
}

#[test]
fn report_counts_the_backward_pass_of_the_mlp() {
    let output = nnc(&["build", "specs/mlp.nn", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("valid JSON");
    let training = &json["training"];
    // 784-256-256-10 at batch 1: each dense layer's weight gradient costs its forward MACs
    // (784*256 + 256*256 + 256*10), and the input gradients of the second and third layers
    // theirs (256*256 + 256*10); the image needs none.
    let weight_gradients = 784 * 256 + 256 * 256 + 256 * 10;
    let input_gradients = 256 * 256 + 256 * 10;
    assert_eq!(
        training["backward_macs"],
        weight_gradients + input_gradients
    );
    let peak = &training["peak_bytes"];
    let parts = ["parameters", "gradients", "saved_activations", "workspace"];
    let sum: u64 = parts.iter().map(|part| peak[part].as_u64().unwrap()).sum();
    assert_eq!(peak["total"].as_u64().unwrap(), sum);
    // Every parameter is read, and its gradient is alive at the end of the step.
    assert_eq!(peak["parameters"], json["param_bytes"]);
    assert!(peak["gradients"].as_u64().unwrap() <= json["param_bytes"].as_u64().unwrap());
    assert!(training["forward_compile_ms"].as_f64().is_some());
    assert!(training["backward_compile_ms"].as_f64().is_some());
}

#[test]
fn report_table_has_the_training_lines() {
    let output = nnc(&["build", "specs/lenet5.nn", "--batch", "4"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    for line in [
        "Backward MACs:",
        "Backward FLOPs:",
        "Training peak:",
        "Training compile:",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    assert!(text.contains("one step at N=4"), "{text}");
}
