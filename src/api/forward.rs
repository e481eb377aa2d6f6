//! One specialization of a model's forward pass, and the checks every input passes before the
//! runtime sees it: the count, the exact shape (or length, for slices), NaN when asked, and for
//! id inputs whole numbers within the table they index.

use std::collections::BTreeMap;
use std::time::Duration;

use super::signature::{check_count, InputSignature, SignatureDim};
use super::ApiError;
use crate::ir::ElementType;
use crate::lower::SymbolValues;
use crate::prim::{PrimGraph, PrimOp};
use crate::runtime::Executable;
use crate::tensor::Tensor;
use crate::weights::ParamStore;

/// The forward pass compiled for concrete sizes of the symbolic dims.
pub struct Forward {
    executable: Executable,
    symbols: SymbolValues,
    inputs: Vec<InputSlot>,
    output_names: Vec<String>,
    check_nan: bool,
    compile_time: Duration,
}

/// One input of the compiled graph.
struct InputSlot {
    name: String,
    shape: Vec<usize>,
    integer: bool,
    /// For an id input that indexes tables directly: the fewest rows among those tables.
    id_limit: Option<usize>,
}

/// The outputs of one run, in the spec's output order, readable by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    names: Vec<String>,
    tensors: Vec<Tensor<f32>>,
}

impl Forward {
    pub(crate) fn new(
        executable: Executable,
        symbols: SymbolValues,
        id_limits: BTreeMap<String, usize>,
        check_nan: bool,
        compile_time: Duration,
    ) -> Forward {
        let graph = executable.graph();
        let inputs = graph
            .inputs
            .iter()
            .map(|(name, id)| {
                let ty = &graph.node(*id).ty;
                InputSlot {
                    name: name.clone(),
                    shape: ty.shape.clone(),
                    integer: ty.element_type == ElementType::Int64,
                    id_limit: id_limits.get(name).copied(),
                }
            })
            .collect();
        let output_names = graph.outputs.iter().map(|(name, _)| name.clone()).collect();
        Forward {
            executable,
            symbols,
            inputs,
            output_names,
            check_nan,
            compile_time,
        }
    }

    /// Runs on flat row-major slices, one per input in the network's input order; each must
    /// have exactly the element count of its compiled shape. The slices are copied once.
    pub fn run(&self, params: &ParamStore, inputs: &[&[f32]]) -> Result<Outputs, ApiError> {
        check_count(&self.signatures(), inputs.len())?;
        let mut tensors = Vec::with_capacity(inputs.len());
        for (slot, data) in self.inputs.iter().zip(inputs) {
            let expected: usize = slot.shape.iter().product();
            if data.len() != expected {
                return Err(ApiError::InputLength {
                    name: slot.name.clone(),
                    shape: slot.shape.clone(),
                    expected,
                    found: data.len(),
                });
            }
            tensors.push(Tensor {
                shape: slot.shape.clone(),
                data: data.to_vec(),
            });
        }
        self.run_tensors(params, &tensors)
    }

    /// Runs on tensors whose shapes must equal the compiled input shapes.
    pub fn run_tensors(
        &self,
        params: &ParamStore,
        inputs: &[Tensor<f32>],
    ) -> Result<Outputs, ApiError> {
        check_count(&self.signatures(), inputs.len())?;
        for (slot, input) in self.inputs.iter().zip(inputs) {
            self.check_input(slot, input)?;
        }
        let tensors = self.executable.run(params, inputs)?;
        Ok(Outputs {
            names: self.output_names.clone(),
            tensors,
        })
    }

    /// Binds parameters once (folding what depends only on them, such as batch norm into
    /// convolution weights), for repeated runs that skip re-checking them.
    pub fn bind<'a>(&'a self, params: &'a ParamStore) -> Result<BoundForward<'a>, ApiError> {
        Ok(BoundForward {
            forward: self,
            bound: self.executable.bind(params)?,
        })
    }

    /// Deterministic inputs for benchmarks and smoke tests: floats uniform in [-1, 1), ids
    /// uniform below the rows of the tables they index (0 when unknown).
    pub fn random_inputs(&self, seed: u64) -> Vec<Tensor<f32>> {
        let mut state = seed ^ 0x6E6E_635F_696E_7075;
        let mut next_unit = move || {
            // SplitMix64: 53 random bits as a number in [0, 1).
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut tensors = Vec::with_capacity(self.inputs.len());
        for slot in &self.inputs {
            let count: usize = slot.shape.iter().product();
            let data = if slot.integer {
                // Ids stay below 2^24, where every integer is an f32.
                let limit = slot.id_limit.unwrap_or(1).clamp(1, 1 << 24) as f64;
                (0..count)
                    .map(|_| (next_unit() * limit).floor() as f32)
                    .collect()
            } else {
                (0..count)
                    .map(|_| (2.0 * next_unit() - 1.0) as f32)
                    .collect()
            };
            tensors.push(Tensor {
                shape: slot.shape.clone(),
                data,
            });
        }
        tensors
    }

    /// The symbol values this pass was compiled for.
    pub fn symbols(&self) -> &SymbolValues {
        &self.symbols
    }

    /// `(name, shape)` of every input, in the order `run` takes them.
    pub fn input_shapes(&self) -> Vec<(&str, &[usize])> {
        let slots = self.inputs.iter();
        slots
            .map(|slot| (slot.name.as_str(), slot.shape.as_slice()))
            .collect()
    }

    pub fn output_names(&self) -> Vec<&str> {
        self.output_names.iter().map(String::as_str).collect()
    }

    /// Lowering plus the runtime's compilation (planning, constants, generated code).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Bytes of the working memory of one run: the planned peak of the top-level arena.
    pub fn planned_arena_bytes(&self) -> u64 {
        self.executable.planned_arena_floats() as u64 * 4
    }

    pub fn executable(&self) -> &Executable {
        &self.executable
    }

    /// The inputs as signatures with concrete dims (for messages).
    fn signatures(&self) -> Vec<InputSignature> {
        let slots = self.inputs.iter();
        slots
            .map(|slot| InputSignature {
                name: slot.name.clone(),
                dims: slot
                    .shape
                    .iter()
                    .map(|size| SignatureDim::Fixed(*size))
                    .collect(),
                integer: slot.integer,
            })
            .collect()
    }

    fn check_input(&self, slot: &InputSlot, input: &Tensor<f32>) -> Result<(), ApiError> {
        if input.shape != slot.shape {
            return Err(ApiError::InputShape {
                name: slot.name.clone(),
                expected: format!("{:?}", slot.shape),
                found: input.shape.clone(),
            });
        }
        let expected: usize = slot.shape.iter().product();
        if input.data.len() != expected {
            return Err(ApiError::InputLength {
                name: slot.name.clone(),
                shape: slot.shape.clone(),
                expected,
                found: input.data.len(),
            });
        }
        if self.check_nan {
            if let Some(index) = input.data.iter().position(|value| value.is_nan()) {
                return Err(ApiError::NanInput {
                    name: slot.name.clone(),
                    index,
                    shape: slot.shape.clone(),
                });
            }
        }
        if slot.integer {
            check_ids(slot, &input.data)?;
        }
        Ok(())
    }
}

/// Ids are whole numbers, and below the rows of every table they index directly.
fn check_ids(slot: &InputSlot, data: &[f32]) -> Result<(), ApiError> {
    let whole = |value: f32| value.is_finite() && value.fract() == 0.0;
    if let Some(index) = data.iter().position(|value| !whole(*value)) {
        return Err(ApiError::NotAnInteger {
            name: slot.name.clone(),
            index,
            value: data[index],
        });
    }
    let rows = slot.id_limit.unwrap_or(usize::MAX);
    let outside = |value: f32| value < 0.0 || value as usize >= rows;
    match data.iter().position(|value| outside(*value)) {
        None => Ok(()),
        Some(index) => Err(ApiError::IdOutOfRange {
            name: slot.name.clone(),
            index,
            value: data[index],
            rows,
        }),
    }
}

impl Outputs {
    /// The output called `name`, as the spec's `output name = ...` names it.
    pub fn get(&self, name: &str) -> Option<&Tensor<f32>> {
        let position = self.names.iter().position(|known| known == name)?;
        self.tensors.get(position)
    }

    /// Like [`Outputs::get`], with an error that lists the outputs there are.
    pub fn output(&self, name: &str) -> Result<&Tensor<f32>, ApiError> {
        self.get(name).ok_or_else(|| ApiError::UnknownOutput {
            name: name.to_string(),
            known: self.names.join(", "),
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `(name, tensor)` in the spec's output order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<f32>)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.tensors.iter())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn into_vec(self) -> Vec<(String, Tensor<f32>)> {
        self.names.into_iter().zip(self.tensors).collect()
    }
}

/// For each graph input that a gather reads as its ids directly, the fewest table rows.
pub(crate) fn integer_input_limits(graph: &PrimGraph) -> BTreeMap<String, usize> {
    let mut limits = BTreeMap::new();
    for id in graph.node_ids() {
        if !matches!(graph.node(id).op, PrimOp::Gather) {
            continue;
        }
        let operands = graph.operands(id);
        let (Some(table), Some(ids)) = (operands.first(), operands.get(1)) else {
            continue;
        };
        let rows = graph.node(*table).ty.shape.first().copied().unwrap_or(0);
        if let Some((name, _)) = graph.inputs.iter().find(|(_, input)| input == ids) {
            let limit = limits.entry(name.clone()).or_insert(rows);
            *limit = (*limit).min(rows);
        }
    }
    limits
}

/// A [`Forward`] with its parameters bound: runs skip the parameter checks and folding.
pub struct BoundForward<'a> {
    forward: &'a Forward,
    bound: crate::runtime::BoundExecutable<'a>,
}

impl BoundForward<'_> {
    /// Runs on tensors whose shapes must equal the compiled input shapes.
    pub fn run_tensors(&self, inputs: &[Tensor<f32>]) -> Result<Outputs, ApiError> {
        check_count(&self.forward.signatures(), inputs.len())?;
        for (slot, input) in self.forward.inputs.iter().zip(inputs) {
            self.forward.check_input(slot, input)?;
        }
        let tensors = self.bound.run(inputs)?;
        Ok(Outputs {
            names: self.forward.output_names.clone(),
            tensors,
        })
    }
}
