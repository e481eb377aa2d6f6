//! How an elementwise kernel reads its inputs: the per-segment view of each input layout.
//!
//! A broadcast input (per channel or per last dimension) is tracked as a *run*: its position in
//! the input and the number of output elements left before that position changes. Only the
//! starting position needs divisions; after each segment the run advances with selects.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::{FunctionBuilder, Variable};

use super::elementwise::{ElementwiseExpr, ElementwiseNode, InputLayout};
use super::elementwise_loops::{data_flags, element_address};

const F32X4: types::Type = types::F32X4;
const I64: types::Type = types::I64;

/// How the kernel reads one input, after folding degenerate broadcasts into simpler ones.
pub(super) enum Access {
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
    /// Strided runs: a vector stream from `input[position]` per segment; at the end of a run
    /// the position jumps over the `gap` to the next one.
    StridedRun {
        pointer: Value,
        run: Run,
        length: i64,
        gap: i64,
    },
    /// Repeated rows: a vector stream from `input[position]` per segment; at the end of a row
    /// the position goes back to its start until the row has been read `repeat` times
    /// (`repeats_done` counts them), then on to the next row (the first after the last).
    RepeatedRun {
        pointer: Value,
        run: Run,
        row: i64,
        repeat: i64,
        total: i64,
        repeats_done: Variable,
    },
}

/// Where a broadcast input stands: its index in the input and the elements left in its run.
pub(super) struct Run {
    pub(super) position: Variable,
    pub(super) remaining: Variable,
}

/// What an input is inside one segment.
#[derive(Clone, Copy)]
pub(super) enum Source {
    Unused,
    /// Vectors are loaded from this address plus the element offset.
    Stream(Value),
    /// The same value for every element of the segment.
    Splat(Value),
}

impl Access {
    pub(super) fn run(&self) -> Option<&Run> {
        match self {
            Access::ChannelRun { run, .. }
            | Access::RowRun { run, .. }
            | Access::StridedRun { run, .. }
            | Access::RepeatedRun { run, .. } => Some(run),
            _ => None,
        }
    }
}

/// Loads the input pointers and sets up each input's access, including the starting position
/// of broadcast runs (the only divisions in the kernel).
pub(super) fn plan_accesses(
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
            InputLayout::RepeatedRows { rows, row, repeat } => {
                let (rows, row, repeat) = (to_i64(rows), to_i64(row), to_i64(repeat));
                let output_row = builder.ins().udiv_imm_u(start, row);
                let within = builder.ins().urem_imm_u(start, row);
                let done = builder.ins().urem_imm_u(output_row, repeat);
                let input_row = builder.ins().udiv_imm_u(output_row, repeat);
                let input_row = builder.ins().urem_imm_u(input_row, rows);
                let row_start = builder.ins().imul_imm_u(input_row, row);
                let position = builder.ins().iadd(row_start, within);
                let run_length = builder.ins().iconst(I64, row);
                let remaining = builder.ins().isub(run_length, within);
                let run = new_run(builder, position, remaining);
                let repeats_done = builder.declare_var(I64);
                builder.def_var(repeats_done, done);
                Access::RepeatedRun {
                    pointer,
                    run,
                    row,
                    repeat,
                    total: rows * row,
                    repeats_done,
                }
            }
            InputLayout::Strided {
                run: length,
                stride,
                offset,
            } => {
                let (length, stride, offset) = (to_i64(length), to_i64(stride), to_i64(offset));
                let row = builder.ins().udiv_imm_u(start, length);
                let into_run = builder.ins().urem_imm_u(start, length);
                let row_start = builder.ins().imul_imm_u(row, stride);
                let row_start = builder.ins().iadd_imm_u(row_start, offset);
                let position = builder.ins().iadd(row_start, into_run);
                let run_length = builder.ins().iconst(I64, length);
                let remaining = builder.ins().isub(run_length, into_run);
                let run = new_run(builder, position, remaining);
                Access::StridedRun {
                    pointer,
                    run,
                    length,
                    gap: stride - length,
                }
            }
        };
        accesses.push(access);
    }
    accesses
}

/// Folds layouts that are really simpler ones: one channel or one feature is a scalar,
/// channels of one element each are a per-last-dim pattern, and runs with no gap from the start
/// are the whole tensor.
fn simplify_layout(layout: InputLayout) -> InputLayout {
    match layout {
        InputLayout::Strided {
            run,
            stride,
            offset: 0,
        } if run == stride => InputLayout::Contiguous,
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
pub(super) fn segment_sources(
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
            Access::RowRun { pointer, run, .. }
            | Access::StridedRun { pointer, run, .. }
            | Access::RepeatedRun { pointer, run, .. } => {
                let position = builder.use_var(run.position);
                Source::Stream(element_address(builder, *pointer, position))
            }
        })
        .collect()
}

/// Moves a broadcast input past a segment of `length` elements; when its run ends, to the next
/// channel (wrapping after the last), back to the start of the row (per last dim, a repeated
/// row), over the gap (strided) or on to the next row (the last repeat of a row).
pub(super) fn advance_run(
    builder: &mut FunctionBuilder<'_>,
    run: &Run,
    access: &Access,
    length: Value,
) {
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
        Access::StridedRun {
            length: run_length,
            gap,
            ..
        } => {
            let moved = builder.ins().iadd(position, length);
            let jumped = builder.ins().iadd_imm_u(moved, gap);
            (builder.ins().select(run_ended, jumped, moved), run_length)
        }
        Access::RepeatedRun {
            row,
            repeat,
            total,
            repeats_done,
            ..
        } => {
            let moved = builder.ins().iadd(position, length);
            let done = builder.use_var(repeats_done);
            let next_done = builder.ins().iadd_imm_u(done, 1);
            let last_repeat = builder.ins().icmp_imm_u(IntCC::Equal, next_done, repeat);
            // After the last repeat: on to the next row (wrapping after the last row).
            let past_end = builder.ins().icmp_imm_u(IntCC::Equal, moved, total);
            let next_row = builder.ins().select(past_end, zero, moved);
            let same_row = builder.ins().iadd_imm_s(moved, -row);
            let position_after_row = builder.ins().select(last_repeat, next_row, same_row);
            let done_after_row = builder.ins().select(last_repeat, zero, next_done);
            let done = builder.ins().select(run_ended, done_after_row, done);
            builder.def_var(repeats_done, done);
            (
                builder.ins().select(run_ended, position_after_row, moved),
                row,
            )
        }
        _ => unreachable!("internal error (a bug in nnc): only broadcast runs advance"),
    };
    let run_length = builder.ins().iconst(I64, run_length);
    let remaining = builder.ins().select(run_ended, run_length, remaining);
    builder.def_var(run.position, next_position);
    builder.def_var(run.remaining, remaining);
}

fn to_i64(extent: usize) -> i64 {
    i64::try_from(extent).expect("internal error (a bug in nnc): tensor extent beyond i64")
}
