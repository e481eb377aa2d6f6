//! The f32 runtime against the f64 reference interpreter on the ops that move elements (reshape,
//! transpose, slice, concat, gather), the source ops (constants, noise, inputs and parameters as
//! outputs), scans with states and invariants, and chains of elementwise ops (the graphs fusion
//! rewrites), at random shapes from fixed seeds, at 1 and 2 threads (see `tests/runtime_common`).

#[allow(dead_code)]
mod runtime_common;

use nnc::ir::ElementType;
use nnc::prim::*;
use nnc::runtime::Executable;
use nnc::tensor::Tensor;
use runtime_common::{check_cases, param_store, Case, Rng};

#[test]
fn reshape_matches_the_interpreter() {
    check_cases("reshape", 24, 21, |rng, _| {
        let shape = rng.any_shape(1, 4, 5);
        // The new shape: the element count's prime factors dealt out to 1-4 dims.
        let mut count: usize = shape.iter().product();
        let mut factors = Vec::new();
        let mut divisor = 2;
        while count > 1 {
            while count.is_multiple_of(divisor) {
                factors.push(divisor);
                count /= divisor;
            }
            divisor += 1;
        }
        let mut new_shape = vec![1; rng.int(1, 4)];
        for factor in factors {
            let dim = rng.int(0, new_shape.len() - 1);
            new_shape[dim] *= factor;
        }
        let mut case = Case::new(format!("{shape:?} -> {new_shape:?}"));
        let x = case.operand(rng, &shape);
        let y = case.add(PrimOp::Reshape { shape: new_shape }, &[x]);
        // A reshape may alias its operand; negating it afterwards checks the copy is intact.
        let z = case.add(PrimOp::Unary(UnaryFn::Neg), &[y]);
        case.output(y);
        case.output(z);
        case
    });
}

#[test]
fn transpose_matches_the_interpreter() {
    check_cases("transpose", 30, 22, |rng, index| {
        let shape = if index >= 28 {
            vec![3, 67, 45]
        } else {
            rng.any_shape(1, 5, 5)
        };
        let mut perm: Vec<usize> = (0..shape.len()).collect();
        for position in (1..perm.len()).rev() {
            let other = rng.int(0, position);
            perm.swap(position, other);
        }
        let mut case = Case::new(format!("{shape:?} perm {perm:?}"));
        let x = case.operand(rng, &shape);
        case.finish(PrimOp::Transpose { perm }, &[x])
    });
}

#[test]
fn slice_matches_the_interpreter() {
    check_cases("slice", 30, 23, |rng, _| {
        let shape = rng.any_shape(1, 4, 7);
        let axis = rng.int(0, shape.len() - 1);
        let start = rng.int(0, shape[axis] - 1);
        let end = rng.int(start + 1, shape[axis]);
        let mut case = Case::new(format!("{shape:?} axis {axis} {start}..{end}"));
        let x = case.operand(rng, &shape);
        case.finish(PrimOp::Slice { axis, start, end }, &[x])
    });
}

#[test]
fn concat_of_one_to_four_operands_matches_the_interpreter() {
    check_cases("concat", 32, 24, |rng, index| {
        let shape = rng.any_shape(1, 4, 5);
        let axis = rng.int(0, shape.len() - 1);
        let count = index % 4 + 1;
        let mut case = Case::new(format!("{count} x {shape:?} axis {axis}"));
        let mut operands: Vec<PrimNodeId> = Vec::new();
        for _ in 0..count {
            // Now and then the same value twice.
            if !operands.is_empty() && rng.int(0, 4) == 0 {
                operands.push(*operands.last().unwrap());
                continue;
            }
            let mut part = shape.clone();
            part[axis] = rng.int(1, 4);
            operands.push(case.operand(rng, &part));
        }
        case.label += &format!(
            " parts {:?}",
            operands
                .iter()
                .map(|id| case.graph.node(*id).ty.shape[axis])
                .collect::<Vec<_>>()
        );
        case.finish(PrimOp::Concat { axis }, &operands)
    });
}

/// A gather case: a table `[V, D...]` and integer indices in `0..V`.
fn gather_case(rng: &mut Rng) -> Case {
    let rows = rng.int(1, 9);
    let mut table_shape = vec![rows];
    table_shape.extend(rng.any_shape(0, 2, 5));
    let index_shape = rng.any_shape(0, 2, 4);
    let count: usize = index_shape.iter().product();
    let indices: Vec<f32> = (0..count).map(|_| rng.int(0, rows - 1) as f32).collect();
    let mut case = Case::new(format!("table {table_shape:?} indices {index_shape:?}"));
    let table = case.operand(rng, &table_shape);
    let ids = case.input_values(
        Tensor::from_vec(&index_shape, indices).unwrap(),
        ElementType::Int64,
    );
    case.finish(PrimOp::Gather, &[table, ids])
}

#[test]
fn gather_matches_the_interpreter() {
    check_cases("gather", 30, 25, |rng, _| gather_case(rng));
}

/// An index outside the table (below 0, exactly the row count, far past it, between rows, NaN) is
/// an error naming the index and the table's size, not a panic or a read out of bounds.
#[test]
fn gather_rejects_indices_outside_the_table() {
    let mut rng = Rng(26);
    for kind in 0..5 {
        let mut case = gather_case(&mut rng);
        let table = case.graph.operands(case.graph.outputs[0].1)[0];
        let rows = case.graph.node(table).ty.shape[0];
        let bad = [-1.0, rows as f32, 1000.0, 0.5, f32::NAN][kind];
        let ids = case.inputs.last_mut().unwrap();
        let last = ids.data.len() - 1;
        ids.data[last] = bad;
        let store = param_store(&case.params);
        for threads in [1, 2] {
            let executable = Executable::new(case.graph.clone(), threads).expect("compiles");
            let error = executable
                .run(&store, &case.inputs)
                .expect_err("an index outside the table must fail");
            let (message, expected) = (
                error.to_string(),
                format!("index {bad} is not a row of a table with {rows} rows"),
            );
            assert!(
                message.contains(&expected),
                "{}: `{message}` lacks `{expected}`",
                case.label
            );
        }
    }
}

#[test]
fn random_normal_equals_the_interpreter() {
    check_cases("random_normal", 20, 27, |rng, index| {
        let shape = if index == 19 {
            vec![64, 129]
        } else {
            rng.any_shape(0, 4, 6)
        };
        let seed = rng.next_u64();
        let mut case = Case::new(format!("seed {seed} {shape:?}"));
        let noise = case.add(
            PrimOp::RandomNormal {
                seed,
                shape: shape.clone(),
            },
            &[],
        );
        // Also as an operand: noise scaled by an input, as dropout-like layers use it.
        let scale = case.input(rng, &shape);
        let product = case.add(PrimOp::Binary(BinaryFn::Mul), &[noise, scale]);
        case.output(noise);
        case.output(product);
        case
    });
}

/// Constants (a scalar splat, a shaped splat, dense values) as outputs and as operands, and
/// inputs and parameters returned as they are.
#[test]
fn constants_and_sources_match_the_interpreter() {
    check_cases("constants", 24, 28, |rng, index| {
        let shape = rng.any_shape(1, 3, 5);
        let count = shape.iter().product();
        let constant = match index % 3 {
            0 => Constant::scalar(rng.unit() * 4.0 - 2.0),
            1 => Constant::Splat {
                shape: shape.clone(),
                value: rng.unit() - 0.5,
            },
            _ => Constant::Dense(
                Tensor::from_vec(
                    &shape,
                    rng.values(count, -3.0, 3.0)
                        .iter()
                        .map(|value| f64::from(*value))
                        .collect(),
                )
                .unwrap(),
            ),
        };
        let mut case = Case::new(format!("{constant:?} with {shape:?}"));
        let c = case.add(PrimOp::Constant(constant), &[]);
        let x = case.operand(rng, &shape);
        let sum = case.add(PrimOp::Binary(BinaryFn::Add), &[x, c]);
        let product = case.add(PrimOp::Binary(BinaryFn::Mul), &[c, x]);
        for id in [c, x, sum, product] {
            case.output(id);
        }
        case
    });
}

/// A recurrent scan: sequences `[B, T, D]` (or `[T, B, D]`) scanned along T with states `h`
/// (and `c`) and invariants `W [D, H]`, `U [H, H]`, `bias [H]`: each step computes
/// `s = 0.5 * (x W + h U + bias)`, `c' = c * sigmoid(s) + tanh(s)`, `h' = tanh(c')` (or `tanh(s)`
/// with one state), and outputs `h' + c'` (or the step's slice of a second sequence).
fn scan_case(rng: &mut Rng, index: usize) -> Case {
    let (batch, steps, width, hidden) =
        (rng.int(1, 3), rng.int(1, 5), rng.int(1, 6), rng.int(1, 6));
    let (axis, reverse, two_states, second_sequence) = (
        index % 2,
        rng.coin(),
        !index.is_multiple_of(3),
        index % 4 == 3,
    );
    let mut body = Case::new("body");
    let x_t = body.input(rng, &[batch, width]);
    let z_t = second_sequence.then(|| body.input(rng, &[batch, hidden]));
    let h = body.input(rng, &[batch, hidden]);
    let c = two_states.then(|| body.input(rng, &[batch, hidden]));
    let (w, u, bias) = (
        body.input(rng, &[width, hidden]),
        body.input(rng, &[hidden, hidden]),
        body.input(rng, &[hidden]),
    );
    let xw = body.add(PrimOp::MatMul, &[x_t, w]);
    let hu = body.add(PrimOp::MatMul, &[h, u]);
    let sum = body.add(PrimOp::Binary(BinaryFn::Add), &[xw, hu]);
    let sum = body.add(PrimOp::Binary(BinaryFn::Add), &[sum, bias]);
    let half = body.add(PrimOp::Constant(Constant::scalar(0.5)), &[]);
    let s = body.add(PrimOp::Binary(BinaryFn::Mul), &[sum, half]);
    let tanh_s = body.add(PrimOp::Unary(UnaryFn::Tanh), &[s]);
    let step_output = if let Some(c) = c {
        let gate = body.add(PrimOp::Unary(UnaryFn::Sigmoid), &[s]);
        let kept = body.add(PrimOp::Binary(BinaryFn::Mul), &[c, gate]);
        let c_next = body.add(PrimOp::Binary(BinaryFn::Add), &[kept, tanh_s]);
        let h_next = body.add(PrimOp::Unary(UnaryFn::Tanh), &[c_next]);
        body.output(h_next);
        body.output(c_next);
        body.add(PrimOp::Binary(BinaryFn::Add), &[h_next, c_next])
    } else {
        body.output(tanh_s);
        tanh_s
    };
    // With a second sequence the step output is the step's own input slice, passed through.
    body.output(z_t.unwrap_or(step_output));
    let sequence_shape = |inner: usize| {
        if axis == 1 {
            vec![batch, steps, inner]
        } else {
            vec![steps, batch, inner]
        }
    };
    let mut case = Case::new(format!("B {batch} T {steps} D {width} H {hidden} axis {axis} reverse {reverse} states {} second {second_sequence}", 1 + two_states as usize));
    let mut operands = vec![case.input(rng, &sequence_shape(width))];
    if second_sequence {
        operands.push(case.input(rng, &sequence_shape(hidden)));
    }
    operands.push(case.input(rng, &[batch, hidden]));
    if two_states {
        operands.push(case.input(rng, &[batch, hidden]));
    }
    operands.push(case.parameter(rng, &[width, hidden]));
    operands.push(case.input(rng, &[hidden, hidden]));
    operands.push(case.parameter(rng, &[hidden]));
    let scan_body = ScanBody {
        graph: body.graph,
        sequence_count: 1 + second_sequence as usize,
        state_count: 1 + two_states as usize,
    };
    case.finish(
        PrimOp::Scan {
            body: Box::new(scan_body),
            axis,
            reverse,
        },
        &operands,
    )
}

#[test]
fn scan_with_states_and_invariants_matches_the_interpreter() {
    check_cases("scan", 24, 29, scan_case);
}

/// A scan body that reads a parameter itself rather than through an invariant: `verify` accepts
/// the graph and the interpreter runs it.
#[test]
fn scan_body_reading_a_parameter_matches_the_interpreter() {
    check_cases("scan body parameter", 1, 32, |rng, _| {
        let mut body = Case::new("body");
        let x_t = body.input(rng, &[2, 3]);
        let h = body.input(rng, &[2, 3]);
        let bias = body.add(
            PrimOp::Parameter {
                name: "p0.bias".into(),
                shape: vec![3],
            },
            &[],
        );
        let sum = body.add(PrimOp::Binary(BinaryFn::Add), &[x_t, h]);
        let next = body.add(PrimOp::Binary(BinaryFn::Add), &[sum, bias]);
        body.output(next);
        body.output(next);
        nnc::prim::verify(&body.graph).expect("the body verifies");
        let mut case = Case::new("[2, 4, 3] with a bias parameter in the body");
        let sequence = case.input(rng, &[2, 4, 3]);
        let initial = case.input(rng, &[2, 3]);
        case.params.push((
            "p0.bias".into(),
            Tensor::from_vec(&[3], rng.values(3, -1.0, 1.0)).unwrap(),
        ));
        let scan_body = ScanBody {
            graph: body.graph,
            sequence_count: 1,
            state_count: 1,
        };
        let case = case.finish(
            PrimOp::Scan {
                body: Box::new(scan_body),
                axis: 1,
                reverse: false,
            },
            &[sequence, initial],
        );
        nnc::prim::verify(&case.graph).expect("the graph verifies");
        case
    });
}

/// Chains of 2-6 elementwise ops over operands of several broadcast shapes, with some
/// intermediate values also returned: the graphs that elementwise fusion turns into one kernel.
#[test]
fn elementwise_chains_match_the_interpreter() {
    let unary = [
        UnaryFn::Relu,
        UnaryFn::Sigmoid,
        UnaryFn::Tanh,
        UnaryFn::Neg,
        UnaryFn::Abs,
        UnaryFn::Gelu,
        UnaryFn::Silu,
    ];
    let binary = [BinaryFn::Add, BinaryFn::Sub, BinaryFn::Mul, BinaryFn::Max];
    check_cases("elementwise chain", 40, 30, |rng, index| {
        let shape = if index >= 36 {
            vec![2, 8, 77]
        } else {
            rng.any_shape(1, 4, 6)
        };
        let mut case = Case::new(format!("{shape:?}"));
        let mut value = case.operand(rng, &shape);
        let mut names = Vec::new();
        for _ in 0..rng.int(2, 6) {
            if rng.coin() {
                let function = unary[rng.int(0, unary.len() - 1)];
                names.push(function.name());
                value = case.add(PrimOp::Unary(function), &[value]);
            } else {
                let function = binary[rng.int(0, binary.len() - 1)];
                names.push(function.name());
                // The other operand: full, a trailing vector, per-channel, a scalar, or a
                // value already in the chain.
                let other = match rng.int(0, 4) {
                    0 => case.operand(rng, &shape),
                    1 => case.operand(rng, &shape[shape.len() - 1..]),
                    2 => case.input(
                        rng,
                        &shape
                            .iter()
                            .enumerate()
                            .map(|(axis, size)| if axis == 0 { *size } else { 1 })
                            .collect::<Vec<_>>(),
                    ),
                    3 => case.add(
                        PrimOp::Constant(Constant::scalar(rng.unit() * 2.0 - 1.0)),
                        &[],
                    ),
                    _ => value,
                };
                let operands = if rng.coin() {
                    [value, other]
                } else {
                    [other, value]
                };
                value = case.add(PrimOp::Binary(function), &operands);
            }
            if rng.int(0, 3) == 0 {
                case.output(value);
            }
        }
        case.output(value);
        case.label += &format!(" {names:?}");
        case
    });
}

/// A graph whose parameter operand is shared by two ops and whose input is read three times.
#[test]
fn shared_operands_match_the_interpreter() {
    check_cases("shared operands", 10, 31, |rng, _| {
        let (rows, columns) = (rng.int(1, 8), rng.int(1, 8));
        let mut case = Case::new(format!("[{rows}, {columns}]"));
        let x = case.input(rng, &[rows, columns]);
        let w = case.parameter(rng, &[columns, columns]);
        let first = case.add(PrimOp::MatMul, &[x, w]);
        let second = case.add(PrimOp::MatMul, &[first, w]);
        let sum = case.add(PrimOp::Binary(BinaryFn::Add), &[second, x]);
        let product = case.add(PrimOp::Binary(BinaryFn::Mul), &[sum, x]);
        case.output(product);
        case.output(first);
        case
    });
}
