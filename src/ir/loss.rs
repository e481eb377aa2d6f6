//! The attributes of the loss functions (`mse`, `cross_entropy`, `bce_with_logits`,
//! `binary_cross_entropy`, `gaussian_nll`). They follow PyTorch's `torch.nn.functional` losses:
//! same formulas, same argument names, and `reduction` "mean" (the default) or "sum". Each loss
//! returns a scalar `[]`; a spec's `loss` statement names the one a training step minimizes.

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
