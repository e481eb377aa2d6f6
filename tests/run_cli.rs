//! `nnc run` and `nnc bench` as a user meets them: npy inputs written here, weights saved by
//! `ParamStore::save_safetensors`, outputs compared with the f64 reference interpreter run on
//! the same numbers, and every documented error with its exit code (2 usage, 4 runtime).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::lower::SymbolValues;
use nnc::tensor::Tensor;
use nnc::weights::npy::{read_npy, write_npy, write_npy_i64};
use nnc::weights::{NameStyle, ParamStore};

const TOLERANCE: f64 = 1e-4;

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

/// A fresh directory per test, so tests running in parallel never share files.
fn scratch(test: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("nnc-run-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("scratch directory");
    directory
}

fn text(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn compile(spec: &str, set: &[(&str, i64)]) -> nnc::Compilation {
    let path = format!("{}/{spec}", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&path).expect("spec readable");
    let options = ElaborateOptions {
        param_overrides: set
            .iter()
            .map(|(name, value)| (name.to_string(), OverrideValue::Int(*value)))
            .collect(),
        input_shape_overrides: Vec::new(),
    };
    nnc::compile(&source, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, &path, &source))
    })
}

/// Deterministic values in [-1, 1) (SplitMix64), independent of nnc's own generators.
fn values(seed: u64, count: usize) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let unit = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
            (2.0 * unit - 1.0) as f32
        })
        .collect()
}

/// The reference interpreter's outputs on the same parameters and inputs, in f64.
fn interpreter_outputs(
    compilation: &nnc::Compilation,
    symbols: &SymbolValues,
    params: &ParamStore,
    inputs: &[Tensor<f32>],
) -> Vec<Tensor<f64>> {
    let graph = nnc::lower::lower(compilation, symbols).expect("lowers");
    let params: BTreeMap<String, Tensor<f64>> = params
        .iter()
        .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
        .collect();
    let inputs: Vec<Tensor<f64>> = inputs.iter().map(Tensor::to_f64).collect();
    nnc::interpret::interpret(&graph, &inputs, &params).expect("the interpreter runs")
}

/// `max |ours - reference| / max |reference|`.
fn relative_error(ours: &Tensor<f64>, reference: &Tensor<f64>) -> f64 {
    assert_eq!(ours.shape, reference.shape);
    let scale = reference
        .data
        .iter()
        .fold(0.0f64, |max, value| max.max(value.abs()))
        .max(1e-30);
    let deviation = ours
        .data
        .iter()
        .zip(&reference.data)
        .fold(0.0f64, |max, (a, b)| {
            if (a - b).is_nan() {
                f64::INFINITY
            } else {
                max.max((a - b).abs())
            }
        });
    deviation / scale
}

/// mlp.nn weights (seed 7) in a safetensors file and a [3, 784] input in an npy file.
fn mlp_files(directory: &Path) -> (ParamStore, Tensor<f32>, PathBuf, PathBuf) {
    let compilation = compile("specs/mlp.nn", &[]);
    let params = ParamStore::initialize(&compilation, 7);
    let weights = directory.join("mlp.safetensors");
    params
        .save_safetensors(&weights, NameStyle::PyTorch)
        .expect("weights saved");
    let input = Tensor::from_vec(&[3, 784], values(11, 3 * 784)).expect("sizes match");
    let input_path = directory.join("x.npy");
    write_npy(&input_path, &input).expect("input written");
    (params, input, weights, input_path)
}

#[test]
fn run_mlp_matches_the_interpreter_for_one_and_two_threads() {
    let directory = scratch("mlp");
    let (params, input, weights, input_path) = mlp_files(&directory);
    let compilation = compile("specs/mlp.nn", &[]);
    let symbols = SymbolValues::report_values(&compilation.network).with("N", 3);
    let reference = interpreter_outputs(&compilation, &symbols, &params, &[input]);
    let mut previous: Option<Tensor<f64>> = None;
    for threads in ["1", "2"] {
        let output_path = directory.join(format!("y{threads}.npy"));
        let input_flag = format!("image={}", text(&input_path));
        let output = nnc(&[
            "run",
            "specs/mlp.nn",
            "--input",
            &input_flag,
            "--weights",
            text(&weights),
            "--output",
            text(&output_path),
            "--threads",
            threads,
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert!(
            stdout(&output).contains("logits: [3, 10]"),
            "{}",
            stdout(&output)
        );
        let ours = read_npy(&output_path)
            .expect("output written")
            .into_f64()
            .expect("floats");
        let error = relative_error(&ours, &reference[0]);
        assert!(error <= TOLERANCE, "{threads} thread(s): error {error:e}");
        if let Some(previous) = &previous {
            assert_eq!(previous, &ours, "1 and 2 threads give identical results");
        }
        previous = Some(ours);
    }
}

#[test]
fn run_reads_integer_token_ids_and_writes_one_file_per_output_into_a_directory() {
    let directory = scratch("ids");
    let set = [("vocab", 50), ("hidden", 16), ("embed", 8)];
    let compilation = compile("specs/lstm_classifier.nn", &set);
    let params = ParamStore::initialize(&compilation, 3);
    let weights = directory.join("lstm.safetensors");
    params
        .save_safetensors(&weights, NameStyle::Nnc)
        .expect("weights saved");
    let ids: Vec<i64> = values(5, 2 * 6)
        .iter()
        .map(|value| ((value + 1.0) * 24.9) as i64)
        .collect();
    let tokens = Tensor::from_vec(&[2, 6], ids.clone()).expect("sizes match");
    let tokens_path = directory.join("tokens.npy");
    write_npy_i64(&tokens_path, &tokens).expect("ids written");
    let output_directory = directory.join("out");
    std::fs::create_dir_all(&output_directory).expect("output directory");
    let output = nnc(&[
        "run",
        "specs/lstm_classifier.nn",
        "--set",
        "vocab=50",
        "--set",
        "hidden=16",
        "--set",
        "embed=8",
        "--input",
        text(&tokens_path),
        "--weights",
        text(&weights),
        "--output",
        text(&output_directory),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let ours = read_npy(&output_directory.join("logits.npy"))
        .expect("written as logits.npy")
        .into_f64()
        .expect("floats");
    let symbols = SymbolValues::report_values(&compilation.network)
        .with("N", 2)
        .with("T", 6);
    let float_ids =
        Tensor::from_vec(&[2, 6], ids.iter().map(|id| *id as f32).collect()).expect("sizes match");
    let reference = interpreter_outputs(&compilation, &symbols, &params, &[float_ids]);
    let error = relative_error(&ours, &reference[0]);
    assert!(error <= TOLERANCE, "error {error:e}");
}

#[test]
fn bad_inputs_and_weights_are_clear_errors_with_documented_exit_codes() {
    let directory = scratch("errors");
    let (_, _, weights, input_path) = mlp_files(&directory);
    let output_path = directory.join("y.npy");
    let run = |input: &Path, extra: &[&str]| {
        let mut args = vec![
            "run",
            "specs/mlp.nn",
            "--input",
            text(input),
            "--output",
            text(&output_path),
        ];
        args.extend_from_slice(extra);
        nnc(&args)
    };
    let cases: Vec<(&str, Output, i32, &str)> = vec![
        (
            "wrong input shape",
            run(&write(&directory, "wide.npy", &[3, 785]), &[]),
            4,
            "input `image` should have shape [N, 784], but has shape [3, 785]",
        ),
        (
            "wrong rank",
            run(&write(&directory, "flat.npy", &[784]), &[]),
            4,
            "should have shape [N, 784]",
        ),
        (
            "missing weight file",
            run(
                &input_path,
                &["--weights", text(&directory.join("absent.safetensors"))],
            ),
            2,
            "absent.safetensors",
        ),
        (
            "weights of another spec",
            run(
                &input_path,
                &["--weights", text(&lenet_weights(&directory))],
            ),
            4,
            "does not match the spec's parameters",
        ),
        (
            "NaN with --check-nan",
            run(&write_nan(&directory), &["--check-nan"]),
            4,
            "input `image` contains NaN at element 1000",
        ),
        (
            "missing input file",
            run(&directory.join("absent.npy"), &[]),
            2,
            "absent.npy",
        ),
        (
            "not an npy file",
            run(&weights, &[]),
            4,
            "is not a valid npy file",
        ),
    ];
    for (what, output, code, message) in cases {
        assert_eq!(
            output.status.code(),
            Some(code),
            "{what}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{what}: {}",
            stderr(&output)
        );
        assert!(
            !stderr(&output).contains("panicked"),
            "{what}: {}",
            stderr(&output)
        );
    }
    let without_check = run(&write_nan(&directory), &[]);
    assert_eq!(
        without_check.status.code(),
        Some(0),
        "NaN passes through without --check-nan: {}",
        stderr(&without_check)
    );
    let unknown_name = nnc(&[
        "run",
        "specs/mlp.nn",
        "--input",
        "pixels=x.npy",
        "--output",
        text(&output_path),
    ]);
    assert_eq!(unknown_name.status.code(), Some(2));
    assert!(
        stderr(&unknown_name).contains("image: [N, 784]"),
        "{}",
        stderr(&unknown_name)
    );
}

fn write(directory: &Path, name: &str, shape: &[usize]) -> PathBuf {
    let path = directory.join(name);
    let count = shape.iter().product();
    write_npy(
        &path,
        &Tensor::from_vec(shape, values(2, count)).expect("sizes match"),
    )
    .expect("written");
    path
}

fn write_nan(directory: &Path) -> PathBuf {
    let path = directory.join("nan.npy");
    let mut data = values(3, 2 * 784);
    data[1000] = f32::NAN;
    write_npy(
        &path,
        &Tensor::from_vec(&[2, 784], data).expect("sizes match"),
    )
    .expect("written");
    path
}

fn lenet_weights(directory: &Path) -> PathBuf {
    let path = directory.join("lenet5.safetensors");
    let params = ParamStore::initialize(&compile("specs/lenet5.nn", &[]), 0);
    params
        .save_safetensors(&path, NameStyle::Nnc)
        .expect("saved");
    path
}

#[test]
fn bench_reports_times_throughput_and_memory() {
    let output = nnc(&[
        "bench",
        "specs/mlp.nn",
        "--batch",
        "4",
        "--iterations",
        "2",
        "--warmup",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = stdout(&output);
    for field in [
        "symbols: N=4",
        "threads: 1",
        "compile: ",
        "forward median: ",
        "forward min: ",
        "forward MACs: 1,075,200",
        "GFLOP/s: ",
        "planned arena: ",
    ] {
        assert!(report.contains(field), "missing `{field}` in\n{report}");
    }
    let zero = nnc(&["bench", "specs/mlp.nn", "--iterations", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    let unknown_dim = nnc(&["bench", "specs/mlp.nn", "--dim", "T=3", "--iterations", "1"]);
    assert_eq!(
        unknown_dim.status.code(),
        Some(2),
        "{}",
        stderr(&unknown_dim)
    );
}

#[test]
fn build_reports_planned_memory_and_compile_time() {
    let table = nnc(&["build", "specs/mlp.nn", "--batch", "8"]);
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(
        text.contains("Planned arena:") && text.contains("at N=8"),
        "{text}"
    );
    assert!(text.contains("Compile time:"), "{text}");
    let json = nnc(&["build", "specs/mlp.nn", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("valid JSON");
    assert!(
        report["planned_arena_bytes"]
            .as_u64()
            .is_some_and(|bytes| bytes > 0),
        "{report}"
    );
    assert!(report["compile_ms"].as_f64().is_some(), "{report}");
    for bad in [["--batch", "0"], ["--dim", "T=4"]] {
        let output = nnc(&["build", "specs/mlp.nn", bad[0], bad[1]]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn run_takes_named_inputs_and_writes_several_outputs_into_a_new_directory() {
    let directory = scratch("several");
    // siamese.nn: two inputs, given by name in either order.
    let compilation = compile("specs/siamese.nn", &[]);
    let params = ParamStore::initialize(&compilation, 1);
    let weights = directory.join("siamese.safetensors");
    params
        .save_safetensors(&weights, NameStyle::Nnc)
        .expect("weights saved");
    let left = Tensor::from_vec(&[2, 1, 28, 28], values(21, 2 * 784)).expect("sizes match");
    let right = Tensor::from_vec(&[2, 1, 28, 28], values(22, 2 * 784)).expect("sizes match");
    let (left_path, right_path) = (directory.join("left.npy"), directory.join("right.npy"));
    write_npy(&left_path, &left).expect("written");
    write_npy(&right_path, &right).expect("written");
    let output_path = directory.join("similarity.npy");
    let right_flag = format!("right={}", text(&right_path));
    let left_flag = format!("left={}", text(&left_path));
    let output = nnc(&[
        "run",
        "specs/siamese.nn",
        "--input",
        &right_flag,
        "--input",
        &left_flag,
        "--weights",
        text(&weights),
        "-o",
        text(&output_path),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let symbols = SymbolValues::report_values(&compilation.network).with("N", 2);
    let reference = interpreter_outputs(&compilation, &symbols, &params, &[left, right]);
    let ours = read_npy(&output_path)
        .expect("written")
        .into_f64()
        .expect("floats");
    assert!(relative_error(&ours, &reference[0]) <= TOLERANCE);
    let only_left = nnc(&[
        "run",
        "specs/siamese.nn",
        "--input",
        &left_flag,
        "-o",
        text(&output_path),
    ]);
    assert_eq!(only_left.status.code(), Some(2));
    assert!(
        stderr(&only_left).contains("no --input for right"),
        "{}",
        stderr(&only_left)
    );

    // vae.nn: three outputs, each NAME.npy in the directory --output names (created here).
    let compilation = compile("specs/vae.nn", &[]);
    let params = ParamStore::initialize(&compilation, 2);
    let weights = directory.join("vae.safetensors");
    params
        .save_safetensors(&weights, NameStyle::Nnc)
        .expect("weights saved");
    let image = Tensor::from_vec(&[3, 784], values(23, 3 * 784)).expect("sizes match");
    let image_path = directory.join("image.npy");
    write_npy(&image_path, &image).expect("written");
    let output_directory = directory.join("vae-out");
    let output = nnc(&[
        "run",
        "specs/vae.nn",
        "--input",
        text(&image_path),
        "--weights",
        text(&weights),
        "-o",
        text(&output_directory),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let symbols = SymbolValues::report_values(&compilation.network).with("N", 3);
    let reference = interpreter_outputs(&compilation, &symbols, &params, &[image]);
    for (name, expected) in ["recon", "mu", "logvar"].iter().zip(&reference) {
        let ours = read_npy(&output_directory.join(format!("{name}.npy")))
            .expect("one file per output")
            .into_f64()
            .expect("floats");
        let error = relative_error(&ours, expected);
        assert!(error <= TOLERANCE, "{name}: error {error:e}");
    }
    let into_file = nnc(&[
        "run",
        "specs/vae.nn",
        "--input",
        text(&image_path),
        "-o",
        text(&directory.join("vae.npy")),
    ]);
    assert_eq!(into_file.status.code(), Some(2));
    assert!(
        stderr(&into_file).contains("--output must be a directory"),
        "{}",
        stderr(&into_file)
    );
}
