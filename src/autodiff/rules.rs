//! The vector-Jacobian table: one rule per [`PrimOp`] variant, in one exhaustive match (no
//! catch-all arm, so a new op does not compile until it has a rule). A rule receives the
//! gradient `g` of the node's value and returns the gradient contribution for each operand
//! that needs one (`needs[position]`); the driver adds contributions together. Every identity
//! is stated in a comment next to its rule. The windowed ops (convolutions, pooling) are in
//! `window.rs`.

use super::builder::GradientBuilder;
use super::{scan, window, AutodiffError};
use crate::prim::*;

/// What a rule sees of the forward node it differentiates.
pub(crate) struct ForwardNode<'node> {
    pub op: &'node PrimOp,
    /// The node itself: its forward value `y`.
    pub value: PrimNodeId,
    pub operands: &'node [PrimNodeId],
    /// Which operands need a gradient; rules emit nothing for the others.
    pub needs: &'node [bool],
}

/// One gradient contribution per operand, `None` where none is needed (or it is zero).
pub(crate) type OperandGradients = Vec<Option<PrimNodeId>>;

pub(crate) fn vector_jacobian(
    builder: &mut GradientBuilder,
    node: &ForwardNode,
    g: PrimNodeId,
) -> Result<OperandGradients, AutodiffError> {
    let x = node.operands.first().copied();
    match node.op {
        // Leaves have no operands.
        PrimOp::Input { .. }
        | PrimOp::Parameter { .. }
        | PrimOp::Constant(_)
        | PrimOp::RandomNormal { .. }
        | PrimOp::RandomUniform { .. } => Ok(Vec::new()),
        PrimOp::Unary(function) => {
            let x = x.expect("a unary op has an operand");
            Ok(vec![Some(unary_rule(
                builder, *function, x, node.value, g,
            )?)])
        }
        PrimOp::Binary(function) => binary_rule(builder, *function, node, g),
        // d(A@B) = (g @ B^T, A^T @ g), each summed over broadcast batch dims.
        PrimOp::MatMul => {
            let (a, b) = (node.operands[0], node.operands[1]);
            let mut result = vec![None, None];
            if node.needs[0] {
                let b_transposed = builder.matrix_transpose(b)?;
                let grad = builder.add(PrimOp::MatMul, &[g, b_transposed])?;
                result[0] = Some(builder.sum_to_shape(grad, &builder.shape(a))?);
            }
            if node.needs[1] {
                let a_transposed = builder.matrix_transpose(a)?;
                let grad = builder.add(PrimOp::MatMul, &[a_transposed, g])?;
                result[1] = Some(builder.sum_to_shape(grad, &builder.shape(b))?);
            }
            Ok(result)
        }
        // d conv(x, w) = (conv_transpose(g, w), conv2d_weight_gradient(x, g)): see window.rs.
        PrimOp::Conv2d(params) => window::conv2d_rule(builder, params, node, g),
        // Bilinear: (conv_transpose(g, h), conv(x, h)) for the gradient h: see window.rs.
        PrimOp::Conv2dWeightGradient(params) => {
            window::conv2d_weight_gradient_rule(builder, params, node, g)
        }
        // d conv_transpose(x, w) = (conv(g, w), conv(g^T, x^T)^T): see window.rs.
        PrimOp::ConvTranspose2d(params) => window::conv_transpose2d_rule(builder, params, node, g),
        // d avg_pool(x) = conv_transpose(g / count, ones); max_pool: see window.rs.
        PrimOp::Pool2d(params) => window::pool2d_rule(builder, params, node, g),
        // Integer indices, piecewise constant in the input: no gradient.
        PrimOp::MaxPool2dArgmax(_) => Ok(vec![None]),
        // With or without `keepdim`, `g` reshapes to the shape with the axes kept as 1.
        PrimOp::Reduce { op, axes, .. } => {
            let x = x.expect("a reduction has an operand");
            Ok(vec![Some(reduce_rule(
                builder, *op, axes, x, node.value, g,
            )?)])
        }
        // d reshape(x) = reshape(g, shape(x)).
        PrimOp::Reshape { .. } => {
            let x = x.expect("a reshape has an operand");
            Ok(vec![Some(builder.reshape(g, &builder.shape(x))?)])
        }
        // d transpose(x, perm) = transpose(g, inverse(perm)).
        PrimOp::Transpose { perm } => {
            let mut inverse = vec![0; perm.len()];
            for (position, axis) in perm.iter().enumerate() {
                inverse[*axis] = position;
            }
            Ok(vec![Some(builder.transpose(g, &inverse)?)])
        }
        // d x[start..end] = concat(zeros[..start], g, zeros[end..]) along the axis.
        PrimOp::Slice { axis, start, end } => {
            let shape = builder.shape(x.expect("a slice has an operand"));
            let mut pieces = Vec::new();
            for (from, to) in [(0, *start), (*start, *end), (*end, shape[*axis])] {
                if from == *start && to == *end {
                    pieces.push(g);
                } else if to > from {
                    let mut zeros_shape = shape.clone();
                    zeros_shape[*axis] = to - from;
                    pieces.push(builder.splat(&zeros_shape, 0.0)?);
                }
            }
            let grad = if pieces.len() == 1 {
                g
            } else {
                builder.add(PrimOp::Concat { axis: *axis }, &pieces)?
            };
            Ok(vec![Some(grad)])
        }
        // d concat(x_1, ..., x_n) = (g[offset_1..], ..., g[offset_n..]) along the axis.
        PrimOp::Concat { axis } => {
            let mut result = Vec::new();
            let mut offset = 0;
            for (operand, needs) in node.operands.iter().zip(node.needs) {
                let size = builder.shape(*operand)[*axis];
                result.push(if *needs {
                    Some(builder.slice(g, *axis, offset, offset + size)?)
                } else {
                    None
                });
                offset += size;
            }
            Ok(result)
        }
        // d table[indices] = scatter_add(g, indices) into the table's rows; indices get none.
        PrimOp::Gather => {
            let (table, indices) = (node.operands[0], node.operands[1]);
            if !node.needs[0] {
                return Ok(vec![None, None]);
            }
            let rows = builder.shape(table)[0];
            let grad = builder.add(PrimOp::ScatterAdd { rows }, &[g, indices])?;
            Ok(vec![Some(grad), None])
        }
        // d scatter_add(updates, indices) = g[indices] for the updates; indices get none.
        PrimOp::ScatterAdd { .. } => {
            let indices = node.operands[1];
            if !node.needs[0] {
                return Ok(vec![None, None]);
            }
            Ok(vec![
                Some(builder.add(PrimOp::Gather, &[g, indices])?),
                None,
            ])
        }
        // d scan = a scan the other way over the body's vector-Jacobian product, carrying the
        // states' gradients (backpropagation through time): see scan.rs.
        PrimOp::Scan {
            body,
            axis,
            reverse,
        } => scan::scan_rule(builder, body, *axis, *reverse, node, g),
    }
}

pub(crate) fn not_differentiable(op: &PrimOp, reason: &str) -> AutodiffError {
    AutodiffError::NotDifferentiable {
        op: op.name(),
        reason: reason.to_string(),
    }
}

/// The gradient of `y = f(x)` given `g`.
fn unary_rule(
    b: &mut GradientBuilder,
    function: UnaryFn,
    x: PrimNodeId,
    y: PrimNodeId,
    g: PrimNodeId,
) -> Result<PrimNodeId, AutodiffError> {
    match function {
        // d relu(x) = g * [x > 0] (0 at x = 0 and for NaN, as PyTorch's threshold_backward)
        UnaryFn::Relu => {
            let positive = b.positive(x)?;
            b.mul(g, positive)
        }
        // d leaky_relu(x) = g * (slope + (1 - slope) * [x > 0])
        UnaryFn::LeakyRelu { negative_slope } => {
            let positive = b.positive(x)?;
            let rise = b.mul_scalar(positive, 1.0 - negative_slope)?;
            let slope_value = b.scalar(negative_slope)?;
            let slope = b.add_values(rise, slope_value)?;
            b.mul(g, slope)
        }
        // d sigmoid(x) = g * y * (1 - y)
        UnaryFn::Sigmoid => {
            let one_minus_y = b.one_minus(y)?;
            let slope = b.mul(y, one_minus_y)?;
            b.mul(g, slope)
        }
        // d tanh(x) = g * (1 - y*y)
        UnaryFn::Tanh => {
            let y_squared = b.mul(y, y)?;
            let slope = b.one_minus(y_squared)?;
            b.mul(g, slope)
        }
        // d exp(x) = g * y
        UnaryFn::Exp => b.mul(g, y),
        // d log(x) = g / x
        UnaryFn::Log => b.div(g, x),
        // d sqrt(x) = g * 0.5 / y
        UnaryFn::Sqrt => {
            let half_g = b.mul_scalar(g, 0.5)?;
            b.div(half_g, y)
        }
        // d (-x) = -g
        UnaryFn::Neg => b.neg(g),
        // d |x| = g * sign(x) = g * ([x > 0] - [0 > x]), 0 at zero as PyTorch's `sgn`
        UnaryFn::Abs => {
            let positive = b.positive(x)?;
            let zero = b.scalar(0.0)?;
            let negative = b.compare(BinaryFn::Greater, zero, x)?;
            let sign = b.sub(positive, negative)?;
            b.mul(g, sign)
        }
        // d gelu(x) = g * (Phi(x) + x * phi(x)), phi(x) = exp(-x*x/2) / sqrt(2 pi)
        UnaryFn::Gelu => {
            let phi_upper = normal_cdf(b, x, y)?;
            let x_squared = b.mul(x, x)?;
            let exponent = b.mul_scalar(x_squared, -0.5)?;
            let exponential = b.unary(UnaryFn::Exp, exponent)?;
            let density = b.mul_scalar(exponential, 1.0 / (2.0 * std::f64::consts::PI).sqrt())?;
            let x_density = b.mul(x, density)?;
            let slope = b.add_values(phi_upper, x_density)?;
            b.mul(g, slope)
        }
        // d silu(x) = g * s * (1 + x * (1 - s)), s = sigmoid(x)
        UnaryFn::Silu => {
            let s = b.unary(UnaryFn::Sigmoid, x)?;
            let one_minus_s = b.one_minus(s)?;
            let x_term = b.mul(x, one_minus_s)?;
            let one = b.scalar(1.0)?;
            let bracket = b.add_values(one, x_term)?;
            let slope = b.mul(s, bracket)?;
            b.mul(g, slope)
        }
        // d softplus(x) = g * sigmoid(x) (PyTorch uses 1 above x = 20, where sigmoid rounds
        // to within 2e-9 of it).
        UnaryFn::Softplus => {
            let s = b.unary(UnaryFn::Sigmoid, x)?;
            b.mul(g, s)
        }
        // d (1/x) = -g * y * y
        UnaryFn::Reciprocal => {
            let y_squared = b.mul(y, y)?;
            let product = b.mul(g, y_squared)?;
            b.neg(product)
        }
    }
}

/// `Phi(x)` from `gelu(x) = x * Phi(x)`, since there is no `erf` primitive:
/// `gelu(x) / (x + [x == 0]) + [x == 0] / 2`, exact away from zero and `1/2` at it.
fn normal_cdf(
    b: &mut GradientBuilder,
    x: PrimNodeId,
    gelu: PrimNodeId,
) -> Result<PrimNodeId, AutodiffError> {
    let zero_value = b.scalar(0.0)?;
    let zero = b.compare(BinaryFn::Equal, x, zero_value)?;
    let safe_x = b.add_values(x, zero)?;
    let ratio = b.div(gelu, safe_x)?;
    let half_at_zero = b.mul_scalar(zero, 0.5)?;
    b.add_values(ratio, half_at_zero)
}

/// The gradients of `y = f(a, b)` given `g`, summed back over broadcast axes.
fn binary_rule(
    b: &mut GradientBuilder,
    function: BinaryFn,
    node: &ForwardNode,
    g: PrimNodeId,
) -> Result<OperandGradients, AutodiffError> {
    let (left, right) = (node.operands[0], node.operands[1]);
    let (left_grad, right_grad) = match function {
        // d(a+b) = (g, g)
        BinaryFn::Add => (g, g),
        // d(a-b) = (g, -g)
        BinaryFn::Sub => (g, b.neg(g)?),
        // d(a*b) = (g*b, g*a)
        BinaryFn::Mul => (b.mul(g, right)?, b.mul(g, left)?),
        // d(a/b) = (g/b, -g*y/b)
        BinaryFn::Div => {
            let left_grad = b.div(g, right)?;
            let scaled = b.mul(left_grad, node.value)?;
            (left_grad, b.neg(scaled)?)
        }
        // d max(a,b) = (g*m(a,b), g*m(b,a)), m(a,b) = ([a > b] + [a >= b]) / 2: ties split
        // evenly and a NaN sends nothing either way, as PyTorch's `maximum`.
        BinaryFn::Max => {
            let left_share = max_share(b, left, right)?;
            let right_share = max_share(b, right, left)?;
            (b.mul(g, left_share)?, b.mul(g, right_share)?)
        }
        // A 0/1 mask is piecewise constant: its gradient is zero wherever it exists.
        BinaryFn::Greater | BinaryFn::GreaterEqual | BinaryFn::Equal => {
            return Ok(vec![None, None])
        }
    };
    let mut result = Vec::new();
    for ((operand, grad), needs) in [(left, left_grad), (right, right_grad)]
        .into_iter()
        .zip(node.needs)
    {
        result.push(if *needs {
            Some(b.sum_to_shape(grad, &b.shape(operand))?)
        } else {
            None
        });
    }
    Ok(result)
}

/// `([a > b] + [a >= b]) / 2`: 1 where `a` wins, 1/2 at a tie, 0 where it loses or at NaN.
fn max_share(
    b: &mut GradientBuilder,
    a: PrimNodeId,
    other: PrimNodeId,
) -> Result<PrimNodeId, AutodiffError> {
    let wins = b.compare(BinaryFn::Greater, a, other)?;
    let ties_or_wins = b.compare(BinaryFn::GreaterEqual, a, other)?;
    let doubled = b.add_values(wins, ties_or_wins)?;
    b.mul_scalar(doubled, 0.5)
}

/// The gradient of `y = reduce(x, axes)` given `g`.
fn reduce_rule(
    b: &mut GradientBuilder,
    op: ReduceFn,
    axes: &[usize],
    x: PrimNodeId,
    y: PrimNodeId,
    g: PrimNodeId,
) -> Result<PrimNodeId, AutodiffError> {
    let x_shape = b.shape(x);
    let kept_shape: Vec<usize> = x_shape
        .iter()
        .enumerate()
        .map(|(axis, size)| if axes.contains(&axis) { 1 } else { *size })
        .collect();
    let g_kept = b.reshape(g, &kept_shape)?;
    match op {
        // d sum(x) = broadcast(g)
        ReduceFn::Sum => b.broadcast_to(g_kept, &x_shape),
        // d mean(x) = broadcast(g) / count
        ReduceFn::Mean => {
            let count: usize = axes.iter().map(|axis| x_shape[*axis]).product();
            let scaled = b.mul_scalar(g_kept, 1.0 / count as f64)?;
            b.broadcast_to(scaled, &x_shape)
        }
        // d max(x) = broadcast(g) * m / sum(m), m = [x == max]: ties split evenly, as
        // PyTorch's `amax`.
        ReduceFn::Max => {
            let y_kept = b.reshape(y, &kept_shape)?;
            let is_max = b.compare(BinaryFn::Equal, x, y_kept)?;
            let ties = b.reduce_sum(is_max, axes.to_vec(), true)?;
            let share = b.div(g_kept, ties)?;
            b.mul(is_max, share)
        }
    }
}
