//! Running with in-place updates (see `in_place.rs` for the design): the [`Executable`] entry
//! points that take the parameters as writable tensors, and the steps of a [`Program`] that
//! write a parameter's buffer instead of the arena.

use std::collections::HashMap;
use std::time::Duration;

use super::bind::{self, FoldedValues, ParameterValues};
use super::execute::execute_producer;
use super::in_place::ParameterBuffers;
use super::jit_call::call_elementwise;
use super::plan::Location;
use super::program::{Action, Program, Step};
use super::run::Memory;
use super::{Executable, RuntimeError};
use crate::fuse::KernelKind;
use crate::kernels::gemm::{GemmKernel, GemmPost};
use crate::prim::PrimNodeId;
use crate::tensor::Tensor;

impl Executable {
    /// Runs the graph with parameters taken from `tensors` (by name, each borrowed exclusively
    /// for the run) and writes every [`ParameterUpdate`] into its parameter's tensor. Returns
    /// the outputs that are not updates, in graph order. Values folded at bind time are
    /// computed afresh from the tensors on every call (they change between calls).
    pub fn run_in_place<'t>(
        &self,
        tensors: impl IntoIterator<Item = (&'t str, &'t mut Tensor<f32>)>,
        inputs: &[Tensor<f32>],
        run_key: u64,
    ) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        let buffers = ParameterBuffers::new(tensors);
        buffers.check(&self.user_parameters)?;
        self.check_inputs(inputs)?;
        let folded = match &self.bind_program {
            Some(bind_program) => bind::evaluate(bind_program, &buffers)?,
            None => FoldedValues::default(),
        };
        let values = ParameterValues {
            user: &buffers,
            folded: &folded,
        };
        let input_slices: Vec<&[f32]> = inputs.iter().map(|input| input.data.as_slice()).collect();
        self.program
            .run(&values, &input_slices, self.threads, run_key)
    }

    /// [`Executable::run_in_place`] once, returning each kernel's wall time next to its
    /// `--emit kernels` label, in execution order (which the in-place updates may have changed).
    pub fn profile_in_place<'t>(
        &self,
        tensors: impl IntoIterator<Item = (&'t str, &'t mut Tensor<f32>)>,
        inputs: &[Tensor<f32>],
        run_key: u64,
    ) -> Result<Vec<(String, Duration)>, RuntimeError> {
        let buffers = ParameterBuffers::new(tensors);
        buffers.check(&self.user_parameters)?;
        self.check_inputs(inputs)?;
        let folded = match &self.bind_program {
            Some(bind_program) => bind::evaluate(bind_program, &buffers)?,
            None => FoldedValues::default(),
        };
        let values = ParameterValues {
            user: &buffers,
            folded: &folded,
        };
        let input_slices: Vec<&[f32]> = inputs.iter().map(|input| input.data.as_slice()).collect();
        let mut times = Vec::new();
        let program = &self.program;
        program.run_timed(
            &values,
            None,
            &input_slices,
            self.threads,
            run_key,
            Some(&mut times),
        )?;
        let graph = &self.fused.state.graph;
        let kernels = self.fused.kernels.kernels.iter();
        let labels: HashMap<_, _> = kernels
            .filter(|kernel| !matches!(kernel.kind, KernelKind::Alias))
            .enumerate()
            .map(|(index, kernel)| {
                let label = format!("k{index} {}", kernel.kind.name(graph, kernel.output));
                (kernel.output, label)
            })
            .collect();
        let steps = program.steps.iter();
        let labelled = steps.map(|step| labels.get(&step.output).cloned().unwrap_or_default());
        Ok(labelled.zip(times).collect())
    }

    /// How many updates a run writes straight into their parameters, and how many it copies
    /// over them after the last step (values no kernel computes, or a fallback; `in_place.rs`).
    pub fn update_placement(&self) -> (usize, usize) {
        let updates = &self.program.updates;
        (updates.in_place.len(), updates.copied.len())
    }

    /// The names of the outputs a run returns: all of them, except updates written in place.
    pub fn returned_output_names(&self) -> Vec<&str> {
        let graph = &self.graph;
        let outputs = graph.outputs.iter().map(|(name, _)| name.as_str());
        outputs
            .filter(|name| !self.updates.iter().any(|update| update.output == *name))
            .collect()
    }

    /// An executable that updates parameters cannot run on read-only ones.
    pub(super) fn check_read_only(&self) -> Result<(), RuntimeError> {
        match self.updates.first() {
            None => Ok(()),
            Some(update) => Err(RuntimeError::Unsupported {
                what: format!(
                    "running with read-only parameters: this executable writes `{}` in place (use `run_in_place`)",
                    update.parameter
                ),
            }),
        }
    }
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
                post,
                sgd_update,
            } => {
                if !post.is_empty() {
                    return Err(RuntimeError::internal(
                        "an update computed by a matmul's post-operations",
                    ));
                }
                if let Some((weight, learning_rate)) = sgd_update {
                    let direct = self.sgd_update_in_place(
                        *producer,
                        (*weight, *learning_rate),
                        bias.is_some(),
                        memory,
                        (parameter, target, len),
                        scratch,
                        threads,
                    )?;
                    if direct {
                        return Ok(());
                    }
                }
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
                let packed_b = memory.packed_b(*producer);
                execute_producer(
                    node,
                    &operands,
                    bias,
                    GemmPost::default(),
                    None,
                    packed_b,
                    staging,
                    producer_scratch,
                    threads,
                )?;
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
            Action::Primitive | Action::Scan | Action::RowNormalization(_) => {
                Err(RuntimeError::internal(
                    "an update scheduled in place by a kernel that cannot write it",
                ))
            }
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

    /// A plain SGD update of the weight at `parameter` by a matmul's product, written by the
    /// GEMM straight into the weight (`W += -lr * product`), when that gives the bits of
    /// computing the product and then the update: one k block, no bias, and no operand read
    /// from the weight being written. Returns whether it ran (else the caller stages the
    /// product and runs the epilogue).
    #[allow(clippy::too_many_arguments)]
    fn sgd_update_in_place(
        &self,
        producer: PrimNodeId,
        (weight, learning_rate): (PrimNodeId, PrimNodeId),
        has_bias: bool,
        memory: &Memory<'_>,
        (parameter, target, len): (usize, *mut f32, usize),
        scratch: &mut [f32],
        threads: usize,
    ) -> Result<bool, RuntimeError> {
        let node = self.graph.node(producer);
        let operand_ids = self.graph.operands(producer);
        let Some(k) = operand_ids
            .first()
            .and_then(|a| self.graph.node(*a).ty.shape.last().copied())
        else {
            return Ok(false);
        };
        let written = Location::Parameter(parameter);
        let reads_target = self
            .producer_operand_sources(producer)
            .into_iter()
            .any(|source| {
                self.location(source)
                    .map_or(true, |location| location == written)
            });
        let eligible = matches!(node.op, crate::prim::PrimOp::MatMul)
            && !has_bias
            && self.location(weight)? == written
            && !reads_target
            && GemmKernel::active().one_k_block(k);
        if !eligible {
            return Ok(false);
        }
        // SAFETY: the learning rate is an input, which no step writes.
        let rate = unsafe { memory.read(self.location(learning_rate)?)? };
        let Some(&rate) = rate.first() else {
            return Err(RuntimeError::internal("an empty learning rate"));
        };
        let operands = self.producer_operands(producer, memory)?;
        // SAFETY: `target` is the weight's buffer of `len` floats, written by this step alone;
        // no operand reads it (checked above).
        let output = unsafe { std::slice::from_raw_parts_mut(target, len) };
        execute_producer(
            node,
            &operands,
            None,
            GemmPost::default(),
            Some(-rate),
            memory.packed_b(producer),
            output,
            scratch,
            threads,
        )?;
        Ok(true)
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
