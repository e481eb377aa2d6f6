//! Fused elementwise kernels: a small expression IR and its compilation to an f32x4 loop.
//!
//! An [`ElementwiseExpr`] computes one output element `out[i]` from element `i` of each input.
//! It is an arena of [`ElementwiseNode`]s addressed by [`NodeId`], built bottom-up, so every
//! operand precedes its user (a DAG: a node can be used many times, as `x` is in `x * sigmoid(x)`).
//! Each input has an [`InputLayout`] saying which of its elements feeds output element `i`:
//! the full-size tensor itself, or a bias broadcast per channel or per feature, or a scalar.
//!
//! [`compile_elementwise`] turns an expression into an [`ElementwiseKernel`]: native code with
//! the C signature [`ElementwiseFn`] that computes the elements `[start, end)`, so a runtime can
//! split one tensor across threads. The results do not depend on the split.

use std::fmt;
use std::time::Duration;

use cranelift_codegen::ir::{types, AbiParam};

use super::jit::{CompiledFunction, Jit};
use super::CodegenError;

/// The native entry point: computes `output[i]` for every `i` in `[start, end)`, reading input
/// `k` through `inputs[k]` at the index its layout gives.
pub type ElementwiseFn =
    unsafe extern "C" fn(inputs: *const *const f32, output: *mut f32, start: usize, end: usize);

/// Which element of an input feeds output element `i`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputLayout {
    /// `input[i]`: a tensor of the output's size.
    Contiguous,
    /// `input[(i / inner) % channels]`: a `[C]` tensor broadcast over NCHW, `inner = H * W`.
    PerChannel { channels: usize, inner: usize },
    /// `input[i % features]`: a `[F]` tensor broadcast over `[..., F]`.
    PerLastDim { features: usize },
    /// `input[0]`: one value for every element (read at run time, unlike a constant).
    Scalar,
    /// `input[((i / (row * repeat)) % rows) * row + i % row]`: each of `rows` rows of `row`
    /// elements read `repeat` times over, the rows in turn (wrapping): a `[N, 1, F]` tensor
    /// broadcast over `[N, T, F]` is `rows N, row F, repeat T`.
    RepeatedRows {
        rows: usize,
        row: usize,
        repeat: usize,
    },
    /// `input[(i / run) * stride + offset + i % run]`: runs of `run` consecutive elements,
    /// `stride` apart, from `offset` on (`offset + run <= stride`). A slice read where it lies:
    /// `[N, 128]` out of `[N, 512]` from column 256 is `run 128, stride 512, offset 256`.
    Strided {
        run: usize,
        stride: usize,
        offset: usize,
    },
}

/// A unary operation. Each applies to one element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// max(x, 0); NaN stays NaN.
    Relu,
    /// x for x > 0, else slope * x.
    LeakyRelu {
        slope: f32,
    },
    /// 1 / (1 + e^-x).
    Sigmoid,
    Tanh,
    Exp,
    /// ln x: NaN below 0, -inf at 0.
    Log,
    Sqrt,
    Neg,
    Abs,
    /// x/2 * (1 + erf(x / √2)), the exact (erf) form, not the tanh approximation.
    Gelu,
    /// x * sigmoid(x).
    Silu,
    /// ln(1 + e^x).
    Softplus,
}

/// A binary operation on two elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// `a / b`, correctly rounded; when `b` is one value for a whole segment (a scalar or a
    /// per-channel input), `a * (1 / b)` with the reciprocal computed once (within 1.5 ulp).
    Div,
    /// `if a < b { b } else { a }`: one `maxps`; a NaN in `a` propagates, one in `b` does not.
    Max,
    /// `if b < a { b } else { a }`: one `minps`; a NaN in `a` propagates, one in `b` does not.
    Min,
    /// `1.0` where `a > b`, else `0.0` (also when either is NaN): a compare and an `andps`.
    Greater,
    /// `1.0` where `a >= b`, else `0.0` (also when either is NaN).
    GreaterEqual,
    /// `1.0` where `a == b`, else `0.0` (also when either is NaN).
    Equal,
}

/// The index of a node in its [`ElementwiseExpr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// One node of an expression. Operands are earlier nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ElementwiseNode {
    /// The element of input `k` (see [`ElementwiseExpr::input_layouts`]).
    Input(usize),
    /// A constant compiled into the code.
    Constant(f32),
    Unary(UnaryOp, NodeId),
    Binary(BinaryOp, NodeId, NodeId),
    /// a * b + c, rounded once.
    Fma(NodeId, NodeId, NodeId),
}

/// A fused elementwise computation: input layouts, nodes, and the node that is the output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ElementwiseExpr {
    input_layouts: Vec<InputLayout>,
    nodes: Vec<ElementwiseNode>,
    output: Option<NodeId>,
}

/// A compiled elementwise kernel. Holding it keeps its code alive.
#[derive(Clone)]
pub struct ElementwiseKernel {
    function: CompiledFunction,
    entry: ElementwiseFn,
    input_layouts: Vec<InputLayout>,
}

impl ElementwiseExpr {
    pub fn new() -> ElementwiseExpr {
        ElementwiseExpr::default()
    }

    /// Adds the next input (input `k` is the `k`-th call) and returns the node reading it.
    pub fn input(&mut self, layout: InputLayout) -> NodeId {
        self.input_layouts.push(layout);
        self.push(ElementwiseNode::Input(self.input_layouts.len() - 1))
    }

    pub fn constant(&mut self, value: f32) -> NodeId {
        self.push(ElementwiseNode::Constant(value))
    }

    pub fn unary(&mut self, op: UnaryOp, operand: NodeId) -> NodeId {
        self.push(ElementwiseNode::Unary(op, operand))
    }

    pub fn binary(&mut self, op: BinaryOp, left: NodeId, right: NodeId) -> NodeId {
        self.push(ElementwiseNode::Binary(op, left, right))
    }

    /// a * b + c with one rounding.
    pub fn fma(&mut self, a: NodeId, b: NodeId, c: NodeId) -> NodeId {
        self.push(ElementwiseNode::Fma(a, b, c))
    }

    /// Makes `node` the output; without a call, the last node added is.
    pub fn set_output(&mut self, node: NodeId) {
        self.output = Some(node);
    }

    pub fn input_layouts(&self) -> &[InputLayout] {
        &self.input_layouts
    }

    pub fn nodes(&self) -> &[ElementwiseNode] {
        &self.nodes
    }

    /// The output node (the last node when none was set), or `None` for an empty expression.
    pub fn output(&self) -> Option<NodeId> {
        self.output
            .or_else(|| self.nodes.len().checked_sub(1).map(NodeId))
    }

    /// Checks what the code generator relies on: a valid output, operands that precede their
    /// users, inputs that exist, and broadcast layouts without zero extents.
    pub fn validate(&self) -> Result<(), CodegenError> {
        let output = self.output().ok_or(CodegenError::EmptyExpression)?;
        if output.0 >= self.nodes.len() {
            return Err(CodegenError::OperandOutOfOrder {
                node: self.nodes.len(),
                operand: output.0,
            });
        }
        for (node_index, node) in self.nodes.iter().enumerate() {
            for operand in operands(node) {
                if operand.0 >= node_index {
                    return Err(CodegenError::OperandOutOfOrder {
                        node: node_index,
                        operand: operand.0,
                    });
                }
            }
            if let ElementwiseNode::Input(input) = node {
                if *input >= self.input_layouts.len() {
                    return Err(CodegenError::MissingInput {
                        node: node_index,
                        input: *input,
                        n_inputs: self.input_layouts.len(),
                    });
                }
            }
        }
        for (input, layout) in self.input_layouts.iter().enumerate() {
            if layout.has_zero_extent() {
                return Err(CodegenError::ZeroExtentLayout {
                    input,
                    layout: layout.to_string(),
                });
            }
        }
        Ok(())
    }

    fn push(&mut self, node: ElementwiseNode) -> NodeId {
        self.nodes.push(node);
        NodeId(self.nodes.len() - 1)
    }
}

/// Compiles `expr` into native code.
pub fn compile_elementwise(
    jit: &Jit,
    expr: &ElementwiseExpr,
) -> Result<ElementwiseKernel, CodegenError> {
    expr.validate()?;
    let mut signature = jit.make_signature();
    for _ in 0..4 {
        signature.params.push(AbiParam::new(types::I64));
    }
    let function = jit.compile_function("elementwise", signature, |builder, _module| {
        let vector_library = jit.options().vector_library;
        super::elementwise_loops::build_elementwise_body(builder, expr, vector_library);
        Ok(())
    })?;
    // SAFETY: the function was compiled with exactly this signature: four 64-bit integer (or
    // pointer) parameters and no results, in the host's C calling convention.
    let entry: ElementwiseFn = unsafe { std::mem::transmute(function.code_address()) };
    Ok(ElementwiseKernel {
        function,
        entry,
        input_layouts: expr.input_layouts.clone(),
    })
}

impl ElementwiseKernel {
    /// Computes every element of `output`, whose length is the full element count.
    pub fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Result<(), CodegenError> {
        let total = output.len();
        self.run_chunk(inputs, total, output, 0)
    }

    /// Computes the elements `[chunk_start, chunk_start + output_chunk.len())` of a tensor of
    /// `total` elements into `output_chunk`; inputs are the whole tensors. Threads can each take
    /// a disjoint chunk (`chunks_mut`) of one output.
    pub fn run_chunk(
        &self,
        inputs: &[&[f32]],
        total: usize,
        output_chunk: &mut [f32],
        chunk_start: usize,
    ) -> Result<(), CodegenError> {
        let chunk_end = chunk_start
            .checked_add(output_chunk.len())
            .filter(|&end| end <= total)
            .ok_or(CodegenError::RangeOutOfBounds {
                start: chunk_start,
                end: chunk_start.saturating_add(output_chunk.len()),
                total,
            })?;
        self.check_inputs(inputs, total)?;
        let input_pointers: Vec<*const f32> = inputs.iter().map(|input| input.as_ptr()).collect();
        // The generated code writes `output + i` for i in [chunk_start, chunk_end), which is
        // exactly `output_chunk`; the base itself may lie outside the chunk, so it is formed
        // with wrapping arithmetic and never dereferenced from Rust.
        let output_base = output_chunk.as_mut_ptr().wrapping_sub(chunk_start);
        // SAFETY: every input was checked to have the length its layout reads from (full-size
        // inputs have `total` elements and the range lies within `total`), and the output range
        // is the exclusively borrowed chunk.
        unsafe {
            (self.entry)(input_pointers.as_ptr(), output_base, chunk_start, chunk_end);
        }
        Ok(())
    }

    /// The raw entry point, for a runtime that manages its own buffers. The caller must pass
    /// one pointer per input, each valid for the elements its layout reads over `[start, end)`,
    /// and an output valid for writes there. The output may be the same buffer as a full-size
    /// input (element `i` is read before it is written), but must not overlap any other input.
    /// The pointer is valid while this kernel (or a clone) lives.
    pub fn entry(&self) -> ElementwiseFn {
        self.entry
    }

    pub fn input_layouts(&self) -> &[InputLayout] {
        &self.input_layouts
    }

    pub fn compile_time(&self) -> Duration {
        self.function.compile_time()
    }

    /// The compiled function: code size and, when kept, its CLIF and disassembly.
    pub fn function(&self) -> &CompiledFunction {
        &self.function
    }

    fn check_inputs(&self, inputs: &[&[f32]], total: usize) -> Result<(), CodegenError> {
        if inputs.len() != self.input_layouts.len() {
            return Err(CodegenError::WrongInputCount {
                expected: self.input_layouts.len(),
                given: inputs.len(),
            });
        }
        for (input, (data, layout)) in inputs.iter().zip(&self.input_layouts).enumerate() {
            let expected = layout.required_len(total);
            if data.len() != expected {
                return Err(CodegenError::WrongInputLength {
                    input,
                    layout: layout.to_string(),
                    expected,
                    given: data.len(),
                });
            }
        }
        Ok(())
    }
}

impl InputLayout {
    /// The number of elements an input with this layout must have, for `total` outputs.
    pub fn required_len(&self, total: usize) -> usize {
        match *self {
            InputLayout::Contiguous => total,
            InputLayout::PerChannel { channels, .. } => channels,
            InputLayout::PerLastDim { features } => features,
            InputLayout::Scalar => 1,
            InputLayout::RepeatedRows { rows, row, .. } => rows * row,
            // Whole rows of the sliced tensor: every run lies inside one.
            InputLayout::Strided { run, stride, .. } => total.div_ceil(run.max(1)) * stride,
        }
    }

    fn has_zero_extent(&self) -> bool {
        match *self {
            InputLayout::PerChannel { channels, inner } => channels == 0 || inner == 0,
            InputLayout::PerLastDim { features } => features == 0,
            InputLayout::RepeatedRows { rows, row, repeat } => rows == 0 || row == 0 || repeat == 0,
            InputLayout::Strided {
                run,
                stride,
                offset,
            } => run == 0 || offset.checked_add(run).is_none_or(|end| end > stride),
            InputLayout::Contiguous | InputLayout::Scalar => false,
        }
    }
}

/// The operands of a node, in order.
pub(crate) fn operands(node: &ElementwiseNode) -> Vec<NodeId> {
    match *node {
        ElementwiseNode::Input(_) | ElementwiseNode::Constant(_) => vec![],
        ElementwiseNode::Unary(_, operand) => vec![operand],
        ElementwiseNode::Binary(_, left, right) => vec![left, right],
        ElementwiseNode::Fma(a, b, c) => vec![a, b, c],
    }
}

impl fmt::Display for InputLayout {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputLayout::Contiguous => write!(formatter, "contiguous"),
            InputLayout::PerChannel { channels, inner } => {
                write!(formatter, "per-channel {channels}x{inner}")
            }
            InputLayout::PerLastDim { features } => write!(formatter, "per-last-dim {features}"),
            InputLayout::Scalar => write!(formatter, "scalar"),
            InputLayout::RepeatedRows { rows, row, repeat } => {
                write!(formatter, "{rows} rows of {row} each {repeat} times")
            }
            InputLayout::Strided {
                run,
                stride,
                offset,
            } => write!(formatter, "strided {run} of {stride} from {offset}"),
        }
    }
}

/// One line per node, `%k = op operands`, for `--emit kernels` and snapshots.
impl fmt::Display for ElementwiseExpr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, node) in self.nodes.iter().enumerate() {
            write!(formatter, "%{index} = ")?;
            match node {
                ElementwiseNode::Input(input) => match self.input_layouts.get(*input) {
                    Some(layout) => write!(formatter, "input {input} ({layout})")?,
                    None => write!(formatter, "input {input} (missing)")?,
                },
                ElementwiseNode::Constant(value) => write!(formatter, "constant {value:?}")?,
                ElementwiseNode::Unary(op, a) => write!(formatter, "{op:?} %{}", a.0)?,
                ElementwiseNode::Binary(op, a, b) => {
                    write!(formatter, "{op:?} %{}, %{}", a.0, b.0)?
                }
                ElementwiseNode::Fma(a, b, c) => {
                    write!(formatter, "Fma %{}, %{}, %{}", a.0, b.0, c.0)?
                }
            }
            writeln!(formatter)?;
        }
        match self.output() {
            Some(output) => writeln!(formatter, "output %{}", output.0),
            None => writeln!(formatter, "output none"),
        }
    }
}
