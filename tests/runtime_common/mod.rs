//! Shared by the tests that run hand-built primitive graphs on the f32 runtime and compare them
//! with the f64 reference interpreter (`runtime_primitives.rs`, `runtime_layout_scan.rs`,
//! `runtime_edge_cases.rs`, `runtime_errors.rs`).
//!
//! A [`Case`] is a small [`PrimGraph`] (usually one op over inputs and parameters) with random
//! f32 operand values. [`check`] runs it through the interpreter (in f64, from the same f32
//! numbers) and through [`Executable`] at 1 and 2 threads; every output must be within
//! [`TOLERANCE`] of the interpreter's by `max |runtime - interpreter| / max |interpreter|` (NaN
//! where the interpreter has NaN counts as equal), and the runs at 1 and 2 threads must agree bit
//! for bit. Parameters are bound through a real [`ParamStore`]: the store of a generated spec
//! whose layers have parameters of the wanted shapes, filled through `get_mut`.

use std::collections::BTreeMap;

use nnc::elaborate::ElaborateOptions;
use nnc::ir::{ElementType, InstancePath};
use nnc::prim::*;
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use nnc::weights::ParamStore;

pub const TOLERANCE: f64 = 1e-4;

/// SplitMix64: a seeded stream of numbers, independent of any crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An integer in `low..=high`.
    pub fn int(&mut self, low: usize, high: usize) -> usize {
        low + (self.next_u64() % (high - low + 1) as u64) as usize
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    /// An f32 in `[low, high)`.
    pub fn float(&mut self, low: f64, high: f64) -> f32 {
        (low + (high - low) * self.unit()) as f32
    }

    /// A shape of `rank` dims, each in `1..=largest`.
    pub fn shape(&mut self, rank: usize, largest: usize) -> Vec<usize> {
        (0..rank).map(|_| self.int(1, largest)).collect()
    }

    /// A shape of a random rank in `low_rank..=high_rank`, each dim in `1..=largest`.
    pub fn any_shape(&mut self, low_rank: usize, high_rank: usize, largest: usize) -> Vec<usize> {
        let rank = self.int(low_rank, high_rank);
        self.shape(rank, largest)
    }

    /// `count` values in `[low, high)`.
    pub fn values(&mut self, count: usize, low: f64, high: f64) -> Vec<f32> {
        (0..count).map(|_| self.float(low, high)).collect()
    }
}

pub fn origin() -> Origin {
    Origin {
        path: InstancePath(vec!["case".into()]),
        span: nnc::syntax::Span::new(nnc::syntax::SourceId::Spec, 0, 0),
    }
}

/// A graph under test with the values of its inputs and parameters.
pub struct Case {
    pub label: String,
    pub graph: PrimGraph,
    pub inputs: Vec<Tensor<f32>>,
    pub params: Vec<(String, Tensor<f32>)>,
}

impl Case {
    pub fn new(label: impl Into<String>) -> Case {
        Case {
            label: label.into(),
            graph: PrimGraph::default(),
            inputs: Vec::new(),
            params: Vec::new(),
        }
    }

    /// A float input of `shape` with values in `[-1, 1)`.
    pub fn input(&mut self, rng: &mut Rng, shape: &[usize]) -> PrimNodeId {
        let data = rng.values(shape.iter().product(), -1.0, 1.0);
        self.input_values(Tensor::from_vec(shape, data).unwrap(), ElementType::Float32)
    }

    pub fn input_values(&mut self, values: Tensor<f32>, element_type: ElementType) -> PrimNodeId {
        let name = format!("x{}", self.inputs.len());
        let ty = TensorType {
            shape: values.shape.clone(),
            element_type,
        };
        self.inputs.push(values);
        self.graph.add_input(&name, ty, origin())
    }

    /// A parameter of `shape` (rank 1, 2 or 4: see [`param_store`]) with values in `[-1, 1)`.
    pub fn parameter(&mut self, rng: &mut Rng, shape: &[usize]) -> PrimNodeId {
        let data = rng.values(shape.iter().product(), -1.0, 1.0);
        self.parameter_values(Tensor::from_vec(shape, data).unwrap())
    }

    pub fn parameter_values(&mut self, values: Tensor<f32>) -> PrimNodeId {
        let suffix = if values.shape.len() == 1 {
            "bias"
        } else {
            "weight"
        };
        let name = format!("p{}.{suffix}", self.params.len());
        let op = PrimOp::Parameter {
            name: name.clone(),
            shape: values.shape.clone(),
        };
        self.params.push((name, values));
        self.add(op, &[])
    }

    /// Either an input or a parameter of `shape`, at random (parameters only where the shape's
    /// rank allows one).
    pub fn operand(&mut self, rng: &mut Rng, shape: &[usize]) -> PrimNodeId {
        if [1, 2, 4].contains(&shape.len()) && rng.int(0, 3) == 0 {
            self.parameter(rng, shape)
        } else {
            self.input(rng, shape)
        }
    }

    /// Adds a node; the case's shapes are chosen to satisfy the rule, so failing it is a bug in
    /// the test.
    pub fn add(&mut self, op: PrimOp, operands: &[PrimNodeId]) -> PrimNodeId {
        let label = &self.label;
        self.graph
            .add(op, operands, origin())
            .unwrap_or_else(|error| panic!("{label}: {error}"))
    }

    pub fn output(&mut self, id: PrimNodeId) {
        let name = format!("y{}", self.graph.outputs.len());
        self.graph.outputs.push((name, id));
    }

    /// Adds the op and makes it the graph's output.
    pub fn finish(mut self, op: PrimOp, operands: &[PrimNodeId]) -> Case {
        let id = self.add(op, operands);
        self.output(id);
        self
    }
}

/// A store holding `params` (names `pK.bias` of rank 1, `pK.weight` of rank 2 or 4), made the way
/// a user binds values: the zeros of a compiled spec with such layers, filled via `get_mut`.
pub fn param_store(params: &[(String, Tensor<f32>)]) -> ParamStore {
    let mut spec =
        String::from("input unused_in: [N, 1]\noutput unused = unused_in -> dense(1) as unused\n");
    for (index, (name, tensor)) in params.iter().enumerate() {
        let layer = name.split('.').next().unwrap();
        let (input, apply) = match tensor.shape.as_slice() {
            [size] => ("[N, 1]".to_string(), format!("dense({size})")),
            [rows, columns] => (
                "[N, 1] int".to_string(),
                format!("embedding({rows}, {columns})"),
            ),
            [outputs, channels, kh, kw] => (
                format!("[N, {channels}, {kh}, {kw}]"),
                format!("conv2d({outputs}, [{kh}, {kw}], bias = false)"),
            ),
            shape => panic!("no layer has a parameter of shape {shape:?}"),
        };
        spec += &format!(
            "input in{index}: {input}\noutput out{index} = in{index} -> {apply} as {layer}\n"
        );
    }
    let compilation =
        nnc::compile(&spec, &ElaborateOptions::default()).unwrap_or_else(|diagnostics| {
            panic!(
                "{}",
                nnc::render_diagnostics(&diagnostics, "params.nn", &spec)
            )
        });
    let mut store = ParamStore::zeros(&compilation);
    for (name, tensor) in params {
        let slot = store
            .get_mut(name)
            .unwrap_or_else(|| panic!("no `{name}` in the store"));
        assert_eq!(slot.shape, tensor.shape, "`{name}`");
        *slot = tensor.clone();
    }
    store
}

/// `max |ours - reference| / max |reference|`; positions where the reference is NaN must be NaN
/// in ours too.
pub fn relative_error(ours: &[f32], reference: &[f64]) -> f64 {
    let scale = reference
        .iter()
        .filter(|value| value.is_finite())
        .fold(0.0f64, |max, value| max.max(value.abs()));
    let mut deviation = 0.0f64;
    for (a, b) in ours.iter().zip(reference) {
        let a = f64::from(*a);
        let difference = if b.is_nan() || a.is_nan() {
            if a.is_nan() && b.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else if a == *b {
            0.0
        } else {
            (a - b).abs()
        };
        deviation = deviation.max(difference);
    }
    deviation / scale.max(f64::MIN_POSITIVE)
}

/// Interpreter vs runtime at 1 and 2 threads; `Err` describes the first problem.
pub fn check(case: &Case) -> Result<(), String> {
    let inputs: Vec<Tensor<f64>> = case.inputs.iter().map(Tensor::to_f64).collect();
    let params: BTreeMap<String, Tensor<f64>> = case
        .params
        .iter()
        .map(|(name, tensor)| (name.clone(), tensor.to_f64()))
        .collect();
    let reference = nnc::interpret::interpret(&case.graph, &inputs, &params)
        .map_err(|error| format!("interpreter: {error}"))?;
    let store = param_store(&case.params);
    let mut runs: Vec<Vec<Tensor<f32>>> = Vec::new();
    for threads in [1, 2] {
        let executable = Executable::new(case.graph.clone(), threads)
            .map_err(|error| format!("compiling at {threads} threads: {error}"))?;
        let outputs = executable
            .run(&store, &case.inputs)
            .map_err(|error| format!("running at {threads} threads: {error}"))?;
        if outputs.len() != reference.len() {
            return Err(format!(
                "{} outputs, the interpreter gives {}",
                outputs.len(),
                reference.len()
            ));
        }
        for (position, (output, expected)) in outputs.iter().zip(&reference).enumerate() {
            if output.shape != expected.shape || output.data.len() != expected.data.len() {
                return Err(format!(
                    "output {position} has shape {:?}, expected {:?}",
                    output.shape, expected.shape
                ));
            }
            let error = relative_error(&output.data, &expected.data);
            if error.is_nan() || error > TOLERANCE {
                return Err(format!(
                    "output {position} at {threads} threads: relative error {error:.2e}"
                ));
            }
        }
        runs.push(outputs);
    }
    let bits = |run: &Vec<Tensor<f32>>| -> Vec<Vec<u32>> {
        run.iter()
            .map(|tensor| tensor.data.iter().map(|value| value.to_bits()).collect())
            .collect()
    };
    if bits(&runs[0]) != bits(&runs[1]) {
        return Err("1 and 2 threads differ bit for bit".into());
    }
    Ok(())
}

/// Builds `count` cases with `make(rng, index)` from a fixed seed, checks each, and fails listing
/// every case that does not match. `NNC_TEST_VERBOSE=1` prints every case.
pub fn check_cases(
    family: &str,
    count: usize,
    seed: u64,
    mut make: impl FnMut(&mut Rng, usize) -> Case,
) {
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    for index in 0..count {
        let case = make(&mut rng, index);
        if std::env::var_os("NNC_TEST_VERBOSE").is_some() {
            println!("{family} #{index} {}", case.label);
        }
        if let Err(message) = check(&case) {
            failures.push(format!("{family} #{index} {}: {message}", case.label));
        }
    }
    println!("{family}: {count} cases, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {count} {family} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs a case whose one output is exact (integer indices) at 1 and 2 threads and asserts it
/// equals the reference interpreter's output element for element.
pub fn assert_exactly_like_the_interpreter(case: &Case) {
    let inputs: Vec<Tensor<f64>> = case.inputs.iter().map(Tensor::to_f64).collect();
    let expected = nnc::interpret::interpret(&case.graph, &inputs, &Default::default())
        .unwrap_or_else(|error| panic!("{}: {error}", case.label));
    for threads in [1, 2] {
        let executable = Executable::new(case.graph.clone(), threads).unwrap();
        let outputs = executable
            .run(&param_store(&[]), &case.inputs)
            .unwrap_or_else(|error| panic!("{}: {error}", case.label));
        let ours: Vec<f64> = outputs[0]
            .data
            .iter()
            .map(|&value| f64::from(value))
            .collect();
        assert_eq!(
            ours, expected[0].data,
            "{} at {threads} threads",
            case.label
        );
    }
}
