//! Running a [`Program`]: each step reads its operands from their locations (caller's inputs,
//! bound parameters, constants, the arena) and writes its output range of the arena.
//!
//! Kernels get slices of one arena. That each step's written ranges (output, scratch) are
//! disjoint from each other and from everything it reads was checked once, when the program
//! was compiled (`verify_plan`), so handing out those slices from the arena's base pointer never
//! makes two live references to the same memory, except for the epilogue that deliberately runs
//! in place over its GEMM's output (through raw pointers, as codegen's contract allows).

use std::time::{Duration, Instant};

use super::execute::{execute_node, execute_producer, Operand};
use super::jit_call::call_elementwise;
use super::plan::Location;
use super::prepack::PackedOperands;
use super::program::{Action, Program, Step};
use super::row_normalization::run_row_normalization;
use super::scan::run_scan;
use super::{ParameterValues, RuntimeError};
use crate::fuse::RowNormalizationKind;
use crate::kernels::gemm::{GemmPost, PackedB};
use crate::prim::PrimNodeId;
use crate::tensor::Tensor;

/// What [`Program::run_in_arena`] hands each run's outputs to, where they lie.
pub(super) type OutputReader<'r> = dyn FnMut(&[&[f32]]) -> Result<(), RuntimeError> + 'r;

/// Where one run's values are, and the run key random ops draw with.
pub(super) struct Memory<'a> {
    pub run_key: u64,
    inputs: &'a [&'a [f32]],
    parameters: &'a [&'a [f32]],
    constants: &'a [Vec<f32>],
    arena: *mut f32,
    arena_len: usize,
    /// Matmul operands packed ahead of time for this run (`prepack.rs`).
    packed: Option<&'a PackedOperands>,
}

impl Program {
    /// Runs the program on `inputs` (whose lengths the caller checked against the graph's input
    /// types) with parameters resolved by name; random ops draw from the stream of `run_key`.
    pub(super) fn run(
        &self,
        parameters: &ParameterValues<'_>,
        inputs: &[&[f32]],
        threads: usize,
        run_key: u64,
    ) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        self.run_timed(parameters, None, inputs, threads, run_key, None)
    }

    /// [`Program::run`], with the matmul operands `packed` ahead of time for these parameters
    /// (`prepack.rs`) if given, recording each step's wall time in `step_times` when given.
    pub(super) fn run_timed(
        &self,
        parameters: &ParameterValues<'_>,
        packed: Option<&PackedOperands>,
        inputs: &[&[f32]],
        threads: usize,
        run_key: u64,
        step_times: Option<&mut Vec<Duration>>,
    ) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        self.check_inputs(inputs)?;
        let bound = self.bind_parameters(parameters)?;
        let mut arena = self.take_arena();
        let memory_inputs = (inputs, bound.as_slice(), run_key);
        let result = self.run_steps(
            &mut arena,
            memory_inputs,
            packed,
            parameters,
            threads,
            step_times,
        );
        self.return_arena(arena);
        result
    }

    /// Checks the count and lengths of a run's inputs against the graph's input types.
    pub(super) fn check_inputs(&self, inputs: &[&[f32]]) -> Result<(), RuntimeError> {
        for ((_, id), input) in self.graph.inputs.iter().zip(inputs) {
            if input.len() != self.graph.node(*id).ty.element_count() {
                return Err(RuntimeError::internal(
                    "an input of the wrong length reached a program",
                ));
            }
        }
        if inputs.len() != self.graph.inputs.len() {
            return Err(RuntimeError::internal(
                "a program got the wrong number of inputs",
            ));
        }
        Ok(())
    }

    /// The program's parameters resolved by name and checked against their types: done once
    /// per run, or once per scan for a body that runs many times (`scan.rs`).
    pub(super) fn bind_parameters<'p>(
        &self,
        parameters: &ParameterValues<'p>,
    ) -> Result<Vec<&'p [f32]>, RuntimeError> {
        let mut bound = Vec::with_capacity(self.plan.parameters.len());
        for name in &self.plan.parameters {
            bound.push(parameters.get(name)?);
        }
        self.check_parameter_lengths(&bound)?;
        Ok(bound)
    }

    /// Runs every step in `arena` (from [`Program::take_arena`]) without collecting outputs:
    /// `read_outputs` gets each output's elements where they lie, in graph order, before the
    /// next run can overwrite them. This is a scan body's step: no allocation, no copy, with
    /// inputs checked by [`Program::check_inputs`] and parameters from
    /// [`Program::bind_parameters`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_in_arena(
        &self,
        arena: &mut [f32],
        inputs: &[&[f32]],
        parameters: &[&[f32]],
        parameter_values: &ParameterValues<'_>,
        packed: Option<&PackedOperands>,
        threads: usize,
        run_key: u64,
        read_outputs: &mut OutputReader<'_>,
    ) -> Result<(), RuntimeError> {
        if arena.len() != self.plan.arena_len || parameters.len() != self.plan.parameters.len() {
            return Err(RuntimeError::internal(
                "a program ran in a foreign arena or with foreign parameters",
            ));
        }
        self.check_inputs(inputs)?;
        let memory = Memory {
            run_key,
            inputs,
            parameters,
            constants: &self.constants,
            arena: arena.as_mut_ptr(),
            arena_len: arena.len(),
            packed,
        };
        for (index, step) in self.steps.iter().enumerate() {
            self.run_step(index, step, &memory, parameter_values, threads)?;
        }
        self.copy_updates(&memory, parameter_values)?;
        let mut outputs = Vec::with_capacity(self.graph.outputs.len());
        for (_, id) in &self.graph.outputs {
            // SAFETY: no kernel runs any more; this only reads.
            outputs.push(unsafe { memory.read(self.location(*id)?)? });
        }
        read_outputs(&outputs)
    }

    fn check_parameter_lengths(&self, bound: &[&[f32]]) -> Result<(), RuntimeError> {
        for id in self.graph.node_ids() {
            if let Some(Location::Parameter(index)) = self.plan.locations.get(&id) {
                if bound[*index].len() != self.graph.node(id).ty.element_count() {
                    return Err(RuntimeError::internal(
                        "a bound parameter of the wrong length reached a program",
                    ));
                }
            }
        }
        Ok(())
    }

    /// An arena for one run: one a finished run gave back, or a fresh one.
    pub(super) fn take_arena(&self) -> Vec<f32> {
        let reused = self
            .arenas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match reused {
            Some(arena) if arena.len() == self.plan.arena_len => arena,
            _ => vec![0.0; self.plan.arena_len],
        }
    }

    pub(super) fn return_arena(&self, arena: Vec<f32>) {
        self.arenas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(arena);
    }

    /// Runs every step; `sources` are the inputs, the bound parameters and the run key.
    fn run_steps(
        &self,
        arena: &mut [f32],
        sources: (&[&[f32]], &[&[f32]], u64),
        packed: Option<&PackedOperands>,
        parameter_values: &ParameterValues<'_>,
        threads: usize,
        mut step_times: Option<&mut Vec<Duration>>,
    ) -> Result<Vec<Tensor<f32>>, RuntimeError> {
        let (inputs, parameters, run_key) = sources;
        let memory = Memory {
            run_key,
            inputs,
            parameters,
            constants: &self.constants,
            arena: arena.as_mut_ptr(),
            arena_len: arena.len(),
            packed,
        };
        for (index, step) in self.steps.iter().enumerate() {
            let started = step_times.is_some().then(Instant::now);
            self.run_step(index, step, &memory, parameter_values, threads)?;
            if let (Some(times), Some(started)) = (step_times.as_deref_mut(), started) {
                times.push(started.elapsed());
            }
        }
        self.copy_updates(&memory, parameter_values)?;
        let mut outputs = Vec::with_capacity(self.graph.outputs.len());
        for (position, (_, id)) in self.graph.outputs.iter().enumerate() {
            // Updates went into the parameters themselves (`in_place.rs`).
            if self.updates.update_outputs.contains(&position) {
                continue;
            }
            let shape = self.graph.node(*id).ty.shape.clone();
            // SAFETY: no kernel runs any more; this only reads.
            let data = unsafe { memory.read(self.location(*id)?)? }.to_vec();
            outputs.push(Tensor { shape, data });
        }
        Ok(outputs)
    }

    pub(super) fn location(&self, id: PrimNodeId) -> Result<Location, RuntimeError> {
        self.plan
            .locations
            .get(&id)
            .copied()
            .ok_or_else(|| RuntimeError::Internal(format!("value %{} has no location", id.index())))
    }

    fn run_step(
        &self,
        index: usize,
        step: &Step,
        memory: &Memory<'_>,
        parameters: &ParameterValues<'_>,
        threads: usize,
    ) -> Result<(), RuntimeError> {
        if let Some(&parameter) = self.updates.in_place.get(&step.output) {
            return self.run_update_step(index, step, memory, parameters, threads, parameter);
        }
        let Location::Arena { offset, len } = self.location(step.output)? else {
            return Err(RuntimeError::internal(
                "a kernel's output is not in the arena",
            ));
        };
        // SAFETY (for every `read` and `write` below): `verify_plan` checked that this step's
        // output and scratch ranges overlap neither each other nor any value the step reads, and
        // the slices live only until the step returns.
        let output = unsafe { memory.write(offset, len)? };
        let scratch: &mut [f32] = match self.plan.scratch[index] {
            Some((offset, len)) => unsafe { memory.write(offset, len)? },
            None => &mut [],
        };
        let node = self.graph.node(step.output);
        match &step.action {
            Action::Primitive | Action::Scan => {
                let operand_ids = self.graph.operands(step.output);
                let operands = self.operands(&operand_ids, memory)?;
                match (&step.action, &node.op) {
                    (Action::Scan, _) => {
                        let body = self.bodies.get(&step.output).ok_or_else(|| {
                            RuntimeError::internal("a scan without its compiled body")
                        })?;
                        let context = (parameters, threads, memory.run_key);
                        run_scan(body, node, context, &operands, output)
                    }
                    (
                        _,
                        crate::prim::PrimOp::MatMul
                        | crate::prim::PrimOp::Conv2d(_)
                        | crate::prim::PrimOp::Conv2dWeightGradient(_)
                        | crate::prim::PrimOp::ConvTranspose2d(_),
                    ) => {
                        let packed_b = memory.packed_b(step.output);
                        let post = GemmPost::default();
                        execute_producer(
                            node, &operands, None, post, None, packed_b, output, scratch, threads,
                        )
                    }
                    _ => execute_node(node, &operands, output, threads, memory.run_key),
                }
            }
            Action::RowNormalization(row) => {
                let read = |id: PrimNodeId| -> Result<&[f32], RuntimeError> {
                    unsafe { memory.read(self.location(id)?) }
                };
                let (scale, shift) = match &row.kind {
                    RowNormalizationKind::LayerNorm { scale, shift, .. } => (*scale, *shift),
                    RowNormalizationKind::Softmax => (None, None),
                };
                let scale = scale.map(read).transpose()?;
                let shift = shift.map(read).transpose()?;
                let input = read(row.input)?;
                run_row_normalization(row, input, scale, shift, output, threads)
            }
            Action::Elementwise(call) => {
                let pointers = self.input_pointers(&call.inputs, memory, None)?;
                // SAFETY: each input was checked at compile time to have the length its layout
                // reads for this output, and the output slice is exclusively this step's.
                unsafe {
                    call_elementwise(call, &pointers, output.as_mut_ptr(), output.len(), threads)
                };
                Ok(())
            }
            Action::Producer {
                producer,
                bias,
                epilogue,
                in_place,
                post,
                sgd_update: _,
            } => {
                let operands = self.producer_operands(*producer, memory)?;
                let bias = match bias {
                    Some(bias) => Some(unsafe { memory.read(self.location(*bias)?)? }),
                    None => None,
                };
                let residual = match post.residual {
                    Some(residual) => Some(unsafe { memory.read(self.location(residual)?)? }),
                    None => None,
                };
                let post = GemmPost {
                    residual,
                    relu: post.relu,
                };
                execute_producer(
                    self.graph.node(*producer),
                    &operands,
                    bias,
                    post,
                    None,
                    memory.packed_b(*producer),
                    output,
                    scratch,
                    threads,
                )?;
                if let Some(call) = epilogue {
                    let output_pointer = output.as_mut_ptr();
                    let pointers = self.input_pointers(
                        &call.inputs,
                        memory,
                        Some((*in_place, output_pointer)),
                    )?;
                    // SAFETY: as above; the in-place input is the output buffer itself, which
                    // the generated code reads at element `i` before writing element `i`.
                    unsafe { call_elementwise(call, &pointers, output_pointer, len, threads) };
                }
                Ok(())
            }
        }
    }

    pub(super) fn operands<'m>(
        &'m self,
        ids: &[PrimNodeId],
        memory: &'m Memory<'m>,
    ) -> Result<Vec<Operand<'m>>, RuntimeError> {
        ids.iter()
            .map(|id| {
                let data = unsafe { memory.read(self.location(*id)?)? };
                Ok(Operand {
                    data,
                    shape: self.graph.node(*id).ty.shape.as_slice(),
                    view: None,
                })
            })
            .collect()
    }

    /// The operands of a matmul or convolution kernel: each where it lies, or read through the
    /// strided view of another value that the kernel plan gave it (`fuse/matmul_operand_views`).
    /// The values a matmul or convolution kernel reads its operands from: each operand, or
    /// the source of the view it is read through.
    pub(super) fn producer_operand_sources(&self, producer: PrimNodeId) -> Vec<PrimNodeId> {
        let views = self.producer_views.get(&producer);
        let ids = self.graph.operands(producer);
        ids.iter()
            .enumerate()
            .map(|(position, id)| {
                match views
                    .and_then(|views| views.get(position))
                    .and_then(Option::as_ref)
                {
                    Some(view) => view.source,
                    None => *id,
                }
            })
            .collect()
    }

    pub(super) fn producer_operands<'m>(
        &'m self,
        producer: PrimNodeId,
        memory: &'m Memory<'m>,
    ) -> Result<Vec<Operand<'m>>, RuntimeError> {
        let ids = self.graph.operands(producer);
        let Some(views) = self.producer_views.get(&producer) else {
            return self.operands(&ids, memory);
        };
        let mut operands = Vec::with_capacity(ids.len());
        for (position, id) in ids.iter().enumerate() {
            let shape = self.graph.node(*id).ty.shape.as_slice();
            operands.push(match views.get(position).and_then(Option::as_ref) {
                Some(view) => Operand {
                    data: unsafe { memory.read(self.location(view.source)?)? },
                    shape,
                    view: Some((view.offset, view.strides.as_slice())),
                },
                None => Operand {
                    data: unsafe { memory.read(self.location(*id)?)? },
                    shape,
                    view: None,
                },
            });
        }
        Ok(operands)
    }

    fn input_pointers(
        &self,
        ids: &[PrimNodeId],
        memory: &Memory<'_>,
        in_place: Option<(PrimNodeId, *mut f32)>,
    ) -> Result<Vec<*const f32>, RuntimeError> {
        ids.iter()
            .map(|id| match in_place {
                Some((value, pointer)) if value == *id => Ok(pointer as *const f32),
                _ => Ok(unsafe { memory.read(self.location(*id)?)? }.as_ptr()),
            })
            .collect()
    }
}

impl<'a> Memory<'a> {
    /// The packed B of `matmul`, when this run has one.
    pub(super) fn packed_b(&self, matmul: PrimNodeId) -> Option<&'a PackedB> {
        self.packed.and_then(|packed| packed.get(matmul))
    }

    /// The elements at `location`.
    ///
    /// # Safety
    /// No live mutable slice may overlap an arena location read.
    pub(super) unsafe fn read(&self, location: Location) -> Result<&'a [f32], RuntimeError> {
        Ok(match location {
            Location::Input(index) => self
                .inputs
                .get(index)
                .ok_or_else(|| RuntimeError::internal("an input index beyond the inputs"))?,
            Location::Parameter(index) => self
                .parameters
                .get(index)
                .ok_or_else(|| RuntimeError::internal("a parameter index beyond the parameters"))?,
            Location::Constant(index) => self
                .constants
                .get(index)
                .ok_or_else(|| RuntimeError::internal("a constant index beyond the constants"))?,
            Location::Arena { offset, len } => {
                self.check_range(offset, len)?;
                unsafe { std::slice::from_raw_parts(self.arena.add(offset), len) }
            }
        })
    }

    /// `arena[offset..offset + len]` for writing.
    ///
    /// # Safety
    /// No other live slice may overlap the range.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn write(
        &self,
        offset: usize,
        len: usize,
    ) -> Result<&'a mut [f32], RuntimeError> {
        self.check_range(offset, len)?;
        Ok(unsafe { std::slice::from_raw_parts_mut(self.arena.add(offset), len) })
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), RuntimeError> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.arena_len)
        {
            return Err(RuntimeError::internal(
                "a planned range lies outside the arena",
            ));
        }
        Ok(())
    }
}
