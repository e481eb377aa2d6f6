//! The kernel plan: a side table that groups the run graph's nodes into kernels, in execution
//! order. The graph itself is not changed; each kernel names the node whose value it writes to
//! memory and the nodes it covers (whose values never reach memory).
//!
//! Also here: how a group of elementwise nodes becomes a codegen [`ElementwiseExpr`], and which
//! broadcast patterns codegen's [`InputLayout`]s can read.

use std::collections::HashMap;

use crate::codegen::{BinaryOp, ElementwiseExpr, InputLayout, NodeId, UnaryOp};
use crate::prim::{BinaryFn, Constant, PrimGraph, PrimNodeId, PrimOp, UnaryFn};

/// Kernels in execution order.
#[derive(Clone, Debug, Default)]
pub struct KernelPlan {
    pub kernels: Vec<Kernel>,
}

#[derive(Clone, Debug)]
pub struct Kernel {
    pub kind: KernelKind,
    /// The node whose value the kernel leaves in memory.
    pub output: PrimNodeId,
    /// Every node the kernel computes, in schedule order; `output` is the last.
    pub covers: Vec<PrimNodeId>,
}

#[derive(Clone, Debug)]
pub enum KernelKind {
    /// One node run by the Rust runtime (pooling, reductions, layout ops, scans...).
    Primitive,
    /// A reshape: its value is its operand's memory, so nothing runs.
    Alias,
    /// A chain of elementwise nodes compiled into one JIT function.
    Elementwise(ElementwiseGroup),
    /// A matmul or convolution (Rust GEMM), optionally adding a per-channel bias itself, then
    /// a JIT epilogue over its output.
    Producer(ProducerKernel),
    /// Softmax or layer norm over rows (`row_normalizations.rs`), by the Rust runtime.
    RowNormalization(RowNormalization),
}

/// A softmax or layer norm of every row of `cols` contiguous values of `input` (the trailing
/// axes of a row-major tensor), written to the kernel's output of the same shape.
#[derive(Clone, Debug, PartialEq)]
pub struct RowNormalization {
    pub kind: RowNormalizationKind,
    pub input: PrimNodeId,
    pub cols: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RowNormalizationKind {
    /// `exp(x - max) / sum(exp(x - max))`.
    Softmax,
    /// `(x - mean) / sqrt(mean((x - mean)^2) + epsilon)`, then `* scale` and `+ shift` (one
    /// value per row element) when given.
    LayerNorm {
        epsilon: f64,
        scale: Option<PrimNodeId>,
        shift: Option<PrimNodeId>,
    },
}

impl RowNormalization {
    /// The values the kernel reads.
    pub fn reads(&self) -> Vec<PrimNodeId> {
        let mut reads = vec![self.input];
        if let RowNormalizationKind::LayerNorm { scale, shift, .. } = &self.kind {
            reads.extend(scale.iter().chain(shift));
        }
        reads
    }
}

/// Elementwise nodes computed by one JIT function.
#[derive(Clone, Debug)]
pub struct ElementwiseGroup {
    /// The members in schedule order; the last is the group's result.
    pub nodes: Vec<PrimNodeId>,
    /// The values the function reads from memory: input `k` of `expr` is `inputs[k]`.
    pub inputs: Vec<PrimNodeId>,
    pub expr: ElementwiseExpr,
    /// Slices the function reads where they lie, through a strided layout over the sliced
    /// value (see [`slice_read_in_place`]): no kernel computes them.
    pub slices_read_in_place: Vec<PrimNodeId>,
}

#[derive(Clone, Debug)]
pub struct ProducerKernel {
    /// The `MatMul`, `Conv2d` or `ConvTranspose2d` node.
    pub producer: PrimNodeId,
    /// `(add node, bias value)` when the GEMM adds a per-output-channel bias itself.
    pub bias: Option<(PrimNodeId, PrimNodeId)>,
    /// Runs in place over the output; it reads [`ProducerKernel::result`] from there.
    pub epilogue: Option<ElementwiseGroup>,
    /// What a matmul applies as it writes each tile, instead of an epilogue pass.
    pub post: ProducerPost,
    /// Per operand of a matmul, empty or `None` when it is read as it is: the value in memory
    /// it is read from through slices, reshapes and transposes that no kernel computes
    /// (`matmul_operand_views.rs`).
    pub operand_views: Vec<Option<OperandView>>,
}

/// A matmul's post-operations (`kernels::gemm::GemmPost`): `relu(residual + result)`, each
/// part optional, computed as the GEMM writes each tile of its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerPost {
    /// A value of the output's shape, row-major, added element by element.
    pub residual: Option<PrimNodeId>,
    pub relu: bool,
}

impl ProducerPost {
    pub fn is_empty(&self) -> bool {
        self.residual.is_none() && !self.relu
    }
}

/// An operand read from another value in memory: element `index` (a multi-index over the
/// operand's shape) is `source[offset + sum(index[d] * strides[d])]`.
#[derive(Clone, Debug, PartialEq)]
pub struct OperandView {
    pub source: PrimNodeId,
    pub offset: usize,
    pub strides: Vec<usize>,
}

impl ProducerKernel {
    /// The value the GEMM leaves in the output buffer: the product, plus the bias if any.
    pub fn result(&self) -> PrimNodeId {
        self.bias.map_or(self.producer, |(add, _)| add)
    }
}

impl KernelPlan {
    /// No fusion: every computed node is its own primitive kernel (reshapes copy).
    pub fn one_per_node(graph: &PrimGraph) -> KernelPlan {
        let kernels = super::schedule(graph)
            .into_iter()
            .filter(|id| !is_source(&graph.node(*id).op))
            .map(|id| Kernel {
                kind: KernelKind::Primitive,
                output: id,
                covers: vec![id],
            })
            .collect();
        KernelPlan { kernels }
    }

    /// The index of the kernel covering each node.
    pub fn kernel_of_node(&self) -> HashMap<PrimNodeId, usize> {
        let mut map = HashMap::new();
        for (index, kernel) in self.kernels.iter().enumerate() {
            for node in &kernel.covers {
                map.insert(*node, index);
            }
        }
        map
    }
}

impl KernelKind {
    /// The kind as `--emit kernels` names it.
    pub fn name(&self, graph: &PrimGraph, output: PrimNodeId) -> String {
        match self {
            KernelKind::Primitive => graph.node(output).op.name().to_string(),
            KernelKind::Alias => "alias".to_string(),
            KernelKind::Elementwise(_) => "elementwise".to_string(),
            KernelKind::Producer(producer) => {
                let mut name = graph.node(producer.producer).op.name().to_string();
                if producer.bias.is_some() {
                    name.push_str("+bias");
                }
                if producer.post.residual.is_some() {
                    name.push_str("+residual");
                }
                if producer.post.relu {
                    name.push_str("+relu");
                }
                if producer.epilogue.is_some() {
                    name.push_str("+epilogue");
                }
                name
            }
            KernelKind::RowNormalization(row) => match row.kind {
                RowNormalizationKind::Softmax => "softmax_rows".to_string(),
                RowNormalizationKind::LayerNorm { .. } => "layer_norm_rows".to_string(),
            },
        }
    }
}

/// Inputs, parameters and constants: values that exist before any kernel runs.
pub(super) fn is_source(op: &PrimOp) -> bool {
    matches!(
        op,
        PrimOp::Input { .. } | PrimOp::Parameter { .. } | PrimOp::Constant(_)
    )
}

/// How a value of `shape`, broadcast to `output`, is read by an elementwise kernel: the whole
/// tensor, a scalar, a block of consecutive axes (`[C, 1, 1]` over NCHW is per channel, `[F]`
/// over `[..., F]` per last dim), or two blocks with broadcast axes between them, the second
/// reaching the last axis (`[B, 1, T]` against `[B, H, T]`, `[N, 1, F]` against `[N, T, F]`:
/// repeated rows). Other broadcasts have no layout.
pub(super) fn input_layout(shape: &[usize], output: &[usize]) -> Option<InputLayout> {
    if shape.len() > output.len() {
        return None;
    }
    let aligned: Vec<usize> = std::iter::repeat_n(1, output.len() - shape.len())
        .chain(shape.iter().copied())
        .collect();
    let count: usize = aligned.iter().product();
    if count == 1 {
        return Some(InputLayout::Scalar);
    }
    if aligned == output {
        return Some(InputLayout::Contiguous);
    }
    let first = aligned.iter().position(|size| *size != 1)?;
    let last = aligned.iter().rposition(|size| *size != 1)?;
    if (first..=last).any(|axis| aligned[axis] != output[axis]) {
        return repeated_rows(&aligned, output, first, last);
    }
    let inner: usize = output[last + 1..].iter().product();
    Some(if inner == 1 {
        InputLayout::PerLastDim { features: count }
    } else {
        InputLayout::PerChannel {
            channels: count,
            inner,
        }
    })
}

/// `aligned` (non-1 from `first` to `last`) as rows repeated over a gap of broadcast axes:
/// `aligned[first..gap]` and `aligned[gap_end..]` match the output, `aligned[gap..gap_end]` is
/// all 1 (and `last` is the last axis, so each row is contiguous).
fn repeated_rows(
    aligned: &[usize],
    output: &[usize],
    first: usize,
    last: usize,
) -> Option<InputLayout> {
    let matches = |axis: usize| aligned[axis] == output[axis];
    let gap = (first..=last).find(|axis| !matches(*axis))?;
    let gap_end = (gap..=last).find(|axis| aligned[*axis] != 1)?;
    let blocks_match = (first..gap).chain(gap_end..=last).all(matches);
    let gap_broadcast = (gap..gap_end).all(|axis| aligned[axis] == 1);
    if !blocks_match || !gap_broadcast || last + 1 != output.len() {
        return None;
    }
    Some(InputLayout::RepeatedRows {
        rows: aligned[first..gap].iter().product(),
        row: aligned[gap_end..].iter().product(),
        repeat: output[gap..gap_end].iter().product(),
    })
}

/// How elementwise kernels read slice `id` where it lies instead of from a copy: the sliced
/// value and the strided layout of the slice's elements in it. `None` unless every reader of
/// the slice is an elementwise node that a JIT kernel computes and that has the slice's shape
/// (so it sits in a group of that shape and reads the slice element for element), the slice is
/// no graph output, and the sliced value is not itself such a slice (it must be in memory).
/// Then no kernel copies the slice: an LSTM cell's four gates are read straight out of the
/// step's `[N, 4H]` product.
pub(super) fn slice_read_in_place(
    graph: &PrimGraph,
    id: PrimNodeId,
) -> Option<(PrimNodeId, InputLayout)> {
    let node = graph.node(id);
    let PrimOp::Slice { axis, start, end } = node.op else {
        return None;
    };
    let source = *graph.operands(id).first()?;
    let source_shape = &graph.node(source).ty.shape;
    let sliced_again = matches!(graph.node(source).op, PrimOp::Slice { .. });
    let is_output = graph.outputs.iter().any(|(_, output)| *output == id);
    let users = graph.users(id);
    let readers_ok = !users.is_empty()
        && users.iter().all(|user| {
            graph.node(*user).ty.shape == node.ty.shape
                && super::group_elementwise::is_jit_elementwise(graph, *user)
        });
    if sliced_again || is_output || !readers_ok || node.ty.element_count() == 0 {
        return None;
    }
    let inner: usize = source_shape[axis + 1..].iter().product();
    let layout = InputLayout::Strided {
        run: (end - start) * inner,
        stride: source_shape[axis] * inner,
        offset: start * inner,
    };
    Some((source, layout))
}

/// The codegen form of an elementwise primitive, or `None` for one the JIT does not compute
/// with the same semantics (`max`: codegen's `Max` propagates a NaN only from its left operand).
pub(super) fn elementwise_op(op: &PrimOp) -> Option<ElementwiseOp> {
    match op {
        PrimOp::Unary(UnaryFn::Reciprocal) => Some(ElementwiseOp::Reciprocal),
        PrimOp::Unary(function) => Some(ElementwiseOp::Unary(unary_op(*function)?)),
        PrimOp::Binary(BinaryFn::Max) => None,
        PrimOp::Binary(function) => Some(ElementwiseOp::Binary(match function {
            BinaryFn::Add => BinaryOp::Add,
            BinaryFn::Sub => BinaryOp::Sub,
            BinaryFn::Mul => BinaryOp::Mul,
            BinaryFn::Div => BinaryOp::Div,
            BinaryFn::Max => return None,
            // The JIT's ordered compares are false for NaN, as the primitives say.
            BinaryFn::Greater => BinaryOp::Greater,
            BinaryFn::GreaterEqual => BinaryOp::GreaterEqual,
            BinaryFn::Equal => BinaryOp::Equal,
        })),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum ElementwiseOp {
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `1 / x`, which codegen has as a division.
    Reciprocal,
}

fn unary_op(function: UnaryFn) -> Option<UnaryOp> {
    Some(match function {
        UnaryFn::Relu => UnaryOp::Relu,
        UnaryFn::LeakyRelu { negative_slope } => UnaryOp::LeakyRelu {
            slope: negative_slope as f32,
        },
        UnaryFn::Sigmoid => UnaryOp::Sigmoid,
        UnaryFn::Tanh => UnaryOp::Tanh,
        UnaryFn::Exp => UnaryOp::Exp,
        UnaryFn::Log => UnaryOp::Log,
        UnaryFn::Sqrt => UnaryOp::Sqrt,
        UnaryFn::Neg => UnaryOp::Neg,
        UnaryFn::Abs => UnaryOp::Abs,
        UnaryFn::Gelu => UnaryOp::Gelu,
        UnaryFn::Silu => UnaryOp::Silu,
        UnaryFn::Softplus => UnaryOp::Softplus,
        UnaryFn::Reciprocal => return None,
    })
}

/// A scalar splat constant's value, which the JIT compiles into the code.
pub(super) fn splat_value(op: &PrimOp) -> Option<f64> {
    match op {
        PrimOp::Constant(Constant::Splat { value, .. }) => Some(*value),
        _ => None,
    }
}

/// The expression computing `nodes` (in schedule order, the last one the result), reading
/// every operand outside the group from memory. `None` when some operand has no layout.
pub(super) fn build_group(graph: &PrimGraph, nodes: Vec<PrimNodeId>) -> Option<ElementwiseGroup> {
    let output_shape = &graph.node(*nodes.last()?).ty.shape;
    let mut expr = ElementwiseExpr::new();
    let mut values: HashMap<PrimNodeId, NodeId> = HashMap::new();
    let mut inputs = Vec::new();
    let mut slices_read_in_place = Vec::new();
    for id in &nodes {
        let mut operand_values = Vec::new();
        for operand in graph.operands(*id) {
            let value = match values.get(&operand) {
                Some(value) => *value,
                None => {
                    let operand_op = &graph.node(operand).op;
                    let value = match splat_value(operand_op) {
                        Some(constant) => expr.constant(constant as f32),
                        None => {
                            let (source, layout) = match slice_read_in_place(graph, operand) {
                                Some(view) => {
                                    slices_read_in_place.push(operand);
                                    view
                                }
                                None => {
                                    let shape = &graph.node(operand).ty.shape;
                                    (operand, input_layout(shape, output_shape)?)
                                }
                            };
                            inputs.push(source);
                            expr.input(layout)
                        }
                    };
                    values.insert(operand, value);
                    value
                }
            };
            operand_values.push(value);
        }
        let value = match (
            elementwise_op(&graph.node(*id).op)?,
            operand_values.as_slice(),
        ) {
            (ElementwiseOp::Unary(op), [x]) => expr.unary(op, *x),
            (ElementwiseOp::Reciprocal, [x]) => {
                let one = expr.constant(1.0);
                expr.binary(BinaryOp::Div, one, *x)
            }
            (ElementwiseOp::Binary(op), [a, b]) => expr.binary(op, *a, *b),
            _ => return None,
        };
        values.insert(*id, value);
    }
    Some(ElementwiseGroup {
        nodes,
        inputs,
        expr,
        slices_read_in_place,
    })
}

#[cfg(test)]
mod tests {
    use super::input_layout;
    use crate::codegen::InputLayout;

    #[test]
    fn broadcast_shapes_get_the_layout_that_reads_them() {
        let cases: &[(&[usize], &[usize], Option<InputLayout>)] = &[
            (&[8, 64, 128], &[8, 64, 128], Some(InputLayout::Contiguous)),
            (&[1], &[8, 64], Some(InputLayout::Scalar)),
            (
                &[128],
                &[8, 64, 128],
                Some(InputLayout::PerLastDim { features: 128 }),
            ),
            (
                &[8, 64, 1],
                &[8, 64, 128],
                Some(InputLayout::PerChannel {
                    channels: 512,
                    inner: 128,
                }),
            ),
            (
                &[8, 1, 128],
                &[8, 64, 128],
                Some(InputLayout::RepeatedRows {
                    rows: 8,
                    row: 128,
                    repeat: 64,
                }),
            ),
            (
                &[4, 1, 1, 5, 6],
                &[2, 4, 3, 7, 5, 6],
                Some(InputLayout::RepeatedRows {
                    rows: 4,
                    row: 30,
                    repeat: 21,
                }),
            ),
            // Two gaps, or a gap that ends before the last axis: no layout.
            (&[8, 1, 4, 1, 2], &[8, 3, 4, 5, 2], None),
            (&[8, 1, 4, 1], &[8, 3, 4, 5], None),
        ];
        for (shape, output, expected) in cases {
            assert_eq!(
                input_layout(shape, output),
                *expected,
                "{shape:?} over {output:?}"
            );
        }
    }
}
