//! `nnc step`, `nnc train`, `nnc gradcheck` and `nnc bench --train` as a user meets them: npy
//! data written here, and every documented error with its exit code (1 spec error or no loss,
//! 2 usage, 4 runtime, 5 gradient check above the tolerance).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nnc::tensor::Tensor;
use nnc::weights::npy::{write_npy, write_npy_i64};

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

fn scratch(test: &str) -> PathBuf {
    let directory =
        std::env::temp_dir().join(format!("nnc-training-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("scratch directory");
    directory
}

fn text(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// `samples` flattened images in [-1, 1) and class ids below 10, as npy files.
fn mnist_like(directory: &Path, samples: usize) -> (PathBuf, PathBuf) {
    let mut state = 17u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let images = Tensor {
        shape: vec![samples, 784],
        data: (0..samples * 784).map(|_| 2.0 * next() - 1.0).collect(),
    };
    let labels = Tensor {
        shape: vec![samples],
        data: (0..samples).map(|_| (next() * 10.0) as i64 % 10).collect(),
    };
    let (x, y) = (directory.join("x.npy"), directory.join("y.npy"));
    write_npy(&x, &images).expect("writes");
    write_npy_i64(&y, &labels).expect("writes");
    (x, y)
}

const MLP: &[&str] = &["specs/mlp.nn", "--set", "hidden=16"];

fn with(base: &[&'static str], extra: &[&str]) -> Vec<String> {
    base.iter()
        .chain(extra)
        .map(|arg| arg.to_string())
        .collect()
}

fn run(command: &str, args: Vec<String>) -> Output {
    let mut all = vec![command.to_string()];
    all.extend(args);
    let borrowed: Vec<&str> = all.iter().map(String::as_str).collect();
    nnc(&borrowed)
}

#[test]
fn step_prints_the_loss_of_each_step_and_saves_weights() {
    let directory = scratch("step");
    let saved = directory.join("after.safetensors");
    let output = run(
        "step",
        with(
            MLP,
            &[
                "--batch",
                "4",
                "--steps",
                "3",
                "--lr",
                "0.1",
                "--save",
                text(&saved),
            ],
        ),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(printed.contains("label [4] int below 10"), "{printed}");
    let losses: Vec<f32> = printed
        .lines()
        .filter_map(|line| {
            line.strip_prefix("step ")?
                .split("loss ")
                .nth(1)?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(losses.len(), 3, "{printed}");
    assert!(losses[2] < losses[0], "{printed}");
    // The saved weights continue where the steps stopped.
    let output = run(
        "step",
        with(
            MLP,
            &["--batch", "4", "--weights", text(&saved), "--lr", "0.1"],
        ),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let resumed: f32 = stdout(&output)
        .lines()
        .find_map(|line| line.strip_prefix("step 1: loss ")?.parse().ok())
        .expect("a loss line");
    assert!(resumed < losses[2], "{resumed} after {losses:?}");
}

#[test]
fn step_reads_every_input_from_npy() {
    let directory = scratch("step-npy");
    let (x, y) = mnist_like(&directory, 5);
    let image = format!("image={}", text(&x));
    let label = format!("label={}", text(&y));
    let output = run("step", with(MLP, &["--input", &image, "--input", &label]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("symbols: N=5"),
        "{}",
        stdout(&output)
    );
    let output = run("step", with(MLP, &["--input", &image]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no --input for label"),
        "{}",
        stderr(&output)
    );
    let missing = format!("label={}", text(&directory.join("missing.npy")));
    let output = run("step", with(MLP, &["--input", &image, "--input", &missing]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("missing.npy"),
        "{}",
        stderr(&output)
    );
    let output = run(
        "step",
        with(
            MLP,
            &[
                "--input",
                &label,
                "--input",
                &label.replace("label", "image"),
            ],
        ),
    );
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("input `image`"),
        "{}",
        stderr(&output)
    );
    let output = run(
        "step",
        with(MLP, &["--input", &image, "--input", &label, "--batch", "4"]),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--batch 4 disagrees"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn training_needs_a_loss() {
    let directory = scratch("no-loss");
    let spec = directory.join("no_loss.nn");
    std::fs::write(&spec, "input x: [N, 8]\noutput y = x -> dense(4) as fc\n").expect("writes");
    for command in ["step", "gradcheck"] {
        let output = nnc(&[command, text(&spec)]);
        assert_eq!(output.status.code(), Some(1), "{command}");
        assert!(
            stderr(&output).contains("the spec declares no loss"),
            "{command}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn step_rejects_bad_flags() {
    for (flags, message) in [
        (vec!["--steps", "0"], "--steps must be at least 1"),
        (vec!["--lr=-1"], "--lr must be a positive number"),
        (vec!["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    ] {
        let output = run("step", with(MLP, &flags));
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
    }
}

#[test]
fn train_walks_the_data_in_mini_batches() {
    let directory = scratch("train");
    let (x, y) = mnist_like(&directory, 22);
    let image = format!("image={}", text(&x));
    let label = format!("label={}", text(&y));
    let output = run(
        "train",
        with(
            MLP,
            &[
                "-i",
                &image,
                "-i",
                &label,
                "--batch",
                "4",
                "--epochs",
                "3",
                "--lr",
                "0.1",
                "--shuffle",
                "--log-every",
                "5",
            ],
        ),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("22 samples, 5 steps per epoch, shuffled (the last 2 samples are skipped"),
        "{printed}"
    );
    let means: Vec<f32> = printed
        .lines()
        .filter_map(|line| {
            line.split("mean loss ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(means.len(), 3, "{printed}");
    assert!(means[2] < means[0], "{printed}");
    assert!(printed.contains("epoch 2 step 5/5: loss"), "{printed}");
    // Inputs of different sample counts, and a batch larger than the data.
    let (short, _) = mnist_like(&scratch("train-short"), 7);
    let short = format!("image={}", text(&short));
    let output = run("train", with(MLP, &["-i", &short, "-i", &label]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("image has 7, label has 22"),
        "{}",
        stderr(&output)
    );
    let output = run(
        "train",
        with(MLP, &["-i", &image, "-i", &label, "--batch", "64"]),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("fewer than one batch of 64"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn gradcheck_reports_every_parameter_and_fails_above_the_tolerance() {
    let output = run("gradcheck", with(MLP, &["--samples", "3"]));
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let printed = stdout(&output);
    for parameter in ["fc1.weight", "fc1.bias", "fc2.weight", "fc3.bias"] {
        assert!(printed.contains(parameter), "{printed}");
    }
    assert!(printed.contains("3 of 12544"), "{printed}");
    assert!(printed.contains(": ok"), "{printed}");
    let output = run("gradcheck", with(MLP, &["--tolerance", "1e-15"]));
    assert_eq!(output.status.code(), Some(5), "{}", stdout(&output));
    assert!(stdout(&output).contains("FAILED"));
}

#[test]
fn bench_train_times_the_step() {
    let output = run(
        "bench",
        with(
            MLP,
            &[
                "--train",
                "--batch",
                "8",
                "--iterations",
                "3",
                "--warmup",
                "1",
            ],
        ),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    for key in [
        "train step median:",
        "GFLOP/s:",
        "training memory:",
        "updates: 6 written in place, 0 copied",
    ] {
        assert!(printed.contains(key), "{key} missing from {printed}");
    }
}
