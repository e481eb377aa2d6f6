//! The f32 runtime (kernels, memory plan) against the f64 reference interpreter on every spec in
//! specs/, at reduced sizes, with the same PyTorch-default random weights and random inputs, at
//! 1 and 2 threads. The error is `max |runtime - interpreter| / max |interpreter|` per output.
//! Results must also be bit-identical for 1 and 2 threads.

use std::collections::BTreeMap;

use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::lower::{lower, SymbolValues};
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

const TOLERANCE: f64 = 1e-4;

struct Case {
    spec: &'static str,
    set: &'static [(&'static str, i64)],
    input_shapes: &'static [(&'static str, &'static [u64])],
    batch: usize,
    sequence: usize,
}

const CASES: &[Case] = &[
    Case {
        spec: "mlp",
        set: &[],
        input_shapes: &[],
        batch: 3,
        sequence: 0,
    },
    Case {
        spec: "lenet5",
        set: &[],
        input_shapes: &[],
        batch: 2,
        sequence: 0,
    },
    Case {
        spec: "resnet18",
        set: &[("classes", 10)],
        input_shapes: &[("image", &[3, 32, 32])],
        batch: 2,
        sequence: 0,
    },
    Case {
        spec: "resnet50",
        set: &[("classes", 10)],
        input_shapes: &[("image", &[3, 32, 32])],
        batch: 1,
        sequence: 0,
    },
    Case {
        spec: "vgg16",
        set: &[("classes", 10), ("hidden", 64)],
        input_shapes: &[("image", &[3, 32, 32])],
        batch: 1,
        sequence: 0,
    },
    Case {
        spec: "alexnet",
        set: &[("classes", 10), ("hidden", 64)],
        input_shapes: &[("image", &[3, 64, 64])],
        batch: 1,
        sequence: 0,
    },
    Case {
        spec: "googlenet",
        set: &[("classes", 10)],
        input_shapes: &[("image", &[3, 64, 64])],
        batch: 1,
        sequence: 0,
    },
    Case {
        spec: "densenet121",
        set: &[("classes", 10)],
        input_shapes: &[("image", &[3, 32, 32])],
        batch: 1,
        sequence: 0,
    },
    Case {
        spec: "fcn",
        set: &[("classes", 5)],
        // The loss's per-pixel label follows the image's size.
        input_shapes: &[("image", &[3, 64, 64]), ("label", &[64, 64])],
        batch: 1,
        sequence: 0,
    },
    Case {
        spec: "yolov1",
        set: &[("hidden", 32)],
        input_shapes: &[("image", &[3, 64, 64])],
        batch: 1,
        sequence: 0,
    },
    Case {
        spec: "dcgan_generator",
        set: &[("nz", 16), ("ngf", 8)],
        input_shapes: &[],
        batch: 2,
        sequence: 0,
    },
    Case {
        spec: "vae",
        set: &[],
        input_shapes: &[],
        batch: 2,
        sequence: 0,
    },
    Case {
        spec: "gaussian_regression",
        set: &[],
        input_shapes: &[],
        batch: 3,
        sequence: 0,
    },
    Case {
        spec: "siamese",
        set: &[],
        input_shapes: &[],
        batch: 2,
        sequence: 0,
    },
    Case {
        spec: "lstm_classifier",
        set: &[("vocab", 50), ("hidden", 16), ("embed", 8)],
        input_shapes: &[],
        batch: 2,
        sequence: 5,
    },
    Case {
        spec: "gru_classifier",
        set: &[("vocab", 50), ("hidden", 16), ("embed", 8)],
        input_shapes: &[],
        batch: 2,
        sequence: 5,
    },
    Case {
        spec: "char_rnn",
        set: &[("hidden", 16), ("embed", 8)],
        input_shapes: &[],
        batch: 2,
        sequence: 6,
    },
    Case {
        spec: "custom_cell",
        set: &[("vocab", 50), ("hidden", 16), ("embed", 8)],
        input_shapes: &[],
        batch: 2,
        sequence: 5,
    },
    Case {
        spec: "transformer",
        set: &[
            ("vocab", 50),
            ("max_len", 16),
            ("d_model", 32),
            ("heads", 4),
            ("ff", 64),
            ("layers", 2),
        ],
        input_shapes: &[],
        batch: 2,
        sequence: 7,
    },
];

/// A deterministic stream of numbers in [0, 1) (SplitMix64), independent of any crate.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn relative_error(ours: &[f32], reference: &[f64]) -> f64 {
    let scale = reference
        .iter()
        .fold(0.0f64, |max, value| max.max(value.abs()))
        .max(1e-30);
    let deviation = ours
        .iter()
        .zip(reference)
        .fold(0.0f64, |max, (a, b)| max.max((*a as f64 - b).abs()));
    deviation / scale
}

fn check(case: &Case) {
    let path = format!("{}/specs/{}.nn", env!("CARGO_MANIFEST_DIR"), case.spec);
    let text = std::fs::read_to_string(&path).expect("spec readable");
    let options = ElaborateOptions {
        param_overrides: case
            .set
            .iter()
            .map(|(name, value)| (name.to_string(), OverrideValue::Int(*value)))
            .collect(),
        input_shape_overrides: case
            .input_shapes
            .iter()
            .map(|(name, dims)| (name.to_string(), dims.to_vec()))
            .collect(),
    };
    let compilation = nnc::compile(&text, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, &path, &text))
    });
    let mut symbols = SymbolValues::report_values(&compilation.network).with("N", case.batch);
    if case.sequence > 0 {
        symbols.set("T", case.sequence);
    }
    let graph =
        lower(&compilation, &symbols).unwrap_or_else(|error| panic!("{}: {error}", case.spec));
    let params = ParamStore::initialize(&compilation, 7);
    let params_f64: BTreeMap<String, Tensor<f64>> = params
        .iter()
        .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
        .collect();
    let mut numbers = Numbers(11);
    let inputs: Vec<Tensor<f32>> = graph
        .inputs
        .iter()
        .map(|(_, id)| {
            let ty = &graph.node(*id).ty;
            let data = (0..ty.element_count())
                .map(|_| match ty.element_type {
                    // Token ids: every spec's tables have at least this many rows at these sizes.
                    nnc::ir::ElementType::Int64 => (numbers.next() * 16.0).floor() as f32,
                    nnc::ir::ElementType::Float32 => (numbers.next() * 2.0 - 1.0) as f32,
                })
                .collect();
            Tensor {
                shape: ty.shape.clone(),
                data,
            }
        })
        .collect();
    let inputs_f64: Vec<Tensor<f64>> = inputs.iter().map(Tensor::to_f64).collect();
    let reference = nnc::interpret::interpret(&graph, &inputs_f64, &params_f64)
        .unwrap_or_else(|error| panic!("{}: {error}", case.spec));
    let mut results = Vec::new();
    for threads in [1, 2] {
        let executable = Executable::new(graph.clone(), threads).expect("compiles");
        let outputs = executable
            .run(&params, &inputs)
            .unwrap_or_else(|error| panic!("{} at {threads} threads: {error}", case.spec));
        for ((output, expected), (name, _)) in outputs.iter().zip(&reference).zip(&graph.outputs) {
            assert_eq!(output.shape, expected.shape);
            let error = relative_error(&output.data, &expected.data);
            assert!(
                error <= TOLERANCE,
                "{} output `{name}` at {threads} threads: relative error {error:e}",
                case.spec
            );
        }
        results.push(outputs);
    }
    assert_eq!(
        results[0], results[1],
        "{}: 1 and 2 threads differ",
        case.spec
    );
}

#[test]
fn every_spec_runtime_matches_the_interpreter() {
    let listed: Vec<&str> = CASES.iter().map(|case| case.spec).collect();
    for entry in
        std::fs::read_dir(format!("{}/specs", env!("CARGO_MANIFEST_DIR"))).expect("specs dir")
    {
        let name = entry
            .expect("entry")
            .path()
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        assert!(
            listed.contains(&name.as_str()),
            "specs/{name}.nn has no runtime test case"
        );
    }
    for case in CASES {
        check(case);
    }
}
