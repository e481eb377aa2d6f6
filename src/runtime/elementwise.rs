//! Elementwise ops in f32 with NumPy broadcasting, as plain Rust loops the compiler can
//! vectorize. The innermost dimension runs as a contiguous loop; outer dimensions walk an
//! odometer over broadcast strides (stride 0 repeats an operand).

use crate::prim::{BinaryFn, UnaryFn};

/// Row-major strides of `shape` aligned to the right of `output_rank` dims, 0 where broadcast.
pub fn broadcast_strides(shape: &[usize], output_shape: &[usize]) -> Vec<usize> {
    let offset = output_shape.len() - shape.len();
    let mut strides = vec![0; output_shape.len()];
    let mut stride = 1;
    for axis in (0..shape.len()).rev() {
        if shape[axis] != 1 {
            strides[axis + offset] = stride;
        }
        stride *= shape[axis];
    }
    strides
}

/// Calls `visit(output_offset, operand_offsets, run_length)` for each innermost run.
pub(super) fn for_each_run(
    output_shape: &[usize],
    operand_strides: &[Vec<usize>],
    mut visit: impl FnMut(usize, &[usize], usize),
) {
    let rank = output_shape.len();
    if rank == 0 {
        visit(0, &vec![0; operand_strides.len()], 1);
        return;
    }
    let inner = output_shape[rank - 1];
    let outer: usize = output_shape[..rank - 1].iter().product();
    let mut index = vec![0usize; rank.saturating_sub(1)];
    let mut offsets = vec![0usize; operand_strides.len()];
    for run in 0..outer {
        visit(run * inner, &offsets, inner);
        // Advance the odometer over the outer dims, updating each operand's offset.
        for axis in (0..rank - 1).rev() {
            index[axis] += 1;
            for (offset, strides) in offsets.iter_mut().zip(operand_strides) {
                *offset += strides[axis];
            }
            if index[axis] < output_shape[axis] {
                break;
            }
            for (offset, strides) in offsets.iter_mut().zip(operand_strides) {
                *offset -= strides[axis] * output_shape[axis];
            }
            index[axis] = 0;
        }
    }
}

pub fn unary(function: UnaryFn, input: &[f32], output: &mut [f32]) {
    for (out, &x) in output.iter_mut().zip(input) {
        *out = apply_unary(function, x);
    }
}

pub fn apply_unary(function: UnaryFn, x: f32) -> f32 {
    match function {
        UnaryFn::Relu => x.max(0.0),
        UnaryFn::LeakyRelu { negative_slope } => {
            if x >= 0.0 {
                x
            } else {
                negative_slope as f32 * x
            }
        }
        UnaryFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryFn::Tanh => x.tanh(),
        UnaryFn::Exp => x.exp(),
        UnaryFn::Log => x.ln(),
        UnaryFn::Sqrt => x.sqrt(),
        UnaryFn::Neg => -x,
        UnaryFn::Abs => x.abs(),
        UnaryFn::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        UnaryFn::Silu => x / (1.0 + (-x).exp()),
        UnaryFn::Softplus => {
            if x > 20.0 {
                x
            } else {
                x.exp().ln_1p()
            }
        }
        UnaryFn::Reciprocal => 1.0 / x,
    }
}

pub fn apply_binary(function: BinaryFn, a: f32, b: f32) -> f32 {
    match function {
        BinaryFn::Add => a + b,
        BinaryFn::Sub => a - b,
        BinaryFn::Mul => a * b,
        BinaryFn::Div => a / b,
        BinaryFn::Max => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        }
        // IEEE comparisons are false when either side is NaN, as the op documents.
        BinaryFn::Greater => f32::from(u8::from(a > b)),
        BinaryFn::GreaterEqual => f32::from(u8::from(a >= b)),
        BinaryFn::Equal => f32::from(u8::from(a == b)),
    }
}

/// `output = a op b` with broadcasting.
pub fn binary(
    function: BinaryFn,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    output: &mut [f32],
    output_shape: &[usize],
) {
    if a_shape == output_shape && b_shape == output_shape {
        for ((out, &x), &y) in output.iter_mut().zip(a).zip(b) {
            *out = apply_binary(function, x, y);
        }
        return;
    }
    let strides = [
        broadcast_strides(a_shape, output_shape),
        broadcast_strides(b_shape, output_shape),
    ];
    let inner_a = strides[0].last().copied().unwrap_or(0);
    let inner_b = strides[1].last().copied().unwrap_or(0);
    for_each_run(output_shape, &strides, |out_offset, offsets, len| {
        let out = &mut output[out_offset..out_offset + len];
        match (inner_a, inner_b) {
            (1, 1) => {
                let (x, y) = (
                    &a[offsets[0]..offsets[0] + len],
                    &b[offsets[1]..offsets[1] + len],
                );
                for ((out, &x), &y) in out.iter_mut().zip(x).zip(y) {
                    *out = apply_binary(function, x, y);
                }
            }
            (1, 0) => {
                let (x, y) = (&a[offsets[0]..offsets[0] + len], b[offsets[1]]);
                for (out, &x) in out.iter_mut().zip(x) {
                    *out = apply_binary(function, x, y);
                }
            }
            (0, 1) => {
                let (x, y) = (a[offsets[0]], &b[offsets[1]..offsets[1] + len]);
                for (out, &y) in out.iter_mut().zip(y) {
                    *out = apply_binary(function, x, y);
                }
            }
            _ => {
                for (position, out) in out.iter_mut().enumerate() {
                    *out = apply_binary(
                        function,
                        a[offsets[0] + position * inner_a],
                        b[offsets[1] + position * inner_b],
                    );
                }
            }
        }
    });
}
