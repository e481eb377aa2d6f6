//! Compiling a fused graph into a [`Program`]: one [`Step`] per kernel of the kernel plan, with
//! JIT functions for elementwise groups and epilogues, a memory plan, and constants in f32.
//!
//! Identical elementwise expressions (the same epilogue in every residual block of a stage)
//! compile once: the [`KernelCompiler`] caches functions by their expression text, which names
//! every op, constant and input layout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::execute::producer_scratch_len;
use super::in_place::{schedule_updates, UpdatePlan};
use super::plan::{plan_memory, Location, MemoryPlan, PlanStep};
use super::RuntimeError;
use crate::codegen::{compile_elementwise, ElementwiseKernel, Jit};
use crate::fuse::print::{JitCompile, KernelTimes};
use crate::fuse::{
    ElementwiseGroup, Fused, KernelKind, OperandView, ProducerPost, RowNormalization,
};
use crate::prim::{BinaryFn, Constant, PrimGraph, PrimNodeId, PrimOp};

/// A graph ready to run: steps in execution order and where every value lives.
pub(super) struct Program {
    pub graph: PrimGraph,
    pub steps: Vec<Step>,
    pub plan: MemoryPlan,
    pub constants: Vec<Vec<f32>>,
    /// The program of each scan node's body.
    pub bodies: HashMap<PrimNodeId, Program>,
    /// Arenas of finished runs, reused so that a run does not page-fault a fresh allocation.
    pub arenas: Mutex<Vec<Vec<f32>>>,
    /// Outputs written into parameters (`in_place.rs`); empty unless compiled with updates.
    pub updates: UpdatePlan,
    /// The matmuls that read operands through strided views of other values, by node.
    pub producer_views: HashMap<PrimNodeId, Vec<Option<OperandView>>>,
}

/// One kernel: the value it writes and how.
pub(super) struct Step {
    pub output: PrimNodeId,
    pub action: Action,
}

pub(super) enum Action {
    /// The output node on its own, by the Rust runtime.
    Primitive,
    /// A scan: the body's program once per step.
    Scan,
    /// A JIT elementwise function reading `inputs`.
    Elementwise(JitCall),
    /// A matmul or convolution node into the output buffer (starting from `bias` if any), then
    /// the epilogue in place.
    ///
    /// The GEMM is a Rust call and the epilogue a separate JIT call, rather than one Cranelift
    /// function that calls `nnc_sgemm` and then runs the epilogue loop: the two measured the
    /// same within noise (`examples/epilogue_bench.rs`: 74 vs 74 us for lenet5's fc1 with tanh,
    /// 2.42 vs 2.42 ms for a 512 GEMM with relu; the call costs nanoseconds either way), and
    /// the split form also serves convolutions, which have no C entry point, and lets the
    /// epilogue run on several threads.
    Producer {
        producer: PrimNodeId,
        bias: Option<PrimNodeId>,
        epilogue: Option<JitCall>,
        /// The value the GEMM leaves in the output buffer, which the epilogue reads there.
        in_place: PrimNodeId,
        /// A matmul's post-operations, applied as it writes each tile.
        post: ProducerPost,
        /// `(weight, learning rate)` when the epilogue is a plain SGD update
        /// `weight - learning_rate * product`: written into the weight by the GEMM itself
        /// when the step updates that weight in place (`in_place_run.rs`).
        sgd_update: Option<(PrimNodeId, PrimNodeId)>,
    },
    /// A softmax or layer norm over rows, by the Rust runtime.
    RowNormalization(RowNormalization),
}

/// `(weight, learning rate)` when `group` is exactly `weight - learning_rate * product` (either
/// order of the product), with `weight` a parameter, `product` the GEMM's result and the
/// learning rate a one-element input: the update `Sgd` appends without momentum or decay.
fn sgd_update_form(
    graph: &PrimGraph,
    group: &ElementwiseGroup,
    product: PrimNodeId,
) -> Option<(PrimNodeId, PrimNodeId)> {
    let [scaled, updated] = group.nodes[..] else {
        return None;
    };
    let operands =
        |id: PrimNodeId, op: BinaryFn| match (&graph.node(id).op, &graph.operands(id)[..]) {
            (PrimOp::Binary(found), [left, right]) if *found == op => Some((*left, *right)),
            _ => None,
        };
    let (weight, subtracted) = operands(updated, BinaryFn::Sub)?;
    let learning_rate = match operands(scaled, BinaryFn::Mul)? {
        (rate, value) | (value, rate) if value == product && rate != product => rate,
        _ => return None,
    };
    let is_parameter = matches!(graph.node(weight).op, PrimOp::Parameter { .. });
    let is_rate = matches!(graph.node(learning_rate).op, PrimOp::Input { .. })
        && graph.node(learning_rate).ty.element_count() == 1;
    let same_type = graph.node(weight).ty == graph.node(updated).ty
        && graph.node(product).ty == graph.node(updated).ty;
    (subtracted == scaled && is_parameter && is_rate && same_type)
        .then_some((weight, learning_rate))
}

/// A compiled elementwise function and the values its inputs read.
pub(super) struct JitCall {
    pub kernel: ElementwiseKernel,
    pub inputs: Vec<PrimNodeId>,
    /// Roughly how much work one element is, to decide when splitting across threads pays.
    pub cost_per_element: usize,
}

/// Compiles JIT functions, once per distinct expression.
pub(super) struct KernelCompiler {
    jit: Jit,
    cache: HashMap<String, ElementwiseKernel>,
    /// The summed compile time of every function compiled.
    pub total_time: Duration,
}

impl KernelCompiler {
    pub fn new(jit: Jit) -> KernelCompiler {
        KernelCompiler {
            jit,
            cache: HashMap::new(),
            total_time: Duration::ZERO,
        }
    }

    fn compile(
        &mut self,
        group: &ElementwiseGroup,
    ) -> Result<(ElementwiseKernel, JitCompile), RuntimeError> {
        let key = group.expr.to_string();
        if let Some(kernel) = self.cache.get(&key) {
            return Ok((kernel.clone(), JitCompile::Reused));
        }
        let kernel = compile_elementwise(&self.jit, &group.expr).map_err(RuntimeError::Codegen)?;
        let time = kernel.compile_time();
        self.total_time += time;
        self.cache.insert(key, kernel.clone());
        Ok((kernel, JitCompile::Compiled(time)))
    }
}

/// Compiles `fused` (and its scan bodies) into a program, with the compile time of each kernel.
/// Scratch is sized for `threads`, the count the program will run with.
pub(super) fn compile_program(
    fused: &Fused,
    compiler: &mut KernelCompiler,
    threads: usize,
) -> Result<(Program, KernelTimes), RuntimeError> {
    compile_program_with_updates(fused, compiler, threads, &[])
}

/// [`compile_program`] for a graph some of whose outputs are the new values of parameters:
/// `updates` pairs each such output's position in the graph's outputs with the parameter's
/// name (see `in_place.rs`).
pub(super) fn compile_program_with_updates(
    fused: &Fused,
    compiler: &mut KernelCompiler,
    threads: usize,
    updates: &[(usize, String)],
) -> Result<(Program, KernelTimes), RuntimeError> {
    let graph = fused.state.graph.clone();
    let mut steps = Vec::new();
    let mut plan_steps = Vec::new();
    let mut aliases = Vec::new();
    let mut times = KernelTimes::default();
    let mut producer_views = HashMap::new();
    for kernel in &fused.kernels.kernels {
        let output = kernel.output;
        let (action, reads, scratch_len, time) = match &kernel.kind {
            KernelKind::Alias => {
                let operand = *graph
                    .operands(output)
                    .first()
                    .ok_or_else(|| RuntimeError::internal("a reshape without an operand"))?;
                aliases.push((output, operand));
                times.per_kernel.push(None);
                continue;
            }
            KernelKind::Primitive => {
                let action = if matches!(graph.node(output).op, PrimOp::Scan { .. }) {
                    Action::Scan
                } else {
                    Action::Primitive
                };
                let scratch_len = match graph.operands(output).as_slice() {
                    [input, weight] => producer_scratch_len(
                        graph.node(output),
                        &graph.node(*input).ty.shape,
                        &graph.node(*weight).ty.shape,
                        threads,
                    )?,
                    _ => 0,
                };
                (action, graph.operands(output), scratch_len, None)
            }
            KernelKind::Elementwise(group) => {
                let (call, time) = jit_call(&graph, group, compiler, None)?;
                let reads = call.inputs.clone();
                (Action::Elementwise(call), reads, 0, Some(time))
            }
            KernelKind::RowNormalization(row) => {
                (Action::RowNormalization(row.clone()), row.reads(), 0, None)
            }
            KernelKind::Producer(producer) => {
                let operands = graph.operands(producer.producer);
                let in_place = producer.result();
                // An operand read through a view reads the view's source instead.
                let mut reads: Vec<PrimNodeId> = operands
                    .iter()
                    .enumerate()
                    .map(
                        |(position, operand)| match producer.operand_views.get(position) {
                            Some(Some(view)) => view.source,
                            _ => *operand,
                        },
                    )
                    .collect();
                if producer.operand_views.iter().any(Option::is_some) {
                    producer_views.insert(producer.producer, producer.operand_views.clone());
                }
                reads.extend(producer.bias.map(|(_, bias)| bias));
                reads.extend(producer.post.residual);
                let (epilogue, time) = match &producer.epilogue {
                    Some(group) => {
                        let (call, time) = jit_call(&graph, group, compiler, Some(in_place))?;
                        reads.extend(call.inputs.iter().filter(|input| **input != in_place));
                        (Some(call), Some(time))
                    }
                    None => (None, None),
                };
                let node = graph.node(producer.producer);
                let scratch_len = producer_scratch_len(
                    node,
                    &graph.node(operands[0]).ty.shape,
                    &graph.node(operands[1]).ty.shape,
                    threads,
                )?;
                let action = Action::Producer {
                    producer: producer.producer,
                    bias: producer.bias.map(|(_, bias)| bias),
                    epilogue,
                    in_place,
                    post: producer.post,
                    sgd_update: producer
                        .epilogue
                        .as_ref()
                        .and_then(|group| sgd_update_form(&graph, group, in_place)),
                };
                (action, reads, scratch_len, time)
            }
        };
        times.per_kernel.push(time);
        steps.push(Step { output, action });
        plan_steps.push(PlanStep {
            output: Some(output),
            reads,
            scratch_len,
        });
    }
    let mut update_plan = UpdatePlan::default();
    // (value, parameter name, written in place rather than copied at the end)
    let mut placements: Vec<(PrimNodeId, String, bool)> = Vec::new();
    if !updates.is_empty() {
        let mut values: Vec<(PrimNodeId, String)> = Vec::with_capacity(updates.len());
        for (position, parameter) in updates {
            let (_, value) = graph
                .outputs
                .get(*position)
                .ok_or_else(|| RuntimeError::internal("an update names no output"))?;
            values.push((*value, parameter.clone()));
        }
        update_plan.update_outputs = updates.iter().map(|(position, _)| *position).collect();
        let outputs: Vec<PrimNodeId> = steps.iter().map(|step| step.output).collect();
        let reads: Vec<Vec<PrimNodeId>> =
            plan_steps.iter().map(|step| step.reads.clone()).collect();
        let writes_in_place: Vec<bool> = steps
            .iter()
            .map(|step| {
                matches!(
                    step.action,
                    Action::Elementwise(_) | Action::Producer { .. }
                )
            })
            .collect();
        let schedule = schedule_updates(
            &graph,
            &outputs,
            &reads,
            &writes_in_place,
            &aliases,
            &values,
        );
        let mut taken: Vec<Option<(Step, PlanStep)>> =
            steps.into_iter().zip(plan_steps).map(Some).collect();
        steps = Vec::with_capacity(schedule.order.len());
        plan_steps = Vec::with_capacity(schedule.order.len());
        for index in &schedule.order {
            let Some((step, mut plan_step)) = taken[*index].take() else {
                return Err(RuntimeError::internal("an update schedule repeats a step"));
            };
            if let Some((_, parameter)) = schedule.in_place.iter().find(|(at, _)| at == index) {
                // The output goes to the parameter, so it needs no arena range; a GEMM or
                // convolution stages its product in scratch for the epilogue to read.
                plan_step.output = None;
                if matches!(step.action, Action::Producer { .. }) {
                    plan_step.scratch_len += graph.node(step.output).ty.element_count();
                }
                placements.push((step.output, parameter.clone(), true));
            }
            steps.push(step);
            plan_steps.push(plan_step);
        }
        let copied = schedule.copied.into_iter();
        placements.extend(copied.map(|(value, parameter)| (value, parameter, false)));
    }
    let mut plan = plan_memory(&graph, &plan_steps, &aliases);
    for (value, parameter, in_place) in placements {
        // A parameter that only a folded value or nothing reads still needs its buffer bound.
        let index = match plan.parameters.iter().position(|name| *name == parameter) {
            Some(index) => index,
            None => {
                plan.parameters.push(parameter);
                plan.parameters.len() - 1
            }
        };
        if in_place {
            plan.locations.insert(value, Location::Parameter(index));
            update_plan.in_place.insert(value, index);
        } else {
            update_plan.copied.push((value, index));
        }
    }
    verify_plan(&plan, &plan_steps)?;
    let constants = constant_values(&graph, &plan)?;
    let mut bodies = HashMap::new();
    let mut body_times = BTreeMap::new();
    for (scan, body) in &fused.bodies {
        let (program, times) = compile_program(body, compiler, threads)?;
        bodies.insert(*scan, program);
        body_times.insert(*scan, times);
    }
    times.bodies = body_times;
    let program = Program {
        graph,
        steps,
        plan,
        constants,
        bodies,
        arenas: Mutex::new(Vec::new()),
        updates: update_plan,
        producer_views,
    };
    Ok((program, times))
}

/// Compiles a group and checks that each input value has the length its layout reads, so the
/// generated code stays inside the buffers it is handed. `in_place` is the value an epilogue
/// reads from the output buffer itself.
fn jit_call(
    graph: &PrimGraph,
    group: &ElementwiseGroup,
    compiler: &mut KernelCompiler,
    in_place: Option<PrimNodeId>,
) -> Result<(JitCall, JitCompile), RuntimeError> {
    let result = *group
        .nodes
        .last()
        .ok_or_else(|| RuntimeError::internal("an empty elementwise group"))?;
    let total = graph.node(result).ty.element_count();
    for (input, layout) in group.inputs.iter().zip(group.expr.input_layouts()) {
        let len = graph.node(*input).ty.element_count();
        let full_size_in_place = Some(*input) == in_place && len == total;
        if len != layout.required_len(total) || (Some(*input) == in_place && !full_size_in_place) {
            return Err(RuntimeError::Internal(format!(
                "elementwise input %{} has {len} elements, but its layout ({layout}) reads {}",
                input.index(),
                layout.required_len(total)
            )));
        }
    }
    let (kernel, time) = compiler.compile(group)?;
    let transcendental = group
        .expr
        .nodes()
        .iter()
        .filter(|node| is_transcendental(node))
        .count();
    let call = JitCall {
        kernel,
        inputs: group.inputs.clone(),
        cost_per_element: 1 + group.expr.nodes().len() + 8 * transcendental,
    };
    Ok((call, time))
}

fn is_transcendental(node: &crate::codegen::ElementwiseNode) -> bool {
    use crate::codegen::{ElementwiseNode, UnaryOp};
    matches!(
        node,
        ElementwiseNode::Unary(
            UnaryOp::Sigmoid
                | UnaryOp::Tanh
                | UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Gelu
                | UnaryOp::Silu
                | UnaryOp::Softplus,
            _
        )
    )
}

/// Checks what running relies on: in every step, the output and scratch ranges overlap neither
/// each other nor any range the step reads. Kernels then get disjoint slices of one arena.
fn verify_plan(plan: &MemoryPlan, steps: &[PlanStep]) -> Result<(), RuntimeError> {
    let overlaps = |a: (usize, usize), b: (usize, usize)| {
        a.0 < b.0 + b.1 && b.0 < a.0 + a.1 && a.1 > 0 && b.1 > 0
    };
    for (index, step) in steps.iter().enumerate() {
        let mut written: Vec<(usize, usize)> = Vec::new();
        if let Some(output) = step.output {
            match plan.locations.get(&output) {
                Some(Location::Arena { offset, len }) => written.push((*offset, *len)),
                _ => {
                    return Err(RuntimeError::internal(
                        "a kernel's output is not in the arena",
                    ))
                }
            }
        }
        written.extend(plan.scratch[index]);
        if written.len() == 2 && overlaps(written[0], written[1]) {
            return Err(RuntimeError::internal(
                "a kernel's scratch overlaps its output in the memory plan",
            ));
        }
        for read in &step.reads {
            let range = match plan.locations.get(read) {
                Some(Location::Arena { offset, len }) => (*offset, *len),
                Some(_) => continue,
                None => {
                    return Err(RuntimeError::Internal(format!(
                        "value %{} has no location",
                        read.index()
                    )))
                }
            };
            if written.iter().any(|written| overlaps(*written, range)) {
                return Err(RuntimeError::internal(
                    "an operand overlaps its output in the memory plan",
                ));
            }
        }
    }
    Ok(())
}

fn constant_values(graph: &PrimGraph, plan: &MemoryPlan) -> Result<Vec<Vec<f32>>, RuntimeError> {
    plan.constants
        .iter()
        .map(|id| match &graph.node(*id).op {
            PrimOp::Constant(Constant::Splat { shape, value }) => {
                Ok(vec![*value as f32; shape.iter().product()])
            }
            PrimOp::Constant(Constant::Dense(tensor)) => {
                Ok(tensor.data.iter().map(|value| *value as f32).collect())
            }
            _ => Err(RuntimeError::internal(
                "a planned constant is not a constant node",
            )),
        })
        .collect()
}
