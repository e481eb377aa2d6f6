//! Elementwise ops, reductions and constants, plus the index arithmetic the other
//! cases share: a multi-index `[i0, i1, ...]` of a row-major shape and its flat position.

use crate::prim::{BinaryFn, Constant, ReduceFn, UnaryFn};
use crate::tensor::Tensor;

/// The multi-index of flat position `flat` in a row-major tensor of `shape`.
pub(super) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for axis in (0..shape.len()).rev() {
        index[axis] = flat % shape[axis];
        flat /= shape[axis];
    }
    index
}

/// The flat position of `index` in a row-major tensor of `shape`.
pub(super) fn ravel(index: &[usize], shape: &[usize]) -> usize {
    index
        .iter()
        .zip(shape)
        .fold(0, |flat, (position, size)| flat * size + position)
}

/// The flat position in a tensor of `shape` that NumPy broadcasting reads for output `index`:
/// dims aligned from the right, dims of size 1 always at position 0.
pub(super) fn broadcast_position(index: &[usize], shape: &[usize]) -> usize {
    let offset = index.len() - shape.len();
    let mut flat = 0;
    for (axis, size) in shape.iter().enumerate() {
        let position = if *size == 1 { 0 } else { index[offset + axis] };
        flat = flat * size + position;
    }
    flat
}

pub(super) fn unary(function: UnaryFn, x: &Tensor<f64>) -> Tensor<f64> {
    let sigmoid = |value: f64| 1.0 / (1.0 + (-value).exp());
    let apply = |value: f64| match function {
        UnaryFn::Relu => {
            if value < 0.0 {
                0.0
            } else {
                value
            }
        }
        UnaryFn::LeakyRelu { negative_slope } => {
            if value >= 0.0 {
                value
            } else {
                negative_slope * value
            }
        }
        UnaryFn::Sigmoid => sigmoid(value),
        UnaryFn::Tanh => value.tanh(),
        UnaryFn::Exp => value.exp(),
        UnaryFn::Log => value.ln(),
        UnaryFn::Sqrt => value.sqrt(),
        UnaryFn::Neg => -value,
        UnaryFn::Abs => value.abs(),
        UnaryFn::Gelu => 0.5 * value * (1.0 + libm::erf(value / std::f64::consts::SQRT_2)),
        UnaryFn::Silu => value * sigmoid(value),
        // PyTorch's default threshold: above 20, log(1 + exp(x)) equals x in floating point.
        UnaryFn::Softplus => {
            if value > 20.0 {
                value
            } else {
                value.exp().ln_1p()
            }
        }
        UnaryFn::Reciprocal => 1.0 / value,
    };
    Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|value| apply(*value)).collect(),
    }
}

pub(super) fn binary(
    function: BinaryFn,
    a: &Tensor<f64>,
    b: &Tensor<f64>,
    shape: &[usize],
) -> Tensor<f64> {
    let apply = |x: f64, y: f64| match function {
        BinaryFn::Add => x + y,
        BinaryFn::Sub => x - y,
        BinaryFn::Mul => x * y,
        BinaryFn::Div => x / y,
        BinaryFn::Max => {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else {
                x.max(y)
            }
        }
        // IEEE comparisons are false when either side is NaN, which is the documented result.
        BinaryFn::Greater => f64::from(u8::from(x > y)),
        BinaryFn::GreaterEqual => f64::from(u8::from(x >= y)),
        BinaryFn::Equal => f64::from(u8::from(x == y)),
    };
    let mut out = Tensor::zeros(shape);
    for flat in 0..out.data.len() {
        let index = unravel(flat, shape);
        let x = a.data[broadcast_position(&index, &a.shape)];
        let y = b.data[broadcast_position(&index, &b.shape)];
        out.data[flat] = apply(x, y);
    }
    out
}

/// Reduces `axes` of `x` into a tensor of `shape` (the result with or without kept dims: the
/// order of elements is the same).
pub(super) fn reduce(
    function: ReduceFn,
    axes: &[usize],
    x: &Tensor<f64>,
    shape: &[usize],
) -> Tensor<f64> {
    let kept_shape: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(axis, size)| if axes.contains(&axis) { 1 } else { *size })
        .collect();
    let initial = match function {
        ReduceFn::Sum | ReduceFn::Mean => 0.0,
        ReduceFn::Max => f64::NEG_INFINITY,
    };
    let mut out = Tensor {
        shape: shape.to_vec(),
        data: vec![initial; shape.iter().product()],
    };
    for (flat, value) in x.data.iter().enumerate() {
        let mut index = unravel(flat, &x.shape);
        for axis in axes {
            index[*axis] = 0;
        }
        let target = &mut out.data[ravel(&index, &kept_shape)];
        *target = match function {
            ReduceFn::Sum | ReduceFn::Mean => *target + value,
            ReduceFn::Max if value.is_nan() || target.is_nan() => f64::NAN,
            ReduceFn::Max => target.max(*value),
        };
    }
    if function == ReduceFn::Mean {
        let count: usize = axes.iter().map(|axis| x.shape[*axis]).product();
        for value in &mut out.data {
            *value /= count as f64;
        }
    }
    out
}

pub(super) fn constant(constant: &Constant) -> Tensor<f64> {
    match constant {
        Constant::Splat { shape, value } => Tensor {
            shape: shape.clone(),
            data: vec![*value; shape.iter().product()],
        },
        Constant::Dense(tensor) => tensor.clone(),
    }
}
