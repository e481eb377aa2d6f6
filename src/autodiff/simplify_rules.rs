//! The peephole rules of [`super::simplify`]: one function per op family, each rule with the
//! identity it uses in a comment. A rule sees a node whose operands are already simplified and
//! returns an existing node that has the same value, a simpler node to build instead, or
//! nothing. The module doc of `simplify.rs` says why each rule is exact and which rules are
//! left out.

use crate::prim::*;

/// What a rule makes of a node.
pub(super) enum Rewrite {
    /// The node as it is.
    Keep,
    /// An existing node already holds the value.
    Value(PrimNodeId),
    /// Build this node instead (the rules run again on it).
    Replace(PrimOp, Vec<PrimNodeId>),
    /// Build the first node (through the rules), then the second op on it instead.
    Then(PrimOp, Vec<PrimNodeId>, PrimOp),
}

/// The rewrite of `op(operands)`, whose type is `ty`, in `graph` (holding the operands).
pub(super) fn rewrite(
    graph: &PrimGraph,
    op: &PrimOp,
    operands: &[PrimNodeId],
    ty: &TensorType,
) -> Rewrite {
    let splat_of = |value: f64| splat(&ty.shape, value);
    match op {
        PrimOp::Reshape { shape } => reshape_rule(graph, shape, operands[0]),
        PrimOp::Transpose { perm } => transpose_rule(graph, perm, operands[0], ty),
        // slice(splat c) = splat c; the whole axis is the operand itself.
        PrimOp::Slice { axis, start, end } => {
            let x = operands[0];
            if let Some(value) = splat_value(graph, x) {
                return splat_of(value);
            }
            if *start == 0 && *end == shape(graph, x)[*axis] {
                return Rewrite::Value(x);
            }
            Rewrite::Keep
        }
        // concat(x) = x; concat(splat c, ..., splat c) = splat c.
        PrimOp::Concat { .. } => {
            if operands.len() == 1 {
                return Rewrite::Value(operands[0]);
            }
            let values: Vec<Option<f64>> = operands
                .iter()
                .map(|operand| splat_value(graph, *operand))
                .collect();
            match values[0] {
                Some(first) if values.iter().all(|value| same_bits(*value, first)) => {
                    splat_of(first)
                }
                _ => Rewrite::Keep,
            }
        }
        // A dense constant with one value everywhere is a splat (which later rules can see).
        PrimOp::Constant(Constant::Dense(tensor)) => match tensor.data.first() {
            Some(first)
                if tensor
                    .data
                    .iter()
                    .all(|value| same_bits(Some(*value), *first)) =>
            {
                splat_of(*first)
            }
            _ => Rewrite::Keep,
        },
        PrimOp::Unary(function) => unary_rule(graph, *function, operands[0], ty),
        PrimOp::Binary(function) => binary_rule(graph, *function, operands, ty),
        PrimOp::Reduce { op, axes, .. } => reduce_rule(graph, *op, axes, operands[0], ty),
        _ => Rewrite::Keep,
    }
}

fn reshape_rule(graph: &PrimGraph, shape_to: &[usize], x: PrimNodeId) -> Rewrite {
    // reshape(x) to its own shape = x.
    if shape(graph, x) == shape_to {
        return Rewrite::Value(x);
    }
    // reshape(splat c) = splat c of the new shape.
    if let Some(value) = splat_value(graph, x) {
        return splat(shape_to, value);
    }
    // reshape(reshape(y)) = reshape(y): both keep row-major order.
    if let PrimOp::Reshape { .. } = graph.node(x).op {
        let inner = graph.operands(x)[0];
        let op = PrimOp::Reshape {
            shape: shape_to.to_vec(),
        };
        return Rewrite::Replace(op, vec![inner]);
    }
    Rewrite::Keep
}

fn transpose_rule(graph: &PrimGraph, perm: &[usize], x: PrimNodeId, ty: &TensorType) -> Rewrite {
    // transpose(x, identity) = x.
    if perm
        .iter()
        .enumerate()
        .all(|(position, axis)| position == *axis)
    {
        return Rewrite::Value(x);
    }
    // transpose(splat c) = splat c of the permuted shape.
    if let Some(value) = splat_value(graph, x) {
        return splat(&ty.shape, value);
    }
    // transpose(transpose(y, inner), perm) = transpose(y, inner[perm[i]]).
    if let PrimOp::Transpose { perm: inner } = &graph.node(x).op {
        let composed = perm.iter().map(|axis| inner[*axis]).collect();
        let y = graph.operands(x)[0];
        return Rewrite::Replace(PrimOp::Transpose { perm: composed }, vec![y]);
    }
    if let Some(rewritten) = transpose_before_unit_reshape(graph, perm, x, ty) {
        return rewritten;
    }
    // A transpose that only moves axes of size 1 keeps the row-major order of the elements,
    // so it is a reshape (free in the runtime: an alias).
    let x_shape = shape(graph, x);
    let moved_axes: Vec<usize> = perm
        .iter()
        .copied()
        .filter(|axis| x_shape[*axis] != 1)
        .collect();
    if moved_axes.windows(2).all(|pair| pair[0] < pair[1]) {
        let op = PrimOp::Reshape {
            shape: ty.shape.clone(),
        };
        return Rewrite::Replace(op, vec![x]);
    }
    Rewrite::Keep
}

/// `transpose(reshape(y))`, where the reshape only inserts or drops axes of size 1, moves the
/// same non-unit axes of `y` itself: `reshape(transpose(y, perm'))`. The reshape then meets the
/// transpose's users (often another reshape, so the two merge), as in the weight gradient of a
/// convolution, which swaps batch and channels through `[N, 1, C, H, W]`.
fn transpose_before_unit_reshape(
    graph: &PrimGraph,
    perm: &[usize],
    x: PrimNodeId,
    ty: &TensorType,
) -> Option<Rewrite> {
    if !matches!(graph.node(x).op, PrimOp::Reshape { .. }) {
        return None;
    }
    let y = graph.operands(x)[0];
    let (x_shape, y_shape) = (shape(graph, x), shape(graph, y));
    let non_unit = |shape: &[usize]| -> Vec<usize> {
        (0..shape.len()).filter(|axis| shape[*axis] != 1).collect()
    };
    let (x_axes, y_axes) = (non_unit(&x_shape), non_unit(&y_shape));
    let sizes = |shape: &[usize], axes: &[usize]| -> Vec<usize> {
        axes.iter().map(|axis| shape[*axis]).collect()
    };
    if sizes(&x_shape, &x_axes) != sizes(&y_shape, &y_axes) {
        return None;
    }
    // The unit axes of y first, then its non-unit axes in the order the transpose puts them.
    let mut new_perm: Vec<usize> = (0..y_shape.len())
        .filter(|axis| y_shape[*axis] == 1)
        .collect();
    for axis in perm.iter().filter(|axis| x_shape[**axis] != 1) {
        let rank = x_axes.iter().position(|x_axis| x_axis == axis)?;
        new_perm.push(y_axes[rank]);
    }
    let transposed_shape: Vec<usize> = new_perm.iter().map(|axis| y_shape[*axis]).collect();
    let transpose = PrimOp::Transpose { perm: new_perm };
    if transposed_shape == ty.shape {
        return Some(Rewrite::Replace(transpose, vec![y]));
    }
    let reshape = PrimOp::Reshape {
        shape: ty.shape.clone(),
    };
    Some(Rewrite::Then(transpose, vec![y], reshape))
}

fn unary_rule(graph: &PrimGraph, function: UnaryFn, x: PrimNodeId, ty: &TensorType) -> Rewrite {
    let value = splat_value(graph, x);
    match (function, value) {
        // -(-y) = y.
        (UnaryFn::Neg, _) if is_unary(graph, x, UnaryFn::Neg) => {
            Rewrite::Value(graph.operands(x)[0])
        }
        // -(splat c) = splat -c and |splat c| = splat |c|: sign changes are exact.
        (UnaryFn::Neg, Some(value)) => splat(&ty.shape, -value),
        (UnaryFn::Abs, Some(value)) if !value.is_nan() => splat(&ty.shape, value.abs()),
        // relu(splat c) for c away from zero (where the runtime and interpreter agree on the
        // sign of a zero result).
        (UnaryFn::Relu, Some(value)) if value > 0.0 => splat(&ty.shape, value),
        (UnaryFn::Relu, Some(value)) if value < 0.0 => splat(&ty.shape, 0.0),
        _ => Rewrite::Keep,
    }
}

fn binary_rule(
    graph: &PrimGraph,
    function: BinaryFn,
    operands: &[PrimNodeId],
    ty: &TensorType,
) -> Rewrite {
    let (a, b) = (operands[0], operands[1]);
    let (a_value, b_value) = (splat_value(graph, a), splat_value(graph, b));
    if let (Some(a_value), Some(b_value)) = (a_value, b_value) {
        if let Some(folded) = fold_binary(function, a_value, b_value) {
            return splat(&ty.shape, folded);
        }
    }
    if let Some(absorbed) = absorb_broadcast(graph, function, a, b, ty) {
        return absorbed;
    }
    if function == BinaryFn::Add {
        if let Some(merged) = add_disjoint_concats(graph, a, b, ty) {
            return merged;
        }
    }
    // Operands whose shape is the result's: an identity element can drop only those (the
    // other case is a broadcast, which must stay).
    let a_full = shape(graph, a) == ty.shape;
    let b_full = shape(graph, b) == ty.shape;
    let is = |value: Option<f64>, wanted: f64| value.is_some_and(|value| value == wanted);
    let negate = |x: PrimNodeId| Rewrite::Replace(PrimOp::Unary(UnaryFn::Neg), vec![x]);
    match function {
        // x + 0 = 0 + x = x (up to the sign of a zero result).
        BinaryFn::Add if a_full && is(b_value, 0.0) => Rewrite::Value(a),
        BinaryFn::Add if b_full && is(a_value, 0.0) => Rewrite::Value(b),
        // x - 0 = x; 0 - x = -x (up to the sign of a zero result).
        BinaryFn::Sub if a_full && is(b_value, 0.0) => Rewrite::Value(a),
        BinaryFn::Sub if b_full && is(a_value, 0.0) => negate(b),
        // x * 1 = 1 * x = x; x * -1 = -x; x / 1 = x; x / -1 = -x.
        BinaryFn::Mul if a_full && is(b_value, 1.0) => Rewrite::Value(a),
        BinaryFn::Mul if b_full && is(a_value, 1.0) => Rewrite::Value(b),
        BinaryFn::Mul if a_full && is(b_value, -1.0) => negate(a),
        BinaryFn::Mul if b_full && is(a_value, -1.0) => negate(b),
        BinaryFn::Div if a_full && is(b_value, 1.0) => Rewrite::Value(a),
        BinaryFn::Div if a_full && is(b_value, -1.0) => negate(a),
        // max(x, x) = x.
        BinaryFn::Max if a == b => Rewrite::Value(a),
        _ => Rewrite::Keep,
    }
}

/// `f(x + zeros, b) = f(x, b)` when `b` alone already broadcasts `x` to the result's shape:
/// the gradient rules broadcast by adding zeros, which an elementwise user does itself (up to
/// the sign of a zero, as for `x + 0`).
fn absorb_broadcast(
    graph: &PrimGraph,
    function: BinaryFn,
    a: PrimNodeId,
    b: PrimNodeId,
    ty: &TensorType,
) -> Option<Rewrite> {
    for (position, operand) in [a, b].into_iter().enumerate() {
        let Some(x) = broadcast_source(graph, operand) else {
            continue;
        };
        let mut operands = vec![a, b];
        operands[position] = x;
        let op = PrimOp::Binary(function);
        let operand_types: Vec<&TensorType> =
            operands.iter().map(|id| &graph.node(*id).ty).collect();
        if infer_type(&op, &operand_types).is_ok_and(|new_ty| new_ty == *ty) {
            return Some(Rewrite::Replace(op, operands));
        }
    }
    None
}

/// `concat(x, zeros) + concat(zeros, y) = concat(x, y)` along one axis, when at every place one
/// side is a zero piece (up to the sign of a zero, as for `x + 0`): the gradient of each slice
/// of a value is padded with zeros to the whole value, then the padded gradients are added
/// (attention's `Q`, `K` and `V` slices of one projection). The result's zero stretches must
/// be zero pieces of one of the operands, as a rule cannot build new constants.
fn add_disjoint_concats(
    graph: &PrimGraph,
    a: PrimNodeId,
    b: PrimNodeId,
    ty: &TensorType,
) -> Option<Rewrite> {
    let axis = match (&graph.node(a).op, &graph.node(b).op) {
        (PrimOp::Concat { axis }, PrimOp::Concat { axis: other }) if axis == other => *axis,
        _ => return None,
    };
    if shape(graph, a) != ty.shape || shape(graph, b) != ty.shape {
        return None;
    }
    let pieces_of = |concat: PrimNodeId| -> Vec<ConcatPiece> {
        let mut start = 0;
        let operands = graph.operands(concat);
        operands
            .into_iter()
            .map(|node| {
                let end = start + shape(graph, node)[axis];
                let piece = ConcatPiece {
                    node,
                    start,
                    end,
                    zero: splat_value(graph, node) == Some(0.0),
                };
                start = end;
                piece
            })
            // An empty piece adds nothing (and would not advance the walk below).
            .filter(|piece| piece.end > piece.start)
            .collect()
    };
    let sides = [pieces_of(a), pieces_of(b)];
    // Whether every piece of `pieces` that overlaps `start..end` is zero.
    let zero_over = |pieces: &[ConcatPiece], start: usize, end: usize| {
        pieces
            .iter()
            .filter(|piece| piece.start < end && start < piece.end)
            .all(|piece| piece.zero)
    };
    let mut merged = Vec::new();
    let mut position = 0;
    while position < ty.shape[axis] {
        let nonzero_here = (0..2).find_map(|side| {
            let pieces = sides[side].iter();
            let mut starting_here = pieces.filter(|piece| piece.start == position);
            starting_here
                .find(|piece| !piece.zero)
                .map(|piece| (side, piece))
        });
        let next = match nonzero_here {
            // A nonzero piece of one side: the other side must be zero all along it.
            Some((side, piece)) => {
                zero_over(&sides[1 - side], piece.start, piece.end).then_some(piece)?
            }
            // Zeros on both sides: the longest zero piece starting here over which the other
            // side is zero too.
            None => sides
                .iter()
                .flatten()
                .filter(|piece| piece.zero && piece.start == position)
                .filter(|piece| {
                    let (start, end) = (piece.start, piece.end);
                    zero_over(&sides[0], start, end) && zero_over(&sides[1], start, end)
                })
                .max_by_key(|piece| piece.end)?,
        };
        merged.push(next.node);
        position = next.end;
    }
    Some(Rewrite::Replace(PrimOp::Concat { axis }, merged))
}

/// One operand of a concat: the node and the stretch `start..end` of the axis it fills.
struct ConcatPiece {
    node: PrimNodeId,
    start: usize,
    end: usize,
    zero: bool,
}

/// `x` of a broadcast `x + zeros` (either way round).
fn broadcast_source(graph: &PrimGraph, id: PrimNodeId) -> Option<PrimNodeId> {
    if !matches!(graph.node(id).op, PrimOp::Binary(BinaryFn::Add)) {
        return None;
    }
    let operands = graph.operands(id);
    let is_zero = |operand: PrimNodeId| splat_value(graph, operand) == Some(0.0);
    match operands.as_slice() {
        [x, zeros] | [zeros, x] if is_zero(*zeros) && !is_zero(*x) => Some(*x),
        _ => None,
    }
}

/// `f(a, b)` when it is the same number in f64 and in f32: both operands must be f32 numbers,
/// and then the f64 result rounded to f32 equals the f32 operation for `+ - * /` (f64 has more
/// than twice f32's precision plus two bits, so double rounding is innocuous), while `max` and
/// the comparisons are exact anyway. The interpreter sees the f64 result, the runtime its f32
/// rounding: each what it would have computed.
pub(super) fn fold_binary(function: BinaryFn, a: f64, b: f64) -> Option<f64> {
    let is_f32 = |value: f64| value.is_nan() || (value as f32) as f64 == value;
    if a.is_nan() || b.is_nan() || !is_f32(a) || !is_f32(b) {
        return None;
    }
    let mask = |condition: bool| if condition { 1.0 } else { 0.0 };
    Some(match function {
        BinaryFn::Add => a + b,
        BinaryFn::Sub => a - b,
        BinaryFn::Mul => a * b,
        BinaryFn::Div => a / b,
        BinaryFn::Max => a.max(b),
        BinaryFn::Greater => mask(a > b),
        BinaryFn::GreaterEqual => mask(a >= b),
        BinaryFn::Equal => mask(a == b),
    })
}

fn reduce_rule(
    graph: &PrimGraph,
    function: ReduceFn,
    axes: &[usize],
    x: PrimNodeId,
    ty: &TensorType,
) -> Rewrite {
    let x_shape = shape(graph, x);
    let count: usize = axes.iter().map(|axis| x_shape[*axis]).product();
    if let Some(value) = splat_value(graph, x) {
        // max(splat c) = c; sum(splat c) = c * n and mean(splat c) = c when every partial
        // sum k * c is an f32 number, so that the sum is exact in any order.
        let folded = match function {
            // (The interpreter's running maximum skips a NaN, so a NaN splat is left alone.)
            ReduceFn::Max => (!value.is_nan()).then_some(value),
            ReduceFn::Sum => exact_multiple(value, count),
            ReduceFn::Mean => exact_multiple(value, count).map(|_| value + 0.0),
        };
        if let Some(folded) = folded {
            return splat(&ty.shape, folded);
        }
    }
    // A reduction over axes of size 1 (or none) only drops or keeps those axes: a reshape
    // (up to the sign of a zero sum).
    if count == 1 {
        if x_shape == ty.shape {
            return Rewrite::Value(x);
        }
        let op = PrimOp::Reshape {
            shape: ty.shape.clone(),
        };
        return Rewrite::Replace(op, vec![x]);
    }
    Rewrite::Keep
}

/// `c * n` if every `k * c` for `k <= n` is an f32 number (so each partial sum is exact): `c`
/// is `m * 2^e` with an odd `m`, and `m * n` fits f32's 24-bit significand without overflow.
/// A zero sums to `+0` (the sum starts at `+0`).
pub(super) fn exact_multiple(value: f64, count: usize) -> Option<f64> {
    if value == 0.0 {
        return Some(0.0);
    }
    let single = value as f32;
    if !single.is_finite() || single as f64 != value {
        return None;
    }
    let bits = single.to_bits();
    let exponent_bits = (bits >> 23) & 0xff;
    let fraction = bits & 0x7f_ffff;
    let significand = if exponent_bits == 0 {
        fraction
    } else {
        fraction | 0x80_0000
    };
    let odd_part = u64::from(significand >> significand.trailing_zeros());
    let product = value * count as f64;
    let fits = odd_part
        .checked_mul(count as u64)
        .is_some_and(|m| m < 1 << 24);
    (fits && (product as f32).is_finite()).then_some(product)
}

fn splat(shape: &[usize], value: f64) -> Rewrite {
    let constant = Constant::Splat {
        shape: shape.to_vec(),
        value,
    };
    Rewrite::Replace(PrimOp::Constant(constant), Vec::new())
}

/// The value of a splat constant node.
fn splat_value(graph: &PrimGraph, id: PrimNodeId) -> Option<f64> {
    match &graph.node(id).op {
        PrimOp::Constant(Constant::Splat { value, .. }) => Some(*value),
        _ => None,
    }
}

fn is_unary(graph: &PrimGraph, id: PrimNodeId, function: UnaryFn) -> bool {
    matches!(graph.node(id).op, PrimOp::Unary(f) if f == function)
}

fn same_bits(value: Option<f64>, wanted: f64) -> bool {
    value.is_some_and(|value| value.to_bits() == wanted.to_bits())
}

fn shape(graph: &PrimGraph, id: PrimNodeId) -> Vec<usize> {
    graph.node(id).ty.shape.clone()
}
