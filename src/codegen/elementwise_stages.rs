//! Staged elementwise kernels: expressions whose costly functions (exp, sigmoid, tanh) run as
//! calls into the wide-vector library (`vector_library.rs`) rather than as f32x4 CLIF.
//!
//! Each such *library node* gets a stage: one more than the stage of its argument (inputs and
//! constants are stage 0, every other node takes the largest stage of its operands). A segment
//! is then cut into blocks of up to [`BLOCK`] elements, and each block runs stage by stage:
//!
//! ```text
//! stage 0 loop:  compute the arguments of the stage-1 library nodes, store them in their buffers
//! calls:         f(buffer) for every stage-1 library node, in place (AVX-512 or AVX2 lanes)
//! stage 1 loop:  read stage-1 results from the buffers, compute the stage-2 arguments ...
//! ...
//! last loop:     compute the output from the buffers and the inputs, store it
//! ```
//!
//! The loops are the ordinary f32x4 loops (`SegmentLoops`) with library results as extra
//! leaves; other nodes a later stage needs are recomputed there from the inputs (they are
//! cheap). Loops that would only copy are skipped: a call reads an argument that is a streamed
//! input (or another library result) where it lies, and writes an output that is a library node
//! straight into the output. The LSTM cell's gates, `sigmoid(i) * g + sigmoid(f) * tanh(c)`,
//! thus become three calls and one loop per block.
//!
//! Every element runs the same instructions wherever a block or a thread's range starts (the
//! library pads its tails into full vectors), so results stay independent of the split.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, StackSlotData, StackSlotKind, Value};
use cranelift_frontend::FunctionBuilder;

use super::elementwise::{ElementwiseExpr, ElementwiseNode, NodeId};
use super::elementwise_inputs::Source;
use super::elementwise_loops::{closure_of, SegmentLoops};
use super::vector_library::{library_function, LibraryFn};

const I64: types::Type = types::I64;
/// Elements per block: 1 KiB per library node's buffer, large enough that a call's overhead
/// (a few ns) is small against its work, small enough that all buffers stay in L1.
const BLOCK: i64 = 256;
const BYTES_PER_ELEMENT: i64 = 4;

/// The stages of an expression with at least one library node.
pub(super) struct StagePlan<'a> {
    expr: &'a ElementwiseExpr,
    /// The library function of each needed node computed by a call.
    library: Vec<Option<LibraryFn>>,
    stage: Vec<usize>,
    output: NodeId,
}

impl<'a> StagePlan<'a> {
    /// The plan for `expr` (whose `needed` nodes the output depends on), or `None` when no
    /// needed node has a library function on this CPU: the kernel is then one f32x4 loop.
    pub(super) fn new(expr: &'a ElementwiseExpr, needed: &[bool]) -> Option<StagePlan<'a>> {
        let output = expr.output()?;
        let library: Vec<Option<LibraryFn>> = expr
            .nodes()
            .iter()
            .zip(needed)
            .map(|(node, needed)| match node {
                ElementwiseNode::Unary(op, _) if *needed => library_function(*op),
                _ => None,
            })
            .collect();
        if library.iter().all(Option::is_none) {
            return None;
        }
        let mut stage = vec![0; expr.nodes().len()];
        for (index, node) in expr.nodes().iter().enumerate() {
            let operand_stage = super::elementwise::operands(node)
                .iter()
                .map(|operand| stage[operand.0])
                .max()
                .unwrap_or(0);
            stage[index] = operand_stage + usize::from(library[index].is_some());
        }
        Some(StagePlan {
            expr,
            library,
            stage,
            output,
        })
    }

    /// Emits the block loop over one segment of `length` elements, whose inputs are `sources`
    /// and whose output starts at `output_base`.
    pub(super) fn emit_segment(
        &self,
        builder: &mut FunctionBuilder<'_>,
        sources: &[Source],
        output_base: Value,
        length: Value,
    ) {
        let library_nodes: Vec<usize> = (0..self.library.len())
            .filter(|index| self.library[*index].is_some())
            .collect();
        let slots: Vec<_> = library_nodes
            .iter()
            .map(|_| {
                let size = (BLOCK * BYTES_PER_ELEMENT) as u32;
                builder.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    size,
                    6,
                ))
            })
            .collect();
        let mut signature = builder.func.signature.clone();
        signature.params = vec![AbiParam::new(I64); 3];
        signature.returns.clear();
        let signature = builder.import_signature(signature);

        let length_bytes = builder.ins().ishl_imm_u(length, 2);
        let block_start = builder.declare_var(I64);
        let zero = builder.ins().iconst(I64, 0);
        builder.def_var(block_start, zero);
        let header = builder.create_block();
        let body = builder.create_block();
        let after = builder.create_block();
        builder.ins().jump(header, &[]);
        builder.switch_to_block(header);
        let start = builder.use_var(block_start);
        let more = builder
            .ins()
            .icmp(IntCC::UnsignedLessThan, start, length_bytes);
        builder.ins().brif(more, body, &[], after, &[]);

        builder.switch_to_block(body);
        let stepped = builder.ins().iadd_imm_u(start, BLOCK * BYTES_PER_ELEMENT);
        let end = builder.ins().umin(stepped, length_bytes);
        let count_bytes = builder.ins().isub(end, start);
        let count = builder.ins().ushr_imm_u(count_bytes, 2);
        // Per node: its buffer's address, and the base that element byte offsets index (the
        // buffer holds the block only, which starts at byte `start` of the segment).
        let mut buffer = vec![None; self.library.len()];
        let mut buffer_base = vec![None; self.library.len()];
        for (node, slot) in library_nodes.iter().zip(&slots) {
            let address = builder.ins().stack_addr(I64, *slot, 0);
            buffer[*node] = Some(address);
            buffer_base[*node] = Some(builder.ins().isub(address, start));
        }
        let last_stage = self.stage[self.output.0];
        for stage in 0..=last_stage {
            for &node in &library_nodes {
                if self.stage[node] != stage {
                    continue;
                }
                let source = match self.direct_argument(node, sources, &buffer) {
                    Some(Direct::Stream(base)) => builder.ins().iadd(base, start),
                    Some(Direct::Buffer(address)) => address,
                    None => buffer[node].expect("internal error (a bug in nnc): no buffer"),
                };
                let destination = if node == self.output.0 {
                    builder.ins().iadd(output_base, start)
                } else {
                    buffer[node].expect("internal error (a bug in nnc): no buffer")
                };
                let function = self.library[node].expect("internal error (a bug in nnc)");
                let callee = builder.ins().iconst(I64, function as usize as i64);
                builder
                    .ins()
                    .call_indirect(signature, callee, &[source, destination, count]);
            }
            let mut targets: Vec<(NodeId, Value)> = Vec::new();
            for &node in &library_nodes {
                if self.stage[node] == stage + 1
                    && self.direct_argument(node, sources, &buffer).is_none()
                {
                    let base = buffer_base[node].expect("internal error (a bug in nnc)");
                    targets.push((self.argument(node), base));
                }
            }
            if stage == last_stage && self.library[self.output.0].is_none() {
                targets.push((self.output, output_base));
            }
            if targets.is_empty() {
                continue;
            }
            // Library results of this stage and before are read from their buffers; the
            // output's own result went straight to the output, and nothing reads it.
            let leaves: Vec<Option<Value>> = (0..self.library.len())
                .map(|node| {
                    let ready = self.stage[node] <= stage && node != self.output.0;
                    buffer_base[node].filter(|_| ready)
                })
                .collect();
            let stops: Vec<bool> = leaves.iter().map(Option::is_some).collect();
            let target_nodes: Vec<NodeId> = targets.iter().map(|(node, _)| *node).collect();
            let needed = closure_of(self.expr, &target_nodes, &stops);
            let loops = SegmentLoops {
                expr: self.expr,
                needed: &needed,
                sources,
                leaves: &leaves,
                targets: &targets,
            };
            loops.emit(builder, start, end);
        }
        builder.def_var(block_start, end);
        builder.ins().jump(header, &[]);
        builder.switch_to_block(after);
    }

    /// The operand of library node `node`.
    fn argument(&self, node: usize) -> NodeId {
        match self.expr.nodes()[node] {
            ElementwiseNode::Unary(_, argument) => argument,
            _ => unreachable!("internal error (a bug in nnc): a library node is not unary"),
        }
    }

    /// Where a call can read its argument without a loop storing it first: a streamed input,
    /// or another library node's buffer.
    fn direct_argument(
        &self,
        node: usize,
        sources: &[Source],
        buffer: &[Option<Value>],
    ) -> Option<Direct> {
        let argument = self.argument(node);
        if let Some(address) = buffer[argument.0] {
            return Some(Direct::Buffer(address));
        }
        match self.expr.nodes()[argument.0] {
            ElementwiseNode::Input(input) => match sources[input] {
                Source::Stream(base) => Some(Direct::Stream(base)),
                _ => None,
            },
            _ => None,
        }
    }
}

enum Direct {
    /// A segment's stream: the block starts `start` bytes into it.
    Stream(Value),
    /// A library node's buffer, which holds exactly the block.
    Buffer(Value),
}
