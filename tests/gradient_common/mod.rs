//! Shared by the tests of gradient graphs (`gradient_simplify.rs`, `gradient_snapshots.rs`,
//! `gradient_memory.rs`): every spec in specs/ at reduced sizes (batch 2, small images,
//! vocabularies, widths and sequences), lowered in training mode with its loss and
//! differentiated, plus seeded inputs and parameters for running the result.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use nnc::autodiff::{training_gradient, TrainingGraph, TrainingGraphError};
use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::ir::ElementType;
use nnc::lower::SymbolValues;
use nnc::prim::PrimGraph;
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

/// The reduced sizes of one spec.
pub struct Case {
    pub spec: &'static str,
    pub set: &'static [(&'static str, i64)],
    pub input_shapes: &'static [(&'static str, &'static [u64])],
    pub sequence: usize,
}

pub const BATCH: usize = 2;

const fn case(
    spec: &'static str,
    set: &'static [(&'static str, i64)],
    input_shapes: &'static [(&'static str, &'static [u64])],
    sequence: usize,
) -> Case {
    Case {
        spec,
        set,
        input_shapes,
        sequence,
    }
}

const SMALL_IMAGE: &[(&str, &[u64])] = &[("image", &[3, 32, 32])];
const MEDIUM_IMAGE: &[(&str, &[u64])] = &[("image", &[3, 64, 64])];
const TEXT: &[(&str, i64)] = &[("vocab", 50), ("hidden", 16), ("embed", 8)];

pub const CASES: &[Case] = &[
    case("mlp", &[("hidden", 32)], &[], 0),
    case("gaussian_regression", &[("hidden", 16)], &[], 0),
    case("lenet5", &[], &[], 0),
    case("resnet18", &[("classes", 10)], SMALL_IMAGE, 0),
    case("resnet50", &[("classes", 10)], SMALL_IMAGE, 0),
    case("vgg16", &[("classes", 10), ("hidden", 64)], SMALL_IMAGE, 0),
    case(
        "alexnet",
        &[("classes", 10), ("hidden", 64)],
        MEDIUM_IMAGE,
        0,
    ),
    case("googlenet", &[("classes", 10)], MEDIUM_IMAGE, 0),
    case("densenet121", &[("classes", 10)], SMALL_IMAGE, 0),
    case(
        "fcn",
        &[("classes", 5)],
        &[("image", &[3, 64, 64]), ("label", &[64, 64])],
        0,
    ),
    case("yolov1", &[("hidden", 32)], MEDIUM_IMAGE, 0),
    case("dcgan_generator", &[("nz", 16), ("ngf", 8)], &[], 0),
    case("vae", &[("hidden", 32), ("latent", 4)], &[], 0),
    case("siamese", &[("embed", 16)], &[], 0),
    case("lstm_classifier", TEXT, &[], 5),
    case("gru_classifier", TEXT, &[], 5),
    case("char_rnn", &[("hidden", 16), ("embed", 8)], &[], 6),
    case("custom_cell", TEXT, &[], 5),
    case(
        "transformer",
        &[
            ("vocab", 50),
            ("max_len", 16),
            ("d_model", 32),
            ("heads", 4),
            ("ff", 64),
            ("layers", 2),
        ],
        &[],
        7,
    ),
];

/// The case of `specs/<stem>.nn`; a spec without one fails with a message saying what to add.
pub fn case_of(path: &Path) -> &'static Case {
    let stem = path.file_stem().expect("a spec file").to_string_lossy();
    CASES
        .iter()
        .find(|case| case.spec == stem)
        .unwrap_or_else(|| panic!("specs/{stem}.nn has no reduced-size case in gradient_common"))
}

pub fn spec_path(case: &Case) -> String {
    format!("{}/specs/{}.nn", env!("CARGO_MANIFEST_DIR"), case.spec)
}

pub fn compile(case: &Case) -> nnc::Compilation {
    let path = spec_path(case);
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
    nnc::compile(&text, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, &path, &text))
    })
}

pub fn symbols(case: &Case, compilation: &nnc::Compilation) -> SymbolValues {
    let mut symbols = SymbolValues::report_values(&compilation.network).with("N", BATCH);
    if case.sequence > 0 {
        symbols.set("T", case.sequence);
    }
    symbols
}

/// The spec's simplified gradient graph at reduced sizes, or `None` if it declares no loss.
pub fn gradient(case: &Case) -> Option<(nnc::Compilation, TrainingGraph)> {
    let compilation = compile(case);
    let symbols = symbols(case, &compilation);
    match training_gradient(&compilation, &symbols) {
        Ok(training) => Some((compilation, training)),
        Err(TrainingGraphError::NoLoss) => None,
        Err(error) => panic!("{}: {error}", case.spec),
    }
}

/// SplitMix64: a seeded stream of numbers, independent of any crate.
pub struct Numbers(pub u64);

impl Numbers {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Seeded inputs for `graph`: floats in `[-1, 1)` (f32 numbers), ids 0 or 1 (every table and
/// class count of the reduced specs has at least two rows).
pub fn inputs(graph: &PrimGraph, seed: u64) -> Vec<Tensor<f64>> {
    let mut numbers = Numbers(seed);
    graph
        .inputs
        .iter()
        .map(|(_, id)| {
            let ty = &graph.node(*id).ty;
            let data = (0..ty.element_count())
                .map(|_| match ty.element_type {
                    ElementType::Int64 => (numbers.next() * 2.0).floor(),
                    ElementType::Float32 => (numbers.next() * 2.0 - 1.0) as f32 as f64,
                })
                .collect();
            Tensor::from_vec(&ty.shape, data).expect("sizes match")
        })
        .collect()
}

/// PyTorch-default initial parameters (and buffers) of the spec, in f64.
pub fn parameters(compilation: &nnc::Compilation, seed: u64) -> BTreeMap<String, Tensor<f64>> {
    ParamStore::initialize(compilation, seed)
        .iter()
        .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
        .collect()
}
