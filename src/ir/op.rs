//! The closed set of layer operations. Each variant's doc states its shape rule; the shape pass
//! (`shape/rules.rs`), the cost model (`report/cost.rs`) and the parameter table match on this
//! enum exhaustively, so a new variant cannot be added without a rule in each.

use super::{Dim, Graph, NodeId};

/// Element type of an input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    Float32,
    /// Token or class indices, read by `embedding` and `cross_entropy`.
    Int64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dAttrs {
    pub out_channels: u64,
    /// `[height, width]`
    pub kernel: [u64; 2],
    pub stride: [u64; 2],
    pub padding: Padding,
    pub dilation: [u64; 2],
    pub groups: u64,
    pub bias: bool,
    /// Transposed convolution only: extra rows/columns added to one side of the output.
    pub output_padding: [u64; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Zero padding on both sides of each spatial dimension: `[height, width]`.
    Explicit([u64; 2]),
    /// Output size `ceil(input / stride)`, padding split as in TensorFlow (extra on the end).
    Same,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pool2dAttrs {
    pub kernel: [u64; 2],
    pub stride: [u64; 2],
    pub padding: [u64; 2],
    pub dilation: [u64; 2],
    pub ceil_mode: bool,
    /// Average pooling only: whether padded zeros count in the divisor (PyTorch's default).
    pub count_include_pad: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Relu,
    LeakyRelu {
        negative_slope: f64,
    },
    Sigmoid,
    Tanh,
    /// The exact (erf) form, as `torch.nn.GELU()`.
    Gelu,
    Silu,
    Exp,
    Log,
    Sqrt,
    Neg,
    Abs,
    Softplus,
}

impl UnaryOp {
    pub fn name(&self) -> &'static str {
        match self {
            UnaryOp::Relu => "relu",
            UnaryOp::LeakyRelu { .. } => "leaky_relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Silu => "silu",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Softplus => "softplus",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    pub fn name(&self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Mean,
    Sum,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecurrentKind {
    /// Elman RNN with tanh.
    Rnn,
    Lstm,
    Gru,
}

impl RecurrentKind {
    /// How many gate blocks of size `hidden` the weights stack (PyTorch's layout).
    pub fn gate_count(self) -> u64 {
        match self {
            RecurrentKind::Rnn => 1,
            RecurrentKind::Lstm => 4,
            RecurrentKind::Gru => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RecurrentKind::Rnn => "rnn",
            RecurrentKind::Lstm => "lstm",
            RecurrentKind::Gru => "gru",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RecurrentAttrs {
    pub kind: RecurrentKind,
    pub hidden: u64,
    pub layers: u64,
    pub bidirectional: bool,
    pub bias: bool,
    /// `true`: the output at every step `[N, T, D*hidden]`; `false`: the last step `[N, D*hidden]`.
    pub sequence: bool,
}

/// One target dimension of `reshape`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReshapeDim {
    /// `0`: copy the input's dimension at this position (ONNX's convention), symbolic or not.
    Copy,
    /// `-1`: whatever makes the element count match; at most one.
    Infer,
    Size(u64),
    Symbol(super::SymbolId),
}

/// A recurrent cell written in the language (a block with `state`), scanned over time.
#[derive(Clone, Debug)]
pub struct ScanBody {
    /// The cell's own graph. `step_input` is an `Op::Input` standing for one time step.
    pub graph: Graph,
    pub step_input: NodeId,
    pub states: Vec<ScanState>,
    /// The value emitted at each step.
    pub output: NodeId,
}

#[derive(Clone, Debug)]
pub struct ScanState {
    pub name: String,
    /// The `Op::Input` inside the body that reads the state; zero at the first step.
    pub input: NodeId,
    /// The body node whose value becomes the state at the next step.
    pub next: NodeId,
    /// Shape of the state for one example, without the batch dimension.
    pub shape: Vec<Dim>,
}

// The loss functions (`mse`, `cross_entropy`, `bce_with_logits`, `binary_cross_entropy`,
// `gaussian_nll`) follow PyTorch's `torch.nn.functional` losses: same formulas, same argument
// names, and `reduction` "mean" (the default) or "sum". Each returns a scalar `[]`; a spec's
// `loss` statement names the one a training step minimizes.

/// How a loss turns its per-element values into the scalar it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The average, PyTorch's default. For `cross_entropy` with class ids and class weights it
    /// is the weighted average: the sum divided by the sum of the labels' weights.
    Mean,
    Sum,
}

impl Reduction {
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Mean => "mean",
            Reduction::Sum => "sum",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum LossFunction {
    /// Operands `input`, `target` of one shape: `(input - target)^2` per element, as
    /// `F.mse_loss`.
    MeanSquaredError,
    /// Operands `logits` and `target`, as `F.cross_entropy`: the target holds int class ids with
    /// the logits' shape without the class dim, or float class probabilities with the logits'
    /// shape. Per sample `-sum_c w_c * t_c * log_softmax(logits)_c`, where `t` is the one-hot
    /// label (or the probabilities) smoothed to `(1 - label_smoothing) * t + label_smoothing / C`.
    CrossEntropy {
        /// The class dim; `None` is PyTorch's: dim 1, or dim 0 for unbatched `[C]` logits.
        class_dim: Option<i64>,
        /// One weight per class (`weight = [...]`); `None` weighs every class 1.
        class_weights: Option<Vec<f64>>,
        label_smoothing: f64,
    },
    /// Operands `logits`, `target` of one shape, as `F.binary_cross_entropy_with_logits`:
    /// `(1 - t) x + (1 + (p - 1) t) (max(-x, 0) + log(1 + exp(-|x|)))` with `p` the positive
    /// weight, which is `max(x, 0) - x t + log(1 + exp(-|x|))` without one.
    BinaryCrossEntropyWithLogits {
        /// Weights of the positive class: one number, or one per entry of the last dim.
        pos_weight: Option<Vec<f64>>,
    },
    /// Operands `probabilities`, `target` of one shape, as `F.binary_cross_entropy`:
    /// `-(t log(p) + (1 - t) log(1 - p))` with each log clamped at -100 as PyTorch does.
    BinaryCrossEntropy,
    /// Operands `input` (the predicted mean), `target` and, unless the variance is fixed,
    /// `var`, as `F.gaussian_nll_loss`: `0.5 (log(v) + (input - target)^2 / v)` with
    /// `v = max(var, eps)`, plus `0.5 log(2 pi)` when `full`.
    GaussianNll {
        /// `gaussian_nll(mean, target, 0.25)`: a known variance instead of a tensor operand.
        fixed_variance: Option<f64>,
        full: bool,
        eps: f64,
    },
}

impl LossFunction {
    /// The name people see in reports and IR dumps (the spec's function name).
    pub fn name(&self) -> &'static str {
        match self {
            LossFunction::MeanSquaredError => "mse",
            LossFunction::CrossEntropy { .. } => "cross_entropy",
            LossFunction::BinaryCrossEntropyWithLogits { .. } => "bce_with_logits",
            LossFunction::BinaryCrossEntropy => "binary_cross_entropy",
            LossFunction::GaussianNll { .. } => "gaussian_nll",
        }
    }

    /// How many tensor operands the loss reads.
    pub fn operand_count(&self) -> usize {
        match self {
            LossFunction::GaussianNll {
                fixed_variance: None,
                ..
            } => 3,
            _ => 2,
        }
    }
}

/// A loss function with its reduction: `Op::Loss`.
#[derive(Clone, Debug, PartialEq)]
pub struct LossAttrs {
    pub function: LossFunction,
    pub reduction: Reduction,
}

/// A layer operation. Shapes below are written with `N` for the batch dimension; dimension
/// arguments may be negative, counting from the end as in PyTorch.
#[derive(Clone, Debug)]
pub enum Op {
    /// A named network input with the declared shape. No operands.
    Input {
        name: String,
        shape: Vec<Dim>,
        element_type: ElementType,
    },
    /// `[N, C, H, W] -> [N, out, OH, OW]` with `OH = (H + 2P - D*(K-1) - 1)/S + 1` (exact
    /// division required), `C` divisible by `groups`. Weight `[out, C/groups, KH, KW]`.
    Conv2d(Conv2dAttrs),
    /// `[N, C, H, W] -> [N, out, OH, OW]` with `OH = (H-1)*S - 2P + D*(K-1) + output_padding + 1`.
    /// Weight `[C, out/groups, KH, KW]`.
    ConvTranspose2d(Conv2dAttrs),
    /// `[N, C, H, W] -> [N, C, OH, OW]`, `OH = floor_or_ceil((H + 2P - D*(K-1) - 1)/S) + 1`.
    MaxPool2d(Pool2dAttrs),
    /// As `MaxPool2d`, averaging.
    AvgPool2d(Pool2dAttrs),
    /// `[N, C, H, W] -> [N, C, OH, OW]` for the requested output size; global pooling is 1x1.
    AdaptiveAvgPool2d { output: [u64; 2] },
    /// `[..., in] -> [..., out]`. Weight `[out, in]`, bias `[out]`. `in_features`, when the spec
    /// states it, must match the input (as `nn.Linear(in, out)` would demand).
    Dense {
        out_features: u64,
        bias: bool,
        in_features: Option<u64>,
    },
    /// Merges dims `start..=end` into one.
    Flatten { start_dim: i64, end_dim: i64 },
    /// Same element count, new dims; see [`ReshapeDim`].
    Reshape { target: Vec<ReshapeDim> },
    /// Reorders dims; `dims` is a permutation of `0..rank`.
    Permute { dims: Vec<usize> },
    /// Swaps two dims (negative counts from the end); the rank is known only to the shape pass.
    Transpose { dim0: i64, dim1: i64 },
    /// Elementwise; same shape.
    Unary(UnaryOp),
    /// Elementwise with NumPy broadcasting of two operands.
    Binary(BinaryOp),
    /// `tensor op scalar` (or `scalar op tensor` when `scalar_first`); same shape.
    Scalar {
        op: BinaryOp,
        scalar: f64,
        scalar_first: bool,
    },
    /// Same shape; normalizes along `dim`.
    Softmax { dim: i64, log: bool },
    /// Same shape; identity at inference.
    Dropout { p: f64 },
    /// `[N, C, ...]`, same shape; weight and bias `[C]` when affine, running stats `[C]`.
    BatchNorm {
        eps: f64,
        momentum: f64,
        affine: bool,
    },
    /// Same shape; normalizes over the last `normalized_dims` dims, weight and bias of that shape.
    LayerNorm {
        normalized_dims: usize,
        eps: f64,
        affine: bool,
    },
    /// `[...]` of int64 indices `-> [..., dim]`. Weight `[num_embeddings, dim]`.
    Embedding { num_embeddings: u64, dim: u64 },
    /// Joins operands along `dim`; all other dims equal.
    Concat { dim: i64 },
    /// `start..end` along `dim` (end exclusive, clamped as in Python slicing).
    Slice { dim: i64, start: i64, end: i64 },
    /// Removes `dim`, keeping index `index`.
    Select { dim: i64, index: i64 },
    /// `[..., M, K] x [..., K, P] -> [..., M, P]`, leading dims broadcast.
    MatMul,
    /// Reduces `dims`, keeping them as size 1 when `keepdim`.
    Reduce {
        op: ReduceOp,
        dims: Vec<i64>,
        keepdim: bool,
    },
    /// `[..., T, S]`, same shape; entries above the diagonal become -infinity.
    CausalMask,
    /// Standard normal noise with the operand's shape (the VAE's reparameterization).
    RandomNormal,
    /// Same shape; passes the value through.
    Identity,
    /// Built-in rnn, lstm, gru with PyTorch's parameters: `[N, T, I] -> [N, T, D*H]` or `[N, D*H]`.
    Recurrent(RecurrentAttrs),
    /// A user-defined cell scanned over dim 1: `[N, T, ...] -> [N, T, out...]`, or the last
    /// step's output when `sequence` is false.
    Scan { body: Box<ScanBody>, sequence: bool },
    /// A loss function of its operands (see [`LossFunction`]) reduced to a scalar `[]`.
    Loss(LossAttrs),
}

impl Op {
    /// The name people see in reports and IR dumps.
    pub fn name(&self) -> String {
        match self {
            Op::Input { .. } => "input".into(),
            Op::Conv2d(_) => "conv2d".into(),
            Op::ConvTranspose2d(_) => "conv_transpose2d".into(),
            Op::MaxPool2d(_) => "max_pool2d".into(),
            Op::AvgPool2d(_) => "avg_pool2d".into(),
            Op::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d".into(),
            Op::Dense { .. } => "dense".into(),
            Op::Flatten { .. } => "flatten".into(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Permute { .. } => "permute".into(),
            Op::Transpose { .. } => "transpose".into(),
            Op::Unary(unary) => unary.name().into(),
            Op::Binary(binary) => binary.name().into(),
            Op::Scalar { op, .. } => format!("{}_scalar", op.name()),
            Op::Softmax { log: false, .. } => "softmax".into(),
            Op::Softmax { log: true, .. } => "log_softmax".into(),
            Op::Dropout { .. } => "dropout".into(),
            Op::BatchNorm { .. } => "batch_norm".into(),
            Op::LayerNorm { .. } => "layer_norm".into(),
            Op::Embedding { .. } => "embedding".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Select { .. } => "select".into(),
            Op::MatMul => "matmul".into(),
            Op::Reduce {
                op: ReduceOp::Mean, ..
            } => "mean".into(),
            Op::Reduce {
                op: ReduceOp::Sum, ..
            } => "sum".into(),
            Op::Reduce {
                op: ReduceOp::Max, ..
            } => "max".into(),
            Op::CausalMask => "causal_mask".into(),
            Op::RandomNormal => "randn_like".into(),
            Op::Identity => "identity".into(),
            Op::Recurrent(attrs) => attrs.kind.name().into(),
            Op::Scan { .. } => "scan".into(),
            Op::Loss(attrs) => attrs.function.name().into(),
        }
    }
}
