//! The loop nest of an elementwise kernel, in CLIF.
//!
//! The range `[start, end)` is cut into *segments* in which every broadcast input is either
//! constant (a per-channel bias within one channel) or contiguous (a per-last-dim bias within
//! one row). Inside a segment, every input is then a plain vector stream or one splatted value,
//! and the same loop serves all layouts:
//!
//! ```text
//! segment loop (one trip when no input has a per-channel or per-last-dim layout):
//!     length = min(end - s, remaining run of each broadcast input)
//!     while 16 elements remain: four f32x4 vectors (loads, expression, stores)
//!     while 4 elements remain:  one vector
//!     while 1 element remains:  one element, splatted, through the same vector code
//!     advance each broadcast input's position and remaining run (no divisions)
//! ```
//! The scalar tail runs the vector code on a splatted element, so every element gets
//! bit-identical results wherever the range starts. Loop tests sit at the top of each loop.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::{FunctionBuilder, Variable};

use super::elementwise::{operands, BinaryOp, ElementwiseExpr, ElementwiseNode, NodeId};
use super::elementwise_inputs::{advance_run, plan_accesses, segment_sources, Source};
use super::elementwise_stages::StagePlan;
use super::vector_math;

const F32X4: types::Type = types::F32X4;
const I64: types::Type = types::I64;
/// Vectors per trip of the main loop. Four was faster than one for every operation measured
/// (relu 0.08 vs 0.11 ns per element in L2, exp 0.66 vs 0.79, gelu 3.0 vs 3.2), even though the
/// e-graph shares constants between the copies and the longest bodies then spill a little.
const UNROLL: i64 = 4;
const LANES: i64 = 4;
const BYTES_PER_ELEMENT: i64 = 4;

/// Emits the whole function body for `expr` (already validated) into an empty function with
/// parameters `(inputs, output, start, end)`.
/// `vector_library` lets costly functions run as calls into the wide-vector library
/// (`elementwise_stages.rs`).
pub(super) fn build_elementwise_body(
    builder: &mut FunctionBuilder<'_>,
    expr: &ElementwiseExpr,
    vector_library: bool,
) {
    let entry = builder.create_block();
    builder.append_block_params_for_function_params(entry);
    builder.switch_to_block(entry);
    let parameters = builder.block_params(entry).to_vec();
    let (input_table, output, start, end) =
        (parameters[0], parameters[1], parameters[2], parameters[3]);

    let needed = needed_nodes(expr);
    let stages = vector_library
        .then(|| StagePlan::new(expr, &needed))
        .flatten();
    let accesses = plan_accesses(builder, expr, &needed, input_table, start);
    let element = builder.declare_var(I64);
    builder.def_var(element, start);

    let segment_header = builder.create_block();
    let segment_body = builder.create_block();
    let exit = builder.create_block();
    builder.ins().jump(segment_header, &[]);

    builder.switch_to_block(segment_header);
    let segment_start = builder.use_var(element);
    let more = builder
        .ins()
        .icmp(IntCC::UnsignedLessThan, segment_start, end);
    builder.ins().brif(more, segment_body, &[], exit, &[]);

    builder.switch_to_block(segment_body);
    let mut length = builder.ins().isub(end, segment_start);
    for access in &accesses {
        if let Some(run) = access.run() {
            let remaining = builder.use_var(run.remaining);
            length = builder.ins().umin(length, remaining);
        }
    }
    let sources = segment_sources(builder, &accesses, segment_start);
    let output_base = element_address(builder, output, segment_start);
    match &stages {
        Some(stages) => stages.emit_segment(builder, &sources, output_base, length),
        None => {
            let output_node = expr
                .output()
                .expect("internal error (a bug in nnc): no output");
            let loops = SegmentLoops {
                expr,
                needed: &needed,
                sources: &sources,
                leaves: &[],
                targets: &[(output_node, output_base)],
            };
            let zero = builder.ins().iconst(I64, 0);
            let length_bytes = builder.ins().ishl_imm_u(length, 2);
            loops.emit(builder, zero, length_bytes);
        }
    }

    let next_start = builder.ins().iadd(segment_start, length);
    builder.def_var(element, next_start);
    for access in &accesses {
        if let Some(run) = access.run() {
            advance_run(builder, run, access, length);
        }
    }
    builder.ins().jump(segment_header, &[]);

    builder.switch_to_block(exit);
    builder.ins().return_(&[]);
    builder.seal_all_blocks();
}

/// Which nodes the output depends on.
fn needed_nodes(expr: &ElementwiseExpr) -> Vec<bool> {
    let output = expr.output().into_iter().collect::<Vec<_>>();
    closure_of(expr, &output, &[])
}

/// The nodes that `targets` depend on, not looking through the `stops` (whose values are read).
pub(super) fn closure_of(expr: &ElementwiseExpr, targets: &[NodeId], stops: &[bool]) -> Vec<bool> {
    let mut needed = vec![false; expr.nodes().len()];
    for target in targets {
        needed[target.0] = true;
    }
    for index in (0..expr.nodes().len()).rev() {
        if needed[index] && !stops.get(index).copied().unwrap_or(false) {
            for operand in operands(&expr.nodes()[index]) {
                needed[operand.0] = true;
            }
        }
    }
    needed
}

/// The three loops over a range of one segment: they compute the `needed` nodes and store each
/// target's value at its base address plus the element's byte offset.
pub(super) struct SegmentLoops<'a> {
    pub(super) expr: &'a ElementwiseExpr,
    pub(super) needed: &'a [bool],
    pub(super) sources: &'a [Source],
    /// Per node, a base address to load its value from instead of computing it (the result of a
    /// library call in a staged kernel); empty when there are none.
    pub(super) leaves: &'a [Option<Value>],
    pub(super) targets: &'a [(NodeId, Value)],
}

impl SegmentLoops<'_> {
    /// Loops over the byte offsets `[start_bytes, end_bytes)` of the segment.
    pub(super) fn emit(
        &self,
        builder: &mut FunctionBuilder<'_>,
        start_bytes: Value,
        end_bytes: Value,
    ) {
        let offset = builder.declare_var(I64);
        builder.def_var(offset, start_bytes);
        let vector_bytes = LANES * BYTES_PER_ELEMENT;
        self.emit_loop(
            builder,
            offset,
            end_bytes,
            UNROLL * vector_bytes,
            |this, builder, base| {
                for vector in 0..UNROLL {
                    this.emit_vector(
                        builder,
                        base,
                        i32::try_from(vector * vector_bytes).unwrap_or(0),
                    );
                }
            },
        );
        self.emit_loop(
            builder,
            offset,
            end_bytes,
            vector_bytes,
            |this, builder, base| {
                this.emit_vector(builder, base, 0);
            },
        );
        self.emit_loop(
            builder,
            offset,
            end_bytes,
            BYTES_PER_ELEMENT,
            |this, builder, base| {
                this.emit_element(builder, base);
            },
        );
    }

    /// `while offset + step <= end_bytes { body(offset); offset += step }`, test at the top;
    /// leaves the builder after the loop.
    fn emit_loop<F>(
        &self,
        builder: &mut FunctionBuilder<'_>,
        offset: Variable,
        end_bytes: Value,
        step: i64,
        body: F,
    ) where
        F: FnOnce(&Self, &mut FunctionBuilder<'_>, Value),
    {
        let header = builder.create_block();
        let body_block = builder.create_block();
        let after = builder.create_block();
        builder.ins().jump(header, &[]);
        builder.switch_to_block(header);
        let current = builder.use_var(offset);
        let stepped = builder.ins().iadd_imm_u(current, step);
        let fits = builder
            .ins()
            .icmp(IntCC::UnsignedLessThanOrEqual, stepped, end_bytes);
        builder.ins().brif(fits, body_block, &[], after, &[]);
        builder.switch_to_block(body_block);
        body(self, builder, current);
        let stepped = builder.ins().iadd_imm_u(current, step);
        builder.def_var(offset, stepped);
        builder.ins().jump(header, &[]);
        builder.switch_to_block(after);
    }

    /// One f32x4 of each target at byte `offset + extra`.
    fn emit_vector(&self, builder: &mut FunctionBuilder<'_>, offset: Value, extra: i32) {
        let values = self.emit_expression(builder, |builder, source| match source {
            Source::Stream(base) => {
                let address = builder.ins().iadd(base, offset);
                builder.ins().load(F32X4, data_flags(), address, extra)
            }
            Source::Splat(value) => value,
            Source::Unused => unreachable!("internal error (a bug in nnc): unused input read"),
        });
        for (target, base) in self.targets {
            let address = builder.ins().iadd(*base, offset);
            builder
                .ins()
                .store(data_flags(), target_value(&values, *target), address, extra);
        }
    }

    /// One element of each target at byte `offset`, through the vector code.
    fn emit_element(&self, builder: &mut FunctionBuilder<'_>, offset: Value) {
        let values = self.emit_expression(builder, |builder, source| match source {
            Source::Stream(base) => {
                let address = builder.ins().iadd(base, offset);
                let value = builder.ins().load(types::F32, data_flags(), address, 0);
                builder.ins().splat(F32X4, value)
            }
            Source::Splat(value) => value,
            Source::Unused => unreachable!("internal error (a bug in nnc): unused input read"),
        });
        for (target, base) in self.targets {
            let lane = builder.ins().extractlane(target_value(&values, *target), 0);
            let address = builder.ins().iadd(*base, offset);
            builder.ins().store(data_flags(), lane, address, 0);
        }
    }

    /// The needed nodes on f32x4 values, `fetch` giving each input's (and leaf's) vector.
    fn emit_expression<F>(
        &self,
        builder: &mut FunctionBuilder<'_>,
        mut fetch: F,
    ) -> Vec<Option<Value>>
    where
        F: FnMut(&mut FunctionBuilder<'_>, Source) -> Value,
    {
        let nodes = self.expr.nodes();
        let mut values: Vec<Option<Value>> = vec![None; nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            if !self.needed[index] {
                continue;
            }
            if let Some(Some(base)) = self.leaves.get(index) {
                values[index] = Some(fetch(builder, Source::Stream(*base)));
                continue;
            }
            let operand = |id: NodeId| {
                values[id.0].expect("internal error (a bug in nnc): operand not computed")
            };
            let value = match *node {
                ElementwiseNode::Input(input) => fetch(builder, self.sources[input]),
                ElementwiseNode::Constant(constant) => {
                    vector_math::splat_constant(builder, constant)
                }
                ElementwiseNode::Unary(op, a) => vector_math::unary(builder, op, operand(a)),
                // A divisor that is one value for the whole segment (a per-row sum in
                // softmax) is inverted once, outside the loops, and multiplied per element:
                // `divps` on four lanes was the whole cost of softmax's normalization, and
                // `a * (1 / b)` is within 1.5 ulp of `a / b`.
                ElementwiseNode::Binary(BinaryOp::Div, a, b) if self.is_segment_constant(b) => {
                    let one = vector_math::splat_constant(builder, 1.0);
                    let reciprocal = builder.ins().fdiv(one, operand(b));
                    builder.ins().fmul(operand(a), reciprocal)
                }
                ElementwiseNode::Binary(op, a, b) => {
                    vector_math::binary(builder, op, operand(a), operand(b))
                }
                ElementwiseNode::Fma(a, b, c) => {
                    let (a, b, c) = (operand(a), operand(b), operand(c));
                    builder.ins().fma(a, b, c)
                }
            };
            values[index] = Some(value);
        }
        values
    }
}

impl SegmentLoops<'_> {
    /// Whether `node` is an input read as one splatted value for the whole segment.
    fn is_segment_constant(&self, node: NodeId) -> bool {
        let is_leaf = matches!(self.leaves.get(node.0), Some(Some(_)));
        match self.expr.nodes()[node.0] {
            ElementwiseNode::Input(input) if !is_leaf => {
                matches!(self.sources[input], Source::Splat(_))
            }
            _ => false,
        }
    }
}

fn target_value(values: &[Option<Value>], target: NodeId) -> Value {
    values[target.0].expect("internal error (a bug in nnc): a target was not computed")
}

/// `base + 4 * index`.
pub(super) fn element_address(
    builder: &mut FunctionBuilder<'_>,
    base: Value,
    index: Value,
) -> Value {
    let bytes = builder.ins().ishl_imm_u(index, 2);
    builder.ins().iadd(base, bytes)
}

/// Loads and stores of tensor data: in bounds by the API's checks, but not necessarily aligned.
pub(super) fn data_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}
