//! Parameter files: safetensors written by PyTorch load into the matching specs with their exact
//! values; every kind of mismatch is reported; nnc's own files round-trip; npy arrays read as
//! numpy wrote them.
//!
//! The fixtures in tests/fixtures/weights/ come from scripts/make_weight_fixtures.py
//! (`safetensors.torch.save_file(model.state_dict())` of torch.nn modules built as the specs
//! describe, and `numpy.save`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::tensor::Tensor;
use nnc::weights::npy::{self, NpyArray};
use nnc::weights::{NameStyle, ParamStore, ShapeMismatch, StateDictMismatch, WeightsError};
use nnc::Compilation;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn fixture(name: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/weights/{name}"))
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

/// The fixture networks: spec, overrides, and the torch file's stem.
fn fixture_networks() -> Vec<(Compilation, &'static str)> {
    vec![
        (compile("specs/mlp.nn", &[("hidden", 16)]), "mlp"),
        (compile("tests/fixtures/weights/conv_bn.nn", &[]), "conv_bn"),
        (
            compile("tests/fixtures/weights/sequence.nn", &[]),
            "sequence",
        ),
    ]
}

/// A file's tensors as `(dtype, shape, raw little-endian bytes)`, read with the safetensors
/// crate directly, so tests can compare against the file and write edited copies of it.
type RawTensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_raw(bytes: &[u8]) -> RawTensors {
    let file = SafeTensors::deserialize(bytes).expect("fixture is valid safetensors");
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            )
        })
        .collect()
}

fn write_raw(tensors: &RawTensors) -> Vec<u8> {
    let views = tensors.iter().map(|(name, (dtype, shape, data))| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), data).expect("consistent view"),
        )
    });
    safetensors::serialize(views, None).expect("serializable")
}

fn f32_values(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

#[test]
fn pytorch_state_dicts_load_into_their_specs_with_exact_values() {
    for (compilation, stem) in fixture_networks() {
        let path = fixture(&format!("{stem}.safetensors"));
        let store = ParamStore::load_safetensors(&path, &compilation)
            .unwrap_or_else(|error| panic!("{stem}: {error}"));
        let file = read_raw(&std::fs::read(&path).unwrap());
        let expected_names = compilation.shapes.params.state_dict_entries();
        assert_eq!(store.len(), expected_names.len(), "{stem}");
        for (name, tensor) in store.iter() {
            let (dtype, shape, data) = &file[store.pytorch_name(name)];
            assert_eq!(*dtype, Dtype::F32, "{stem} {name}");
            assert_eq!(&tensor.shape, shape, "{stem} {name}");
            assert_eq!(bits(&tensor.data), bits(&f32_values(data)), "{stem} {name}");
        }
        // Everything in the file was used, except PyTorch's batch-norm step counters.
        let used: Vec<&str> = store.names().map(|name| store.pytorch_name(name)).collect();
        for name in file.keys() {
            assert!(
                used.contains(&name.as_str()) || name.ends_with(".num_batches_tracked"),
                "{stem}: {name} was not loaded"
            );
        }
    }
}

#[test]
fn the_conv_fixture_really_carries_num_batches_tracked_and_attention_uses_pytorch_names() {
    let conv = read_raw(&std::fs::read(fixture("conv_bn.safetensors")).unwrap());
    assert_eq!(conv["bn.num_batches_tracked"].0, Dtype::I64);
    let sequence = read_raw(&std::fs::read(fixture("sequence.safetensors")).unwrap());
    assert!(sequence.contains_key("encoder.self_attn.in_proj_weight"));
    assert!(sequence.contains_key("encoder.self_attn.in_proj_bias"));
}

#[test]
fn f64_f16_and_bf16_files_convert_to_the_rounded_f32_values() {
    let compilation = compile("tests/fixtures/weights/conv_bn.nn", &[]);
    let exact =
        ParamStore::load_safetensors(&fixture("conv_bn.safetensors"), &compilation).unwrap();
    // PyTorch rounded each f32 to the narrow type (nearest, ties to even); `half` widens exactly.
    type Rounding = fn(f32) -> f32;
    let conversions: [(&str, Rounding); 3] = [
        ("f64", |value| value),
        ("f16", |value| half::f16::from_f32(value).to_f32()),
        ("bf16", |value| half::bf16::from_f32(value).to_f32()),
    ];
    for (suffix, round) in conversions {
        let path = fixture(&format!("conv_bn_{suffix}.safetensors"));
        let store = ParamStore::load_safetensors(&path, &compilation)
            .unwrap_or_else(|error| panic!("{suffix}: {error}"));
        for (name, tensor) in store.iter() {
            let expected: Vec<f32> = exact
                .get(name)
                .unwrap()
                .data
                .iter()
                .map(|&v| round(v))
                .collect();
            assert_eq!(bits(&tensor.data), bits(&expected), "{suffix} {name}");
        }
    }
}

/// Loads an edited copy of the conv_bn fixture and returns the mismatch report.
fn mismatch_after(edit: impl FnOnce(&mut RawTensors)) -> StateDictMismatch {
    let compilation = compile("tests/fixtures/weights/conv_bn.nn", &[]);
    let mut tensors = read_raw(&std::fs::read(fixture("conv_bn.safetensors")).unwrap());
    edit(&mut tensors);
    match ParamStore::from_safetensors_bytes(&write_raw(&tensors), &compilation) {
        Err(WeightsError::StateDictMismatch(report)) => *report,
        other => panic!("expected a state_dict mismatch, got {other:?}"),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let report = mismatch_after(|tensors| {
        tensors.remove("bn.bias");
    });
    assert_eq!(report.missing, ["bn.bias"]);
    assert!(report.unexpected.is_empty() && report.shape_mismatches.is_empty());
    let message = WeightsError::StateDictMismatch(Box::new(report)).to_string();
    assert_eq!(
        message,
        "the safetensors data does not match the spec's parameters\n  missing: `bn.bias`"
    );
}

#[test]
fn an_unexpected_tensor_is_named_with_a_suggestion() {
    let report = mismatch_after(|tensors| {
        let weight = tensors.remove("fc.weight").unwrap();
        tensors.insert("fc.wieght".into(), weight);
        let extra = (Dtype::F32, vec![1], vec![0; 4]);
        tensors.insert("head.scale".into(), extra);
    });
    assert_eq!(report.missing, ["fc.weight"]);
    let unexpected: Vec<(&str, Option<&str>)> = report
        .unexpected
        .iter()
        .map(|item| (item.name.as_str(), item.did_you_mean.as_deref()))
        .collect();
    assert_eq!(
        unexpected,
        [("fc.wieght", Some("fc.weight")), ("head.scale", None)]
    );
    let message = WeightsError::StateDictMismatch(Box::new(report)).to_string();
    assert!(
        message.contains("unexpected: `fc.wieght` (did you mean `fc.weight`?)"),
        "{message}"
    );
}

#[test]
fn a_wrapper_prefix_is_suggested_away() {
    // nn.DataParallel saves `module.fc.weight`; the suggestion names the spec's tensor.
    let report = mismatch_after(|tensors| {
        let weight = tensors.remove("fc.weight").unwrap();
        tensors.insert("module.fc.weight".into(), weight);
    });
    assert_eq!(
        report.unexpected[0].did_you_mean.as_deref(),
        Some("fc.weight")
    );
}

#[test]
fn a_wrong_shape_reports_expected_and_found() {
    let report = mismatch_after(|tensors| {
        let (dtype, _, data) = tensors.remove("fc.weight").unwrap();
        tensors.insert("fc.weight".into(), (dtype, vec![4, 5], data));
    });
    let expected = ShapeMismatch {
        name: "fc.weight".into(),
        expected: vec![5, 4],
        found: vec![4, 5],
    };
    assert_eq!(report.shape_mismatches, [expected]);
    assert!(
        report.missing.is_empty(),
        "a mis-shaped tensor is not also missing"
    );
    let message = WeightsError::StateDictMismatch(Box::new(report)).to_string();
    assert!(
        message.contains("shape mismatch: `fc.weight`: expected [5, 4], found [4, 5]"),
        "{message}"
    );
}

#[test]
fn an_unsupported_dtype_and_all_other_problems_come_back_together() {
    let report = mismatch_after(|tensors| {
        tensors.insert("bn.weight".into(), (Dtype::I32, vec![8], vec![0; 32]));
        tensors.remove("up.bias");
        tensors.insert("fc.extra".into(), (Dtype::F32, vec![1], vec![0; 4]));
    });
    assert_eq!(
        report.unsupported_dtypes,
        [("bn.weight".to_string(), "I32".to_string())]
    );
    assert_eq!(report.missing, ["up.bias"]);
    assert_eq!(report.unexpected.len(), 1);
}

#[test]
fn a_damaged_file_is_an_error_not_a_panic() {
    let compilation = compile("tests/fixtures/weights/conv_bn.nn", &[]);
    let bytes = std::fs::read(fixture("conv_bn.safetensors")).unwrap();
    for cut in [0, 7, 8, 100, bytes.len() - 1] {
        let error = ParamStore::from_safetensors_bytes(&bytes[..cut], &compilation).unwrap_err();
        assert!(
            matches!(error, WeightsError::InvalidSafetensors { .. }),
            "{cut}: {error}"
        );
    }
    let error = ParamStore::load_safetensors(&fixture("no_such_file.safetensors"), &compilation)
        .unwrap_err();
    assert!(error.to_string().starts_with("cannot read `"), "{error}");
}

#[test]
fn saving_and_loading_round_trips_bit_for_bit_with_either_name_style() {
    for (compilation, stem) in fixture_networks() {
        let store = ParamStore::initialize(&compilation, 3);
        for style in [NameStyle::Nnc, NameStyle::PyTorch] {
            let path = std::env::temp_dir().join(format!(
                "nnc-weights-{}-{stem}-{style:?}.safetensors",
                std::process::id()
            ));
            store.save_safetensors(&path, style).unwrap();
            let loaded = ParamStore::load_safetensors(&path, &compilation);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            let loaded = loaded.unwrap_or_else(|error| panic!("{stem} {style:?}: {error}"));
            for (name, tensor) in store.iter() {
                assert_eq!(
                    bits(&loaded.get(name).unwrap().data),
                    bits(&tensor.data),
                    "{stem} {name}"
                );
            }
            assert_eq!(loaded, store);
            if style == NameStyle::PyTorch {
                // PyTorch's names: the key set of the torch fixture, batch norms' step
                // counters included.
                let torch =
                    read_raw(&std::fs::read(fixture(&format!("{stem}.safetensors"))).unwrap());
                let torch_names: Vec<&String> = torch.keys().collect();
                let saved = read_raw(&bytes);
                assert_eq!(saved.keys().collect::<Vec<_>>(), torch_names, "{stem}");
            }
        }
    }
}

#[test]
fn resnet18_loads_a_state_dict_with_num_batches_tracked() {
    let compilation = compile("specs/resnet18.nn", &[]);
    let entries = compilation.shapes.params.state_dict_entries();
    let mut tensors = RawTensors::new();
    for (index, (name, shape, _)) in entries.iter().enumerate() {
        let shape: Vec<usize> = shape.iter().map(|&size| size as usize).collect();
        let count: usize = shape.iter().product();
        // A distinct value per tensor, to see that each lands under its own name.
        let data = (index as f32).to_le_bytes().repeat(count);
        tensors.insert(name.clone(), (Dtype::F32, shape, data));
        if let Some(layer) = name.strip_suffix(".running_mean") {
            let counter = (Dtype::I64, vec![], 1000i64.to_le_bytes().to_vec());
            tensors.insert(format!("{layer}.num_batches_tracked"), counter);
        }
    }
    let counters = tensors
        .keys()
        .filter(|name| name.ends_with("num_batches_tracked"))
        .count();
    assert_eq!(counters, 20, "resnet18 has 20 batch norms");
    let store = ParamStore::from_safetensors_bytes(&write_raw(&tensors), &compilation).unwrap();
    assert_eq!(store.len(), entries.len());
    for (name, _, trainable) in &entries {
        assert_eq!(store.is_trainable(name), *trainable, "{name}");
    }
    for (index, (name, _, _)) in entries.iter().enumerate() {
        assert_eq!(store.get(name).unwrap().data[0], index as f32, "{name}");
    }
    // The counters are kept, and saved back as they came.
    let kept = store.batch_counters();
    assert_eq!(kept.len(), 20);
    assert!(kept.iter().all(|(_, count)| *count == 1000), "{kept:?}");
    let saved = read_raw(&store.to_safetensors_bytes(NameStyle::PyTorch).unwrap());
    assert_eq!(
        saved["layer4.1.bn2.num_batches_tracked"],
        tensors["layer4.1.bn2.num_batches_tracked"]
    );
}

#[test]
fn npy_inputs_and_outputs_read_as_numpy_wrote_them() {
    let input = npy::read_npy(&fixture("conv_bn_input.npy")).unwrap();
    assert_eq!(input.shape(), [2, 3, 8, 8]);
    assert!(matches!(input, NpyArray::Float32(_)));
    let tokens = npy::read_npy(&fixture("sequence_input.npy"))
        .unwrap()
        .into_i64()
        .unwrap();
    assert_eq!(tokens.shape, [2, 5]);
    assert!(tokens.data.iter().all(|&token| (0..20).contains(&token)));
    // The script's contents: arange(6).reshape(2, 3) * 0.5 - 1.
    let expected = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5];
    let values = npy::read_npy(&fixture("values_f64.npy")).unwrap();
    assert!(matches!(values, NpyArray::Float64(_)));
    assert_eq!(values.clone().into_f64().unwrap().data, expected);
    assert_eq!(
        values.into_f32().unwrap(),
        Tensor::from_vec(&[2, 3], expected.map(|v| v as f32).to_vec()).unwrap()
    );
    let big_endian = npy::read_npy(&fixture("values_big_endian.npy"))
        .unwrap()
        .into_f32()
        .unwrap();
    assert_eq!(big_endian.data, expected.map(|v| v as f32));
    let ints = npy::read_npy(&fixture("tokens_int32.npy")).unwrap();
    assert_eq!(ints.clone().into_i64().unwrap().data, [1, 2, 3, 4, 5, 19]);
    assert_eq!(
        ints.into_f32().unwrap().data,
        [1.0, 2.0, 3.0, 4.0, 5.0, 19.0]
    );
    let scalar = npy::read_npy(&fixture("scalar.npy"))
        .unwrap()
        .into_f32()
        .unwrap();
    assert_eq!(
        (scalar.shape.len(), scalar.data.as_slice()),
        (0, [2.5f32].as_slice())
    );
}

#[test]
fn npy_errors_name_the_problem() {
    let error = npy::read_npy(&fixture("values_fortran.npy")).unwrap_err();
    assert!(
        matches!(error, WeightsError::NpyFortranOrder { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("Fortran"), "{error}");
    let not_integer = npy::read_npy(&fixture("values_f64.npy"))
        .unwrap()
        .into_i64()
        .unwrap_err();
    assert!(
        not_integer
            .to_string()
            .contains("element 1 (-0.5) cannot be converted exactly to i64"),
        "{not_integer}"
    );
    let bytes = std::fs::read(fixture("conv_bn_input.npy")).unwrap();
    for cut in [0, 6, 9, 60, bytes.len() - 1] {
        let error = npy::parse_npy(&bytes[..cut], "cut").unwrap_err();
        assert!(
            matches!(error, WeightsError::InvalidNpy { .. }),
            "{cut}: {error}"
        );
    }
    let mut unsupported = bytes.clone();
    let at = unsupported
        .windows(3)
        .position(|window| window == b"<f4")
        .unwrap();
    unsupported[at..at + 3].copy_from_slice(b"<c8");
    let error = npy::parse_npy(&unsupported, "complex").unwrap_err();
    assert_eq!(
        error.to_string(),
        "complex has dtype `<c8`; nnc reads float32, float64, int32 and int64 arrays"
    );
    // A crafted header whose dims multiply past 64 bits is an error, not a panic.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }\n";
    let mut huge = b"\x93NUMPY\x01\x00".to_vec();
    huge.extend_from_slice(&(header.len() as u16).to_le_bytes());
    huge.extend_from_slice(header.as_bytes());
    let error = npy::parse_npy(&huge, "huge").unwrap_err();
    assert!(
        error.to_string().contains("more than 2^48 elements"),
        "{error}"
    );
}

#[test]
fn npy_writing_round_trips_and_numpy_outputs_read_back() {
    let output = npy::read_npy(&fixture("conv_bn_output.npy"))
        .unwrap()
        .into_f32()
        .unwrap();
    assert_eq!(output.shape, [2, 5]);
    // Byte for byte what numpy.save wrote: the same header, padding and data.
    let written = npy::npy_bytes(&output).unwrap();
    assert_eq!(
        written,
        std::fs::read(fixture("conv_bn_output.npy")).unwrap()
    );
    assert_eq!(
        npy::parse_npy(&written, "written")
            .unwrap()
            .into_f32()
            .unwrap(),
        output
    );
    let tokens = Tensor::from_vec(&[3], vec![0i64, -1, 1 << 40]).unwrap();
    let written = npy::npy_bytes_i64(&tokens).unwrap();
    assert_eq!(
        npy::parse_npy(&written, "tokens").unwrap(),
        NpyArray::Int64(tokens)
    );
    let scalar = Tensor::from_vec(&[], vec![2.5f32]).unwrap();
    let written = npy::npy_bytes(&scalar).unwrap();
    assert_eq!(
        npy::parse_npy(&written, "scalar").unwrap(),
        NpyArray::Float32(scalar)
    );
}
