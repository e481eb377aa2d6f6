//! The closed set of primitive ops. Every layer lowers to these (`src/lower`), the reference
//! interpreter has one case per variant (`src/interpret`), and so will the gradient rules and the
//! code generator. Each variant's doc states its semantics and shape rule; `shape.rs` implements
//! the rule, and matches over [`PrimOp`] are exhaustive everywhere, so a new variant does not
//! compile until every stage handles it.
//!
//! Shapes are concrete (`Vec<usize>`): lowering specializes the symbolic dims of the layer graph.
//! Axes are non-negative and already resolved against the operand's rank.

use super::PrimGraph;
use crate::ir::ElementType;
use crate::tensor::Tensor;

/// An elementwise function of one operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryFn {
    /// `max(x, 0)`.
    Relu,
    /// `x` when `x >= 0`, else `negative_slope * x`.
    LeakyRelu {
        negative_slope: f64,
    },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    Tanh,
    Exp,
    /// Natural logarithm; `-inf` at 0 and NaN below, as IEEE says.
    Log,
    Sqrt,
    Neg,
    Abs,
    /// The exact form `x * (1 + erf(x / sqrt(2))) / 2`, as `torch.nn.GELU()`.
    Gelu,
    /// `x * sigmoid(x)`.
    Silu,
    /// `log(1 + exp(x))`, computed as PyTorch does: `x` itself above 20.
    Softplus,
    /// `1 / x`.
    Reciprocal,
}

impl UnaryFn {
    pub fn name(self) -> &'static str {
        match self {
            UnaryFn::Relu => "relu",
            UnaryFn::LeakyRelu { .. } => "leaky_relu",
            UnaryFn::Sigmoid => "sigmoid",
            UnaryFn::Tanh => "tanh",
            UnaryFn::Exp => "exp",
            UnaryFn::Log => "log",
            UnaryFn::Sqrt => "sqrt",
            UnaryFn::Neg => "neg",
            UnaryFn::Abs => "abs",
            UnaryFn::Gelu => "gelu",
            UnaryFn::Silu => "silu",
            UnaryFn::Softplus => "softplus",
            UnaryFn::Reciprocal => "reciprocal",
        }
    }
}

/// An elementwise function of two operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryFn {
    Add,
    Sub,
    Mul,
    Div,
    /// The larger operand; NaN if either is NaN.
    Max,
    /// `1` where `a > b`, else `0` (so `0` when either is NaN). No gradient: the result is
    /// piecewise constant, which is what makes it a mask.
    Greater,
    /// `1` where `a >= b`, else `0` (`0` when either is NaN).
    GreaterEqual,
    /// `1` where `a == b`, else `0` (`0` when either is NaN; `-0 == 0`).
    Equal,
}

impl BinaryFn {
    pub fn name(self) -> &'static str {
        match self {
            BinaryFn::Add => "add",
            BinaryFn::Sub => "sub",
            BinaryFn::Mul => "mul",
            BinaryFn::Div => "div",
            BinaryFn::Max => "max",
            BinaryFn::Greater => "greater",
            BinaryFn::GreaterEqual => "greater_equal",
            BinaryFn::Equal => "equal",
        }
    }

    /// Whether the function compares its operands, giving a 0/1 mask without a gradient.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryFn::Greater | BinaryFn::GreaterEqual | BinaryFn::Equal
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceFn {
    Sum,
    /// The sum divided by the number of reduced elements.
    Mean,
    /// The largest element; `-inf` for none (never: reduced sizes are at least 1).
    Max,
}

impl ReduceFn {
    pub fn name(self) -> &'static str {
        match self {
            ReduceFn::Sum => "reduce_sum",
            ReduceFn::Mean => "reduce_mean",
            ReduceFn::Max => "reduce_max",
        }
    }
}

/// A 2-D convolution without bias (a bias is a broadcast `add` after it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// `[height, width]`.
    pub stride: [usize; 2],
    /// Zeros added `[[top, bottom], [left, right]]`; "same" padding may be uneven.
    pub padding: [[usize; 2]; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// The weight gradient of a convolution with `conv`'s parameters and a `kernel` of
/// `[height, width]` taps (which the operands' shapes do not determine when the stride is above 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2dWeightGradientParams {
    pub conv: Conv2dParams,
    pub kernel: [usize; 2],
}

/// The adjoint (transpose) of [`Conv2dParams`]' convolution with the same stride, dilation and
/// groups, which is also PyTorch's `conv_transpose2d`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dParams {
    pub stride: [usize; 2],
    /// Rows and columns cropped from the start of the full output: PyTorch's `padding`.
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    /// `[OH, OW]`. Output positions beyond the scattered ones are zero, and scattered positions
    /// beyond it are dropped; PyTorch's size is `(H-1)S - 2P + D(K-1) + output_padding + 1`.
    pub output_size: [usize; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Padding never wins: windows take the maximum over their taps inside the input.
    Max,
    /// The sum over taps inside the input, divided by the taps inside the padded input
    /// (`count_include_pad`, PyTorch's default) or by the taps inside the input.
    Average { count_include_pad: bool },
}

/// A pooling window as PyTorch's `max_pool2d`/`avg_pool2d` define it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    pub kind: PoolKind,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Symmetric padding `[height, width]`.
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    /// Output size rounds up, but the last window must start inside the input or left padding.
    pub ceil_mode: bool,
}

/// The value of a `Constant` node.
#[derive(Clone, Debug, PartialEq)]
pub enum Constant {
    /// Every element equals `value`; shape `[]` is a scalar that broadcasts anywhere.
    Splat { shape: Vec<usize>, value: f64 },
    /// Explicit elements, row-major: a causal mask, an averaging matrix.
    Dense(Tensor<f64>),
}

impl Constant {
    pub fn scalar(value: f64) -> Constant {
        Constant::Splat {
            shape: Vec::new(),
            value,
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            Constant::Splat { shape, .. } => shape,
            Constant::Dense(tensor) => &tensor.shape,
        }
    }
}

/// The body of a `Scan`: one step as its own graph.
///
/// The body's inputs are, in order: one slice per scanned sequence (the sequence's shape without
/// the scan axis), one per carried state, one per invariant (parameters the body reads, passed
/// in whole at every step). Its outputs are, in order: the next value of each state (same shape
/// as the state), then the step's output.
#[derive(Clone, Debug)]
pub struct ScanBody {
    pub graph: PrimGraph,
    pub sequence_count: usize,
    pub state_count: usize,
}

impl ScanBody {
    pub fn invariant_count(&self) -> usize {
        self.graph.inputs.len() - self.sequence_count - self.state_count
    }
}

/// A primitive operation. Unless stated otherwise, operands and results are float tensors.
#[derive(Clone, Debug)]
pub enum PrimOp {
    /// The graph's input number `index` (its position in [`PrimGraph::inputs`]). No operands.
    Input {
        index: usize,
        shape: Vec<usize>,
        element_type: ElementType,
    },
    /// A parameter or buffer, named by its PyTorch `state_dict` key. No operands.
    Parameter { name: String, shape: Vec<usize> },
    /// A value known at compile time. No operands; the constant's shape.
    Constant(Constant),
    /// Standard normal noise of the given shape. No operands. Element `i` is a pure function of
    /// `(seed, run key, i)` (see `interpret::standard_normal`), so results do not depend on
    /// threading; the run key is given per run (0 unless the caller says otherwise, so
    /// inference is deterministic), and a training loop passes the step number.
    RandomNormal { seed: u64, shape: Vec<usize> },
    /// Uniform noise in `[0, 1)` of the given shape, each value a multiple of `2^-24` (exact in
    /// f32, so the f64 interpreter and the f32 runtime draw identical numbers). No operands.
    /// Element `i` is a pure function of `(seed, run key, i)` (see `interpret::uniform`).
    RandomUniform { seed: u64, shape: Vec<usize> },
    /// Elementwise; same shape.
    Unary(UnaryFn),
    /// Elementwise with NumPy broadcasting: dims aligned from the right, each equal or 1.
    Binary(BinaryFn),
    /// `[..., M, K] x [..., K, P] -> [..., M, P]`; both operands have at least 2 dims and the
    /// leading (batch) dims broadcast as in `Binary`.
    MatMul,
    /// Cross-correlation as `torch.nn.functional.conv2d`: input `[N, C, H, W]`, weight
    /// `[O, C/groups, KH, KW]` -> `[N, O, OH, OW]`, `OH = (H + top + bottom - D(KH-1) - 1)/S + 1`
    /// rounded down. `C` and `O` are divisible by `groups`.
    Conv2d(Conv2dParams),
    /// The weight gradient of `Conv2d(params.conv)`: input `[N, C, H, W]` and output gradient
    /// `[N, O, OH, OW]` -> `[O, C/groups, KH, KW]` (`params.kernel`), `dw[o, c, ky, kx] =
    /// sum_{n, oy, ox} g[n, o, oy, ox] * x[n, group(o) * C/groups + c, oy*S - top + ky*D,
    /// ox*S - left + kx*D]`, positions in the padding reading 0. `OH` and `OW` are the sizes the
    /// convolution would produce. One op rather than a convolution of transposed operands, so
    /// the runtime reads both operands in place (no transposes of activations).
    Conv2dWeightGradient(Conv2dWeightGradientParams),
    /// Input `[N, C, H, W]`, weight `[C, O/groups, KH, KW]` -> `[N, O, OH, OW]` with `output_size`:
    /// each input element scatters `x * w` to output row `iy*S - P + ky*D` (and likewise columns).
    ConvTranspose2d(ConvTranspose2dParams),
    /// `[N, C, H, W] -> [N, C, OH, OW]`, `OH = round((H + 2P - D(K-1) - 1)/S) + 1`, rounding down
    /// or up (`ceil_mode`, then minus one if the last window would start in the right padding).
    Pool2d(Pool2dParams),
    /// Where each max-pooling window's maximum is: `[N, C, H, W] -> [N, C, OH, OW]` of int64,
    /// the flat row-major index into the whole operand (`((n*C + c)*H + y)*W + x`) of the
    /// window's first tap in row-major window order that is larger than every tap before it
    /// or NaN (PyTorch's `max_pool2d` `return_indices` rule: the first maximum wins a tie, the
    /// last NaN wins, padding never wins). `params.kind` must be `Max`; the output size is
    /// `Pool2d`'s. The gradient of max pooling scatters `g` to these indices.
    MaxPool2dArgmax(Pool2dParams),
    /// Reduces `axes` (sorted, distinct; all axes reduces to a scalar `[]`), keeping them as size
    /// 1 when `keepdim`.
    Reduce {
        op: ReduceFn,
        axes: Vec<usize>,
        keepdim: bool,
    },
    /// Same elements in row-major order, new shape with the same element count.
    Reshape { shape: Vec<usize> },
    /// Output dim `i` is input dim `perm[i]`.
    Transpose { perm: Vec<usize> },
    /// Elements `start..end` of `axis` (`start < end <= size`).
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// Joins one or more operands along `axis`; all other dims equal.
    Concat { axis: usize },
    /// Rows of a table by index: operand 0 `[V, D...]` (float), operand 1 `[I...]` of int64
    /// indices in `0..V` -> `[I..., D...]`. An index outside the table is a run-time error.
    Gather,
    /// The adjoint of [`PrimOp::Gather`]: operand 0 updates `[I..., D...]` (float), operand 1
    /// `[I...]` of int64 indices in `0..rows` -> `[rows, D...]`, zeros plus each update row
    /// added to the row its index names. Rows are added in index order, so the sums do not
    /// depend on threading. An index outside `0..rows` is a run-time error.
    ScatterAdd { rows: usize },
    /// Runs `body` once per position of `axis` of the sequences, in order (from the end when
    /// `reverse`), carrying states. Operands: the sequences (all with the same size `T` along
    /// `axis`), the initial states, the invariants, matching the body's inputs. The result
    /// stacks the body's step output along `axis` at each step's position: the step output's
    /// shape with `T` inserted at `axis`.
    Scan {
        body: Box<ScanBody>,
        axis: usize,
        reverse: bool,
    },
}

impl PrimOp {
    /// The name people see in `--emit lowered` dumps.
    pub fn name(&self) -> &'static str {
        match self {
            PrimOp::Input { .. } => "input",
            PrimOp::Parameter { .. } => "parameter",
            PrimOp::Constant(_) => "constant",
            PrimOp::RandomNormal { .. } => "random_normal",
            PrimOp::RandomUniform { .. } => "random_uniform",
            PrimOp::Unary(unary) => unary.name(),
            PrimOp::Binary(binary) => binary.name(),
            PrimOp::MatMul => "matmul",
            PrimOp::Conv2d(_) => "conv2d",
            PrimOp::Conv2dWeightGradient(_) => "conv2d_weight_gradient",
            PrimOp::ConvTranspose2d(_) => "conv_transpose2d",
            PrimOp::Pool2d(Pool2dParams {
                kind: PoolKind::Max,
                ..
            }) => "max_pool2d",
            PrimOp::Pool2d(Pool2dParams {
                kind: PoolKind::Average { .. },
                ..
            }) => "avg_pool2d",
            PrimOp::MaxPool2dArgmax(_) => "max_pool2d_argmax",
            PrimOp::Reduce { op, .. } => op.name(),
            PrimOp::Reshape { .. } => "reshape",
            PrimOp::Transpose { .. } => "transpose",
            PrimOp::Slice { .. } => "slice",
            PrimOp::Concat { .. } => "concat",
            PrimOp::Gather => "gather",
            PrimOp::ScatterAdd { .. } => "scatter_add",
            PrimOp::Scan { .. } => "scan",
        }
    }

    /// How many operands the op takes, or `None` when it takes any number (`Concat` at least
    /// one, `Scan` as many as its body has inputs).
    pub fn arity(&self) -> Option<usize> {
        match self {
            PrimOp::Input { .. }
            | PrimOp::Parameter { .. }
            | PrimOp::Constant(_)
            | PrimOp::RandomNormal { .. }
            | PrimOp::RandomUniform { .. } => Some(0),
            PrimOp::Unary(_)
            | PrimOp::Pool2d(_)
            | PrimOp::MaxPool2dArgmax(_)
            | PrimOp::Reduce { .. }
            | PrimOp::Reshape { .. }
            | PrimOp::Transpose { .. }
            | PrimOp::Slice { .. } => Some(1),
            PrimOp::Conv2d(_)
            | PrimOp::Conv2dWeightGradient(_)
            | PrimOp::ConvTranspose2d(_)
            | PrimOp::Binary(_)
            | PrimOp::MatMul
            | PrimOp::Gather
            | PrimOp::ScatterAdd { .. } => Some(2),
            PrimOp::Concat { .. } => None,
            PrimOp::Scan { body, .. } => Some(body.graph.inputs.len()),
        }
    }
}
