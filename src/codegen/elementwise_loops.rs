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

use super::elementwise::{
    operands, BinaryOp, ElementwiseExpr, ElementwiseNode, InputLayout, UnaryOp,
};
use super::vector_math;

const F32X4: types::Type = types::F32X4;
const I64: types::Type = types::I64;
const UNROLL: i64 = 4;
const LANES: i64 = 4;
const BYTES_PER_ELEMENT: i64 = 4;

/// Emits the whole function body for `expr` (already validated) into an empty function with
/// parameters `(inputs, output, start, end)`.
pub(super) fn build_elementwise_body(builder: &mut FunctionBuilder<'_>, expr: &ElementwiseExpr) {
    let entry = builder.create_block();
    builder.append_block_params_for_function_params(entry);
    builder.switch_to_block(entry);
    let parameters = builder.block_params(entry).to_vec();
    let (input_table, output, start, end) =
        (parameters[0], parameters[1], parameters[2], parameters[3]);

    let needed = needed_nodes(expr);
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
    let loops = SegmentLoops {
        expr,
        needed: &needed,
        sources: &sources,
        output_base,
    };
    loops.emit(builder, length);

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

/// How the kernel reads one input, after folding degenerate broadcasts into simpler ones.
enum Access {
    /// Not read by the output.
    Unused,
    /// `input[i]`: a vector stream at the segment start.
    Stream { pointer: Value },
    /// `input[0]` splatted once, before any loop.
    Splat { value: Value },
    /// Per channel: one value per segment, `input[position]`.
    ChannelRun {
        pointer: Value,
        run: Run,
        channels: i64,
        inner: i64,
    },
    /// Per last dimension: a vector stream from `input[position]` per segment.
    RowRun {
        pointer: Value,
        run: Run,
        features: i64,
    },
}

/// Where a broadcast input stands: its index in the input and the elements left in its run.
struct Run {
    position: Variable,
    remaining: Variable,
}

/// What an input is inside one segment.
#[derive(Clone, Copy)]
enum Source {
    Unused,
    /// Vectors are loaded from this address plus the element offset.
    Stream(Value),
    /// The same value for every element of the segment.
    Splat(Value),
}

impl Access {
    fn run(&self) -> Option<&Run> {
        match self {
            Access::ChannelRun { run, .. } | Access::RowRun { run, .. } => Some(run),
            _ => None,
        }
    }
}

/// Which nodes the output depends on.
fn needed_nodes(expr: &ElementwiseExpr) -> Vec<bool> {
    let mut needed = vec![false; expr.nodes().len()];
    if let Some(output) = expr.output() {
        needed[output.0] = true;
    }
    for index in (0..expr.nodes().len()).rev() {
        if needed[index] {
            for operand in operands(&expr.nodes()[index]) {
                needed[operand.0] = true;
            }
        }
    }
    needed
}

/// Loads the input pointers and sets up each input's access, including the starting position
/// of broadcast runs (the only divisions in the kernel).
fn plan_accesses(
    builder: &mut FunctionBuilder<'_>,
    expr: &ElementwiseExpr,
    needed: &[bool],
    input_table: Value,
    start: Value,
) -> Vec<Access> {
    let mut used = vec![false; expr.input_layouts().len()];
    for (node, _) in expr
        .nodes()
        .iter()
        .zip(needed)
        .filter(|(_, needed)| **needed)
    {
        if let ElementwiseNode::Input(input) = node {
            used[*input] = true;
        }
    }
    let table_flags = MemFlagsData::new()
        .with_notrap()
        .with_aligned()
        .with_readonly();
    let mut accesses = Vec::new();
    for (input, layout) in expr.input_layouts().iter().enumerate() {
        if !used[input] {
            accesses.push(Access::Unused);
            continue;
        }
        let offset =
            i32::try_from(input * 8).expect("internal error (a bug in nnc): too many inputs");
        let pointer = builder.ins().load(I64, table_flags, input_table, offset);
        let access = match simplify_layout(*layout) {
            InputLayout::Contiguous => Access::Stream { pointer },
            InputLayout::Scalar => {
                let value = builder.ins().load(types::F32, data_flags(), pointer, 0);
                Access::Splat {
                    value: builder.ins().splat(F32X4, value),
                }
            }
            InputLayout::PerChannel { channels, inner } => {
                let (channels, inner) = (to_i64(channels), to_i64(inner));
                let channel_index = builder.ins().udiv_imm_u(start, inner);
                let position = builder.ins().urem_imm_u(channel_index, channels);
                let into_run = builder.ins().urem_imm_u(start, inner);
                let run_length = builder.ins().iconst(I64, inner);
                let remaining = builder.ins().isub(run_length, into_run);
                let run = new_run(builder, position, remaining);
                Access::ChannelRun {
                    pointer,
                    run,
                    channels,
                    inner,
                }
            }
            InputLayout::PerLastDim { features } => {
                let features = to_i64(features);
                let position = builder.ins().urem_imm_u(start, features);
                let run_length = builder.ins().iconst(I64, features);
                let remaining = builder.ins().isub(run_length, position);
                let run = new_run(builder, position, remaining);
                Access::RowRun {
                    pointer,
                    run,
                    features,
                }
            }
        };
        accesses.push(access);
    }
    accesses
}

/// Folds broadcasts that are really simpler ones: one channel or one feature is a scalar, and
/// channels of one element each are a per-last-dim pattern.
fn simplify_layout(layout: InputLayout) -> InputLayout {
    match layout {
        InputLayout::PerChannel { channels: 1, .. } | InputLayout::PerLastDim { features: 1 } => {
            InputLayout::Scalar
        }
        InputLayout::PerChannel { channels, inner: 1 } => {
            InputLayout::PerLastDim { features: channels }
        }
        other => other,
    }
}

fn new_run(builder: &mut FunctionBuilder<'_>, position: Value, remaining: Value) -> Run {
    let run = Run {
        position: builder.declare_var(I64),
        remaining: builder.declare_var(I64),
    };
    builder.def_var(run.position, position);
    builder.def_var(run.remaining, remaining);
    run
}

/// Each input's source for the segment starting at element `segment_start`.
fn segment_sources(
    builder: &mut FunctionBuilder<'_>,
    accesses: &[Access],
    segment_start: Value,
) -> Vec<Source> {
    accesses
        .iter()
        .map(|access| match access {
            Access::Unused => Source::Unused,
            Access::Stream { pointer } => {
                Source::Stream(element_address(builder, *pointer, segment_start))
            }
            Access::Splat { value } => Source::Splat(*value),
            Access::ChannelRun { pointer, run, .. } => {
                let position = builder.use_var(run.position);
                let address = element_address(builder, *pointer, position);
                let value = builder.ins().load(types::F32, data_flags(), address, 0);
                Source::Splat(builder.ins().splat(F32X4, value))
            }
            Access::RowRun { pointer, run, .. } => {
                let position = builder.use_var(run.position);
                Source::Stream(element_address(builder, *pointer, position))
            }
        })
        .collect()
}

/// Moves a broadcast input past a segment of `length` elements; when its run ends, to the next
/// channel (wrapping after the last) or back to the start of the row.
fn advance_run(builder: &mut FunctionBuilder<'_>, run: &Run, access: &Access, length: Value) {
    let position = builder.use_var(run.position);
    let remaining = builder.use_var(run.remaining);
    let remaining = builder.ins().isub(remaining, length);
    let run_ended = builder.ins().icmp_imm_u(IntCC::Equal, remaining, 0);
    let zero = builder.ins().iconst(I64, 0);
    let (next_position, run_length) = match *access {
        Access::ChannelRun {
            channels, inner, ..
        } => {
            let next = builder.ins().iadd_imm_u(position, 1);
            let past_last = builder.ins().icmp_imm_u(IntCC::Equal, next, channels);
            let next = builder.ins().select(past_last, zero, next);
            let next = builder.ins().select(run_ended, next, position);
            (next, inner)
        }
        Access::RowRun { features, .. } => {
            let moved = builder.ins().iadd(position, length);
            (builder.ins().select(run_ended, zero, moved), features)
        }
        _ => unreachable!("internal error (a bug in nnc): only broadcast runs advance"),
    };
    let run_length = builder.ins().iconst(I64, run_length);
    let remaining = builder.ins().select(run_ended, run_length, remaining);
    builder.def_var(run.position, next_position);
    builder.def_var(run.remaining, remaining);
}

/// The three loops over one segment.
struct SegmentLoops<'a> {
    expr: &'a ElementwiseExpr,
    needed: &'a [bool],
    sources: &'a [Source],
    output_base: Value,
}

impl SegmentLoops<'_> {
    fn emit(&self, builder: &mut FunctionBuilder<'_>, length: Value) {
        let length_bytes = builder.ins().ishl_imm_u(length, 2);
        let offset = builder.declare_var(I64);
        let zero = builder.ins().iconst(I64, 0);
        builder.def_var(offset, zero);
        let vector_bytes = LANES * BYTES_PER_ELEMENT;
        self.emit_loop(
            builder,
            offset,
            length_bytes,
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
            length_bytes,
            vector_bytes,
            |this, builder, base| {
                this.emit_vector(builder, base, 0);
            },
        );
        self.emit_loop(
            builder,
            offset,
            length_bytes,
            BYTES_PER_ELEMENT,
            |this, builder, base| {
                this.emit_element(builder, base);
            },
        );
    }

    /// `while offset + step <= length_bytes { body(offset); offset += step }`, test at the top;
    /// leaves the builder after the loop.
    fn emit_loop<F>(
        &self,
        builder: &mut FunctionBuilder<'_>,
        offset: Variable,
        length_bytes: Value,
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
            .icmp(IntCC::UnsignedLessThanOrEqual, stepped, length_bytes);
        builder.ins().brif(fits, body_block, &[], after, &[]);
        builder.switch_to_block(body_block);
        body(self, builder, current);
        let stepped = builder.ins().iadd_imm_u(current, step);
        builder.def_var(offset, stepped);
        builder.ins().jump(header, &[]);
        builder.switch_to_block(after);
    }

    /// One f32x4 of outputs at byte `offset + extra`.
    fn emit_vector(&self, builder: &mut FunctionBuilder<'_>, offset: Value, extra: i32) {
        let result = self.emit_expression(builder, |builder, source| match source {
            Source::Stream(base) => {
                let address = builder.ins().iadd(base, offset);
                builder.ins().load(F32X4, data_flags(), address, extra)
            }
            Source::Splat(value) => value,
            Source::Unused => unreachable!("internal error (a bug in nnc): unused input read"),
        });
        let address = builder.ins().iadd(self.output_base, offset);
        builder.ins().store(data_flags(), result, address, extra);
    }

    /// One output element at byte `offset`, through the vector code.
    fn emit_element(&self, builder: &mut FunctionBuilder<'_>, offset: Value) {
        let result = self.emit_expression(builder, |builder, source| match source {
            Source::Stream(base) => {
                let address = builder.ins().iadd(base, offset);
                let value = builder.ins().load(types::F32, data_flags(), address, 0);
                builder.ins().splat(F32X4, value)
            }
            Source::Splat(value) => value,
            Source::Unused => unreachable!("internal error (a bug in nnc): unused input read"),
        });
        let lane = builder.ins().extractlane(result, 0);
        let address = builder.ins().iadd(self.output_base, offset);
        builder.ins().store(data_flags(), lane, address, 0);
    }

    /// The expression on f32x4 values, `fetch` giving each input's vector.
    fn emit_expression<F>(&self, builder: &mut FunctionBuilder<'_>, mut fetch: F) -> Value
    where
        F: FnMut(&mut FunctionBuilder<'_>, Source) -> Value,
    {
        let nodes = self.expr.nodes();
        let mut values: Vec<Option<Value>> = vec![None; nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            if !self.needed[index] {
                continue;
            }
            let operand = |id: super::elementwise::NodeId| {
                values[id.0].expect("internal error (a bug in nnc): operand not computed")
            };
            let value = match *node {
                ElementwiseNode::Input(input) => fetch(builder, self.sources[input]),
                ElementwiseNode::Constant(constant) => {
                    vector_math::splat_constant(builder, constant)
                }
                ElementwiseNode::Unary(op, a) => emit_unary(builder, op, operand(a)),
                ElementwiseNode::Binary(op, a, b) => {
                    emit_binary(builder, op, operand(a), operand(b))
                }
                ElementwiseNode::Fma(a, b, c) => {
                    let (a, b, c) = (operand(a), operand(b), operand(c));
                    builder.ins().fma(a, b, c)
                }
            };
            values[index] = Some(value);
        }
        let output = self
            .expr
            .output()
            .expect("internal error (a bug in nnc): no output node");
        values[output.0].expect("internal error (a bug in nnc): output not computed")
    }
}

fn emit_unary(builder: &mut FunctionBuilder<'_>, op: UnaryOp, x: Value) -> Value {
    match op {
        UnaryOp::Relu => vector_math::relu(builder, x),
        UnaryOp::LeakyRelu { slope } => vector_math::leaky_relu(builder, x, slope),
        UnaryOp::Sigmoid => vector_math::sigmoid(builder, x),
        UnaryOp::Tanh => vector_math::tanh(builder, x),
        UnaryOp::Exp => vector_math::exp(builder, x),
        UnaryOp::Log => vector_math::log(builder, x),
        UnaryOp::Sqrt => builder.ins().sqrt(x),
        UnaryOp::Neg => builder.ins().fneg(x),
        UnaryOp::Abs => builder.ins().fabs(x),
        UnaryOp::Gelu => vector_math::gelu(builder, x),
        UnaryOp::Silu => vector_math::silu(builder, x),
        UnaryOp::Softplus => vector_math::softplus(builder, x),
    }
}

fn emit_binary(builder: &mut FunctionBuilder<'_>, op: BinaryOp, a: Value, b: Value) -> Value {
    match op {
        BinaryOp::Add => builder.ins().fadd(a, b),
        BinaryOp::Sub => builder.ins().fsub(a, b),
        BinaryOp::Mul => builder.ins().fmul(a, b),
        BinaryOp::Div => builder.ins().fdiv(a, b),
        BinaryOp::Max => vector_math::maximum(builder, a, b),
        BinaryOp::Min => vector_math::minimum(builder, a, b),
    }
}

/// `base + 4 * index`.
fn element_address(builder: &mut FunctionBuilder<'_>, base: Value, index: Value) -> Value {
    let bytes = builder.ins().ishl_imm_u(index, 2);
    builder.ins().iadd(base, bytes)
}

/// Loads and stores of tensor data: in bounds by the API's checks, but not necessarily aligned.
fn data_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn to_i64(extent: usize) -> i64 {
    i64::try_from(extent).expect("internal error (a bug in nnc): tensor extent beyond i64")
}

