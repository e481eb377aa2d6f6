//! In-place parameter updates: outputs of a graph declared as the new values of parameters
//! ([`ParameterUpdate`]), which a run writes straight into the parameters' own buffers.
//!
//! A training step computes every weight's new value; returning those values and copying them
//! back would move all the weights twice per step and keep a second copy alive in the arena. So
//! the kernel that computes an update writes it where the parameter lives:
//! - an elementwise kernel (the SGD update `p - lr * g`, fused with whatever chain computes `g`)
//!   writes the parameter's buffer directly. It may read the parameter itself: generated code
//!   reads element `i` of every full-size input before writing element `i` (the contract the
//!   GEMM epilogues already use), and any input of the parameter's size is read at `i`;
//! - a GEMM or convolution with the update as its epilogue computes its product into scratch
//!   (which the memory plan sizes for it), then the epilogue writes the parameter;
//! - any other kernel computes into scratch, and the result is copied over the parameter.
//!
//! Writing early is only correct once nothing else needs the old value, so the steps are
//! rescheduled: each update step runs after every other step that reads its parameter (or a
//! reshape of it, or runs a scan over it), keeping the fusion's order otherwise (a list
//! schedule by original position). Updates whose value no step computes (a value that folded
//! away, or the parameter itself when its gradient simplified to zero) are copied after the last
//! step instead. Values folded at bind time are recomputed on every in-place run, from the
//! parameters as they are before the run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::marker::PhantomData;

use super::bind::{ParameterLookup, ParameterValues};
use super::execute::execute_producer;
use super::jit_call::call_elementwise;
use super::plan::Location;
use super::program::{Action, Program, Step};
use super::run::Memory;
use super::RuntimeError;
use crate::prim::{PrimGraph, PrimNodeId, PrimOp};
use crate::tensor::Tensor;

/// An output whose value replaces a parameter's data on every run (a training step's new
/// weights, batch norm's running statistics, an optimizer's momentum buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterUpdate {
    /// The graph output holding the new value.
    pub output: String,
    /// The parameter (by name, as `Parameter` nodes and the bound tensors name it) it replaces.
    pub parameter: String,
}

/// The tensors of an in-place run by name: their shapes and raw buffers. Built from exclusive
/// borrows of the caller's tensors, held for the whole run (`'t`), so nothing else reads or
/// writes them meanwhile; kernels read them through shared slices made per step and the update
/// steps write them through the raw pointers.
pub(super) struct ParameterBuffers<'t> {
    buffers: HashMap<String, Buffer>,
    _borrow: PhantomData<&'t mut Tensor<f32>>,
}

struct Buffer {
    shape: Vec<usize>,
    data: *mut f32,
    len: usize,
}

impl<'t> ParameterBuffers<'t> {
    pub fn new(tensors: impl IntoIterator<Item = (&'t str, &'t mut Tensor<f32>)>) -> Self {
        let buffers = tensors
            .into_iter()
            .map(|(name, tensor)| {
                let buffer = Buffer {
                    shape: tensor.shape.clone(),
                    data: tensor.data.as_mut_ptr(),
                    len: tensor.data.len(),
                };
                (name.to_string(), buffer)
            })
            .collect();
        ParameterBuffers {
            buffers,
            _borrow: PhantomData,
        }
    }

    /// Checks that every parameter the program reads or writes is here, with its shape and as
    /// many elements.
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<(), RuntimeError> {
        for (name, shape) in expected {
            let buffer = self
                .buffers
                .get(name)
                .ok_or_else(|| RuntimeError::MissingParameter { name: name.clone() })?;
            if buffer.shape != *shape {
                return Err(RuntimeError::ParameterShape {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: buffer.shape.clone(),
                });
            }
            let expected_len: usize = shape.iter().product();
            if buffer.len != expected_len {
                return Err(RuntimeError::ParameterData {
                    name: name.clone(),
                    shape: shape.clone(),
                    expected_len,
                    found_len: buffer.len,
                });
            }
        }
        Ok(())
    }
}

impl ParameterLookup for ParameterBuffers<'_> {
    fn lookup(&self, name: &str) -> Option<&[f32]> {
        let buffer = self.buffers.get(name)?;
        // SAFETY: the pointer and length come from a `Vec<f32>` borrowed exclusively for `'t`,
        // which outlives `self`; see the type's doc for who writes it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(buffer.data, buffer.len) })
    }

    fn writable(&self, name: &str) -> Option<(*mut f32, usize)> {
        let buffer = self.buffers.get(name)?;
        Some((buffer.data, buffer.len))
    }
}

/// How a program writes its updates, decided when it is compiled.
#[derive(Debug, Default)]
pub(super) struct UpdatePlan {
    /// Steps whose output is written straight into a parameter: output node -> index into
    /// the plan's parameters.
    pub in_place: HashMap<PrimNodeId, usize>,
    /// Values copied over parameters after the last step: (value, parameter index).
    pub copied: Vec<(PrimNodeId, usize)>,
    /// Positions (in the graph's outputs) of update outputs, which a run does not return.
    pub update_outputs: HashSet<usize>,
}

/// The order and placement [`schedule_updates`] chose.
pub(super) struct UpdateSchedule {
    /// Step indices in execution order.
    pub order: Vec<usize>,
    /// (step index, parameter name) of each update written in place.
    pub in_place: Vec<(usize, String)>,
    /// (value, parameter name) of each update copied at the end.
    pub copied: Vec<(PrimNodeId, String)>,
}

/// Chooses which updates are written in place and reorders the steps so that each runs after
/// every other reader of its parameter. `step_outputs[i]` and `step_reads[i]` describe step `i`
/// (in the fusion's order), `writes_in_place[i]` whether it is an elementwise or GEMM/convolution
/// kernel, the kinds that can write a parameter; `aliases` are `(reshape, operand)` pairs
/// sharing memory.
pub(super) fn schedule_updates(
    graph: &PrimGraph,
    step_outputs: &[PrimNodeId],
    step_reads: &[Vec<PrimNodeId>],
    writes_in_place: &[bool],
    aliases: &[(PrimNodeId, PrimNodeId)],
    updates: &[(PrimNodeId, String)],
) -> UpdateSchedule {
    let mut root_of: HashMap<PrimNodeId, PrimNodeId> = HashMap::new();
    for (alias, operand) in aliases {
        let root = root_of.get(operand).copied().unwrap_or(*operand);
        root_of.insert(*alias, root);
    }
    let root = |id: PrimNodeId| root_of.get(&id).copied().unwrap_or(id);
    let step_of: HashMap<PrimNodeId, usize> = step_outputs
        .iter()
        .enumerate()
        .map(|(step, output)| (*output, step))
        .collect();
    let parameter_read = |read: PrimNodeId| match &graph.node(root(read)).op {
        PrimOp::Parameter { name, .. } => Some(name.clone()),
        _ => None,
    };
    let mut in_place = Vec::new();
    let mut copied = Vec::new();
    let mut targets_seen: HashSet<PrimNodeId> = HashSet::new();
    for (value, parameter) in updates {
        let shared = updates.iter().filter(|(other, _)| other == value).count() > 1;
        match step_of.get(value) {
            Some(step) if writes_in_place[*step] && !shared && targets_seen.insert(*value) => {
                in_place.push((*step, parameter.clone()))
            }
            _ => copied.push((*value, parameter.clone())),
        }
    }
    // Edges: data dependencies, then write-after-read for each in-place update.
    let count = step_outputs.len();
    let mut successors: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (step, reads) in step_reads.iter().enumerate() {
        for read in reads {
            if let Some(producer) = step_of.get(&root(*read)) {
                if *producer != step {
                    successors[*producer].push(step);
                }
            }
        }
    }
    for (writer, parameter) in &in_place {
        for (step, reads) in step_reads.iter().enumerate() {
            let reads_old_value = reads
                .iter()
                .any(|read| parameter_read(*read).as_deref() == Some(parameter.as_str()));
            if step != *writer && reads_old_value {
                successors[step].push(*writer);
            }
        }
    }
    let mut urgent = vec![false; count];
    for (step, _) in &in_place {
        urgent[*step] = true;
    }
    match list_schedule(&successors, &urgent) {
        Some(order) => UpdateSchedule {
            order,
            in_place,
            copied,
        },
        // A step that reads both a parameter's old and new value: keep the fusion's order and
        // copy every update at the end, which is always correct.
        None => {
            let steps_copied = in_place
                .into_iter()
                .map(|(step, parameter)| (step_outputs[step], parameter));
            UpdateSchedule {
                order: (0..count).collect(),
                in_place: Vec::new(),
                copied: steps_copied.chain(copied).collect(),
            }
        }
    }
}

/// A topological order of the steps that takes, at each point, an `urgent` ready step if there
/// is one, else the ready step that came first in the original order; `None` when the edges
/// have a cycle. Updates are urgent: run as soon as their parameter's last reader is done, they
/// free their gradient's memory early instead of keeping every gradient alive to the end.
fn list_schedule(successors: &[Vec<usize>], urgent: &[bool]) -> Option<Vec<usize>> {
    let mut pending = vec![0usize; successors.len()];
    for targets in successors {
        for target in targets {
            pending[*target] += 1;
        }
    }
    let key = |step: usize| Reverse((!urgent[step], step));
    let mut ready: BinaryHeap<Reverse<(bool, usize)>> = (0..successors.len())
        .filter(|step| pending[*step] == 0)
        .map(key)
        .collect();
    let mut order = Vec::with_capacity(successors.len());
    while let Some(Reverse((_, step))) = ready.pop() {
        order.push(step);
        for target in &successors[step] {
            pending[*target] -= 1;
            if pending[*target] == 0 {
                ready.push(key(*target));
            }
        }
    }
    (order.len() == successors.len()).then_some(order)
}

impl Program {
    /// Runs step `index`, whose output is the new value of the parameter at `parameter` (an
    /// index into the plan's parameters), writing it into that parameter's buffer.
    pub(super) fn run_update_step(
        &self,
        index: usize,
        step: &Step,
        memory: &Memory<'_>,
        parameters: &ParameterValues<'_>,
        threads: usize,
        parameter: usize,
    ) -> Result<(), RuntimeError> {
        let (target, len) = self.update_target(parameters, parameter)?;
        if len != self.graph.node(step.output).ty.element_count() {
            return Err(RuntimeError::internal(
                "an update's value and its parameter differ in size",
            ));
        }
        // SAFETY: `verify_plan` checked that the scratch range overlaps nothing the step reads.
        let scratch: &mut [f32] = match self.plan.scratch[index] {
            Some((offset, scratch_len)) => unsafe { memory.write(offset, scratch_len)? },
            None => &mut [],
        };
        match &step.action {
            Action::Elementwise(call) => {
                let pointers =
                    self.update_input_pointers(&call.inputs, memory, parameter, target, None)?;
                // SAFETY: every input was checked at compile time against its layout; an input
                // in the parameter's buffer has the output's size, so the generated code reads
                // its element `i` before writing element `i`, and no other step runs meanwhile.
                unsafe { call_elementwise(call, &pointers, target, len, threads) };
                Ok(())
            }
            Action::Producer {
                producer,
                bias,
                epilogue,
                in_place,
            } => {
                if scratch.len() < len {
                    return Err(RuntimeError::internal(
                        "an update's staging scratch is too small",
                    ));
                }
                let (staging, producer_scratch) = scratch.split_at_mut(len);
                let operands = self.producer_operands(*producer, memory)?;
                let bias = match bias {
                    Some(bias) => Some(unsafe { memory.read(self.location(*bias)?)? }),
                    None => None,
                };
                let node = self.graph.node(*producer);
                execute_producer(node, &operands, bias, staging, producer_scratch, threads)?;
                let staged = (*in_place, staging.as_mut_ptr());
                match epilogue {
                    Some(call) => {
                        let pointers = self.update_input_pointers(
                            &call.inputs,
                            memory,
                            parameter,
                            target,
                            Some(staged),
                        )?;
                        // SAFETY: as for an elementwise update; the staged product is scratch.
                        unsafe { call_elementwise(call, &pointers, target, len, threads) };
                    }
                    // SAFETY: `target` holds `len` floats, and scratch never overlaps it.
                    None => unsafe { std::ptr::copy_nonoverlapping(staged.1, target, len) },
                }
                Ok(())
            }
            Action::Primitive | Action::Scan => Err(RuntimeError::internal(
                "an update scheduled in place by a kernel that cannot write it",
            )),
        }
    }

    /// Copies the updates no step writes in place over their parameters (after the last step).
    pub(super) fn copy_updates(
        &self,
        memory: &Memory<'_>,
        parameters: &ParameterValues<'_>,
    ) -> Result<(), RuntimeError> {
        for (value, parameter) in &self.updates.copied {
            let location = self.location(*value)?;
            if location == Location::Parameter(*parameter) {
                continue;
            }
            let (target, len) = self.update_target(parameters, *parameter)?;
            // SAFETY: no kernel runs any more; the value is another buffer than the target
            // (checked just above for parameters; the arena and constants are never bound).
            let source = unsafe { memory.read(location)? };
            if source.len() != len {
                return Err(RuntimeError::internal(
                    "an update's value and its parameter differ in size",
                ));
            }
            unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), target, len) };
        }
        Ok(())
    }

    fn update_target(
        &self,
        parameters: &ParameterValues<'_>,
        parameter: usize,
    ) -> Result<(*mut f32, usize), RuntimeError> {
        let name =
            self.plan.parameters.get(parameter).ok_or_else(|| {
                RuntimeError::internal("an update's parameter index is out of range")
            })?;
        parameters
            .user
            .writable(name)
            .ok_or_else(|| RuntimeError::Unsupported {
                what: format!(
                    "this executable updates parameter `{name}` in place; run it with `run_in_place`"
                ),
            })
    }

    /// The JIT inputs of an update step: the staged product where the epilogue reads it, the
    /// target buffer wherever the parameter being written is read, else their locations.
    fn update_input_pointers(
        &self,
        ids: &[PrimNodeId],
        memory: &Memory<'_>,
        parameter: usize,
        target: *mut f32,
        staged: Option<(PrimNodeId, *mut f32)>,
    ) -> Result<Vec<*const f32>, RuntimeError> {
        ids.iter()
            .map(|id| {
                if let Some((value, pointer)) = staged {
                    if value == *id {
                        return Ok(pointer as *const f32);
                    }
                }
                let location = self.location(*id)?;
                if location == Location::Parameter(parameter) {
                    return Ok(target as *const f32);
                }
                // SAFETY: reads outside the target buffer, which no kernel writes meanwhile.
                Ok(unsafe { memory.read(location)? }.as_ptr())
            })
            .collect()
    }
}
