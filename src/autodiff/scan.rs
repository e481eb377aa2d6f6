//! Backpropagation through time: the gradient of a `Scan` is another `Scan` running the other
//! way, whose body is the vector-Jacobian product of the forward body.
//!
//! A scan's result holds only the step outputs, so two things are missing for the backward
//! pass, and both come from extra scans:
//! 1. the state entering each step: a recording scan runs the forward body again with its step
//!    output replaced by its flattened incoming states and the step's matmul results
//!    (recompute rather than change the forward node, so the forward graph stays as it was;
//!    fusion then merges the two scans, `src/fuse/merge_recording_scans.rs`). The backward
//!    body reads the recorded products instead of multiplying again and recomputes only the
//!    elementwise rest of the step;
//! 2. the gradients of the initial states and of the invariants. The backward scan carries
//!    the states' gradients as states; its step output packs, flattened, the sequence
//!    gradients of the step and the carried gradients, and the row of the last step processed
//!    holds the totals. An invariant read only by `matmul(h, v)`, `matmul(h, transpose(v))`
//!    and broadcast `add`s (an RNN's weights and biases) is not summed inside: the step
//!    output stacks the step's `h` and the adjoints of those nodes, and after the scan one
//!    matmul over all steps' rows (`sum_t h_t^T g_t`) and one reduction give its gradient, as
//!    cuDNN and PyTorch do. Other invariants are summed inside, carried as states, and their
//!    running sums are stacked.
//!
//! Cost: linear in the number of steps (one forward recompute, one backward step each). The
//! stacked values are activation-sized per step for hoisted invariants; for the others they
//! are `T` copies of the invariant (a scan that also returned its final states would avoid
//! that).

use std::collections::{HashMap, HashSet};

use super::builder::GradientBuilder;
use super::rules::{not_differentiable, ForwardNode, OperandGradients};
use super::{backpropagate, nodes_needing_gradient, AutodiffError};
use crate::prim::*;

pub(crate) fn scan_rule(
    b: &mut GradientBuilder,
    body: &ScanBody,
    axis: usize,
    reverse: bool,
    node: &ForwardNode,
    g: PrimNodeId,
) -> Result<OperandGradients, AutodiffError> {
    if body
        .graph
        .node_ids()
        .any(|id| matches!(body.graph.node(id).op, PrimOp::Parameter { .. }))
    {
        return Err(not_differentiable(
            node.op,
            "its body reads a parameter directly instead of as an invariant operand",
        ));
    }
    let layout = Layout::of(body, b, node.operands, axis);
    let recorded = if layout.state_shapes.is_empty() {
        None
    } else {
        Some(record_entering_states(
            b, body, &layout, axis, reverse, node,
        )?)
    };
    let backward = backward_body(b, body, &layout, node)?;
    let mut operands: Vec<PrimNodeId> = node.operands[..layout.sequence_count].to_vec();
    operands.extend(recorded);
    operands.push(g);
    for shape in &layout.state_shapes {
        operands.push(b.splat(shape, 0.0)?);
    }
    for position in &backward.carried_invariants {
        operands.push(b.splat(&layout.invariant_shapes[*position], 0.0)?);
    }
    operands.extend(&node.operands[layout.sequence_count + layout.state_shapes.len()..]);
    let scan = PrimOp::Scan {
        body: Box::new(backward.body),
        axis,
        reverse: !reverse,
    };
    let stacked = b.add(scan, &operands)?;
    let packed = b.reshape(stacked, &[layout.steps, backward.packed_size])?;
    let last_row = if reverse { layout.steps - 1 } else { 0 };
    let totals = b.slice(packed, 0, last_row, last_row + 1)?;
    let mut result = vec![None; node.operands.len()];
    for (operand, range) in backward.pieces {
        let shape = b.shape(node.operands[operand]);
        result[operand] = Some(if operand < layout.sequence_count {
            let columns = b.slice(packed, 1, range.0, range.1)?;
            let mut steps_first = vec![layout.steps];
            steps_first.extend(&layout.sequence_shapes[operand]);
            let reshaped = b.reshape(columns, &steps_first)?;
            let perm: Vec<usize> = (0..shape.len())
                .map(|dim| match dim {
                    dim if dim < axis => dim + 1,
                    dim if dim == axis => 0,
                    dim => dim,
                })
                .collect();
            if axis == 0 {
                reshaped
            } else {
                b.transpose(reshaped, &perm)?
            }
        } else {
            let columns = b.slice(totals, 1, range.0, range.1)?;
            b.reshape(columns, &shape)?
        });
    }
    for (operand, piece) in &backward.hoisted_pieces {
        let shape = b.shape(node.operands[*operand]);
        let steps = layout.steps;
        let stacked = |b: &mut GradientBuilder,
                       (range, step_shape): &((usize, usize), Vec<usize>)| {
            let columns = b.slice(packed, 1, range.0, range.1)?;
            let mut all_steps = vec![steps];
            all_steps.extend(step_shape);
            b.reshape(columns, &all_steps)
        };
        let contribution = match piece {
            HoistedPiece::MatMulRight {
                left,
                grad,
                transposed,
            } => {
                let rows = steps * left.1[0];
                let left_rows = stacked(b, left)?;
                let left_rows = b.reshape(left_rows, &[rows, left.1[1]])?;
                let grad_rows = stacked(b, grad)?;
                let grad_rows = b.reshape(grad_rows, &[rows, grad.1[1]])?;
                if *transposed {
                    // The gradient of `transpose(v)`, transposed back: `G^T @ L`.
                    let grad_transposed = b.transpose(grad_rows, &[1, 0])?;
                    b.add(PrimOp::MatMul, &[grad_transposed, left_rows])?
                } else {
                    let left_transposed = b.transpose(left_rows, &[1, 0])?;
                    b.add(PrimOp::MatMul, &[left_transposed, grad_rows])?
                }
            }
            HoistedPiece::Sum { grad } => {
                let all = stacked(b, grad)?;
                b.sum_to_shape(all, &shape)?
            }
        };
        result[*operand] = Some(match result[*operand] {
            Some(sum) => b.add_values(sum, contribution)?,
            None => contribution,
        });
    }
    Ok(result)
}

/// The shapes of a scan's operands as its body sees them.
struct Layout {
    sequence_count: usize,
    steps: usize,
    sequence_shapes: Vec<Vec<usize>>,
    state_shapes: Vec<Vec<usize>>,
    invariant_shapes: Vec<Vec<usize>>,
    /// The body's matmuls, whose per-step results the recording scan stacks after the entering
    /// states so that the backward body reads them instead of multiplying again (an LSTM's
    /// `h W_hh^T`: a 32 x 128 x 512 product per step of the benchmark, for 64 KiB of memory).
    recorded_products: Vec<PrimNodeId>,
    /// `[1; axis]`: leading ones so that a flat step output can be stacked at `axis`.
    leading_ones: Vec<usize>,
}

impl Layout {
    fn of(body: &ScanBody, b: &GradientBuilder, operands: &[PrimNodeId], axis: usize) -> Layout {
        let shapes: Vec<Vec<usize>> = body
            .graph
            .inputs
            .iter()
            .map(|(_, id)| body.graph.node(*id).ty.shape.clone())
            .collect();
        let states_end = body.sequence_count + body.state_count;
        let mut recorded_products: Vec<PrimNodeId> = body
            .graph
            .node_ids()
            .filter(|id| matches!(body.graph.node(*id).op, PrimOp::MatMul))
            .collect();
        recorded_products.sort();
        Layout {
            recorded_products,
            sequence_count: body.sequence_count,
            steps: b.shape(operands[0])[axis],
            sequence_shapes: shapes[..body.sequence_count].to_vec(),
            state_shapes: shapes[body.sequence_count..states_end].to_vec(),
            invariant_shapes: shapes[states_end..].to_vec(),
            leading_ones: vec![1; axis],
        }
    }

    fn flat_step_shape(&self, size: usize) -> Vec<usize> {
        let mut shape = self.leading_ones.clone();
        shape.push(size);
        shape
    }
}

/// A scan like the forward one whose step output is the flattened states entering the step,
/// followed by the step's products (`Layout::recorded_products`).
fn record_entering_states(
    b: &mut GradientBuilder,
    body: &ScanBody,
    layout: &Layout,
    axis: usize,
    reverse: bool,
    node: &ForwardNode,
) -> Result<PrimNodeId, AutodiffError> {
    let mut graph = body.graph.clone();
    let mut states: Vec<PrimNodeId> = graph.inputs
        [body.sequence_count..body.sequence_count + body.state_count]
        .iter()
        .map(|(_, id)| *id)
        .collect();
    // The clone keeps the body's node ids, so the products are found at the same ids.
    states.extend(&layout.recorded_products);
    let mut builder = GradientBuilder {
        graph: &mut graph,
        origin: b.origin.clone(),
    };
    let recorded = flatten_and_join(&mut builder, &states, layout)?;
    graph.outputs.truncate(body.state_count);
    graph.outputs.push(("entering_states".into(), recorded));
    let recording = ScanBody {
        graph,
        sequence_count: body.sequence_count,
        state_count: body.state_count,
    };
    let scan = PrimOp::Scan {
        body: Box::new(recording),
        axis,
        reverse,
    };
    b.add(scan, node.operands)
}

/// The values flattened and concatenated, shaped `[1; axis] + [total]`.
fn flatten_and_join(
    b: &mut GradientBuilder,
    values: &[PrimNodeId],
    layout: &Layout,
) -> Result<PrimNodeId, AutodiffError> {
    let mut flat = Vec::new();
    for value in values {
        let size = b.shape(*value).iter().product();
        flat.push(b.reshape(*value, &[size])?);
    }
    let joined = match flat.len() {
        0 => return Err(internal("a scan gradient packs nothing")),
        1 => flat[0],
        _ => b.add(PrimOp::Concat { axis: 0 }, &flat)?,
    };
    let total = b.shape(joined)[0];
    b.reshape(joined, &layout.flat_step_shape(total))
}

/// The backward body and where its packed step output keeps each operand's gradient.
struct BackwardBody {
    body: ScanBody,
    /// Invariant positions whose gradients the backward scan carries.
    carried_invariants: Vec<usize>,
    /// `(operand position, columns of the packed output)`.
    pieces: Vec<(usize, (usize, usize))>,
    /// `(invariant operand position, stacked values)`: contributions computed after the scan.
    hoisted_pieces: Vec<(usize, HoistedPiece)>,
    packed_size: usize,
}

/// The body of the backward scan. Inputs: the sequence slices, the entering states (when there
/// are states), the step output's gradient; carried: the states' gradients and the needed
/// invariants' running gradients; invariants: the forward invariants.
fn backward_body(
    b: &mut GradientBuilder,
    body: &ScanBody,
    layout: &Layout,
    node: &ForwardNode,
) -> Result<BackwardBody, AutodiffError> {
    let (sequence_count, state_count) = (body.sequence_count, body.state_count);
    let invariant_start = sequence_count + state_count;
    let input = |position: usize| body.graph.inputs[position].1;
    let ty = |id: PrimNodeId| body.graph.node(id).ty.clone();
    let mut graph = PrimGraph::default();
    let origin = b.origin.clone();
    let mut value_of: HashMap<PrimNodeId, PrimNodeId> = HashMap::new();
    for position in 0..sequence_count {
        let name = &body.graph.inputs[position].0;
        let id = graph.add_input(name, ty(input(position)), origin.clone());
        value_of.insert(input(position), id);
    }
    let state_sizes: Vec<usize> = layout
        .state_shapes
        .iter()
        .map(|shape| shape.iter().product())
        .collect();
    let product_sizes: Vec<usize> = layout
        .recorded_products
        .iter()
        .map(|id| body.graph.node(*id).ty.element_count())
        .collect();
    let recorded_total: usize = state_sizes.iter().chain(&product_sizes).sum();
    let entering = (state_count > 0).then(|| {
        let shape = layout.flat_step_shape(recorded_total);
        graph.add_input("entering_states", TensorType::float(shape), origin.clone())
    });
    let step_output = body.graph.outputs[state_count].1;
    let grad_out = graph.add_input("grad_out", ty(step_output), origin.clone());
    let grad_states: Vec<PrimNodeId> = (0..state_count)
        .map(|state| {
            let name = format!("grad_{}", body.graph.inputs[sequence_count + state].0);
            graph.add_input(&name, ty(input(sequence_count + state)), origin.clone())
        })
        .collect();
    let needed_invariants: Vec<usize> = (0..layout.invariant_shapes.len())
        .filter(|position| node.needs[invariant_start + position])
        .collect();
    let (needs, hoisted) = plan_invariant_gradients(body, node, &needed_invariants);
    let carried_invariants: Vec<usize> = needed_invariants
        .iter()
        .copied()
        .filter(|position| !hoisted.iter().any(|(hoisted, _)| hoisted == position))
        .collect();
    let running: Vec<PrimNodeId> = carried_invariants
        .iter()
        .map(|position| {
            let name = format!("grad_{}", body.graph.inputs[invariant_start + position].0);
            graph.add_input(&name, ty(input(invariant_start + position)), origin.clone())
        })
        .collect();
    for position in invariant_start..body.graph.inputs.len() {
        let name = &body.graph.inputs[position].0;
        let id = graph.add_input(name, ty(input(position)), origin.clone());
        value_of.insert(input(position), id);
    }
    let mut builder = GradientBuilder {
        graph: &mut graph,
        origin: origin.clone(),
    };
    if let Some(entering) = entering {
        let flat = builder.reshape(entering, &[recorded_total])?;
        let mut offset = 0;
        for (state, size) in state_sizes.iter().enumerate() {
            let piece = builder.slice(flat, 0, offset, offset + size)?;
            let value = builder.reshape(piece, &layout.state_shapes[state])?;
            value_of.insert(input(sequence_count + state), value);
            offset += size;
        }
        // The recorded products stand for the body's matmuls, which are then not copied.
        for (product, size) in layout.recorded_products.iter().zip(&product_sizes) {
            let piece = builder.slice(flat, 0, offset, offset + size)?;
            let value = builder.reshape(piece, &ty(*product).shape)?;
            value_of.insert(*product, value);
            offset += size;
        }
    }
    copy_body_nodes(&mut builder, &body.graph, &mut value_of)?;
    let mut seeds: Vec<(PrimNodeId, PrimNodeId)> = (0..state_count)
        .map(|state| (body.graph.outputs[state].1, grad_states[state]))
        .collect();
    seeds.push((step_output, grad_out));
    let adjoints = backpropagate(
        &body.graph,
        builder.graph,
        &|id| value_of[&id],
        &seeds,
        &needs,
    )?;
    let gradient_of =
        |builder: &mut GradientBuilder, position: usize| match adjoints.get(&input(position)) {
            Some(adjoint) => Ok(*adjoint),
            None => builder.splat(&ty(input(position)).shape, 0.0),
        };
    let mut next_states = Vec::new();
    for state in 0..state_count {
        next_states.push(gradient_of(&mut builder, sequence_count + state)?);
    }
    for (position, running) in carried_invariants.iter().zip(&running) {
        let contribution = gradient_of(&mut builder, invariant_start + position)?;
        next_states.push(builder.add_values(*running, contribution)?);
    }
    let mut packed_values = Vec::new();
    let mut pieces = Vec::new();
    let mut offset = 0;
    // A value packed twice (the gradient of a sequence that is also a hoisted term's) is
    // stacked once.
    let mut placed: HashMap<PrimNodeId, (usize, usize)> = HashMap::new();
    let mut columns = |value: PrimNodeId, size: usize| {
        *placed.entry(value).or_insert_with(|| {
            packed_values.push(value);
            offset += size;
            (offset - size, offset)
        })
    };
    let mut pack = |operand: usize, value: PrimNodeId, size: usize| {
        pieces.push((operand, columns(value, size)));
    };
    for position in (0..sequence_count).filter(|position| node.needs[*position]) {
        let value = gradient_of(&mut builder, position)?;
        pack(position, value, ty(input(position)).element_count());
    }
    for state in (0..state_count).filter(|state| node.needs[sequence_count + state]) {
        pack(
            sequence_count + state,
            next_states[state],
            state_sizes[state],
        );
    }
    for (carried, position) in carried_invariants.iter().enumerate() {
        let size = ty(input(invariant_start + position)).element_count();
        pack(
            invariant_start + position,
            next_states[state_count + carried],
            size,
        );
    }
    let mut hoisted_pieces = Vec::new();
    for (position, terms) in &hoisted {
        for term in terms {
            let user = term.user();
            let user_shape = ty(user).shape;
            let grad = match adjoints.get(&user) {
                Some(adjoint) => *adjoint,
                None => builder.splat(&user_shape, 0.0)?,
            };
            let grad_columns = columns(grad, ty(user).element_count());
            let piece = match term {
                HoistedTerm::MatMulRight { left, .. }
                | HoistedTerm::MatMulRightTransposed { left, .. } => {
                    let left_shape = ty(*left).shape;
                    let left_columns = columns(value_of[left], ty(*left).element_count());
                    HoistedPiece::MatMulRight {
                        left: (left_columns, left_shape),
                        grad: (grad_columns, user_shape),
                        transposed: matches!(term, HoistedTerm::MatMulRightTransposed { .. }),
                    }
                }
                HoistedTerm::Add { .. } => HoistedPiece::Sum {
                    grad: (grad_columns, user_shape),
                },
            };
            hoisted_pieces.push((invariant_start + position, piece));
        }
    }
    let packed = flatten_and_join(&mut builder, &packed_values, layout)?;
    graph.outputs = next_states
        .iter()
        .enumerate()
        .map(|(position, id)| (format!("next_{position}"), *id))
        .collect();
    graph.outputs.push(("packed".into(), packed));
    let sequences = sequence_count + usize::from(entering.is_some()) + 1;
    let states = state_count + carried_invariants.len();
    Ok(BackwardBody {
        body: ScanBody {
            graph,
            sequence_count: sequences,
            state_count: states,
        },
        carried_invariants,
        pieces,
        hoisted_pieces,
        packed_size: offset,
    })
}

/// How one body node that reads an invariant `v` contributes to `v`'s gradient, computed
/// after the backward scan from stacked per-step values instead of summed inside it.
enum HoistedTerm {
    /// `user = left @ v` (both rank 2): the contribution is `sum_t left_t^T @ g_t`, one matmul
    /// over every step's rows at once.
    MatMulRight { user: PrimNodeId, left: PrimNodeId },
    /// `user = left @ transpose(v)` (a layer's `[out, in]` weight): the contribution is
    /// `sum_t g_t^T @ left_t`.
    MatMulRightTransposed { user: PrimNodeId, left: PrimNodeId },
    /// `user = v + other` (or `other + v`), `v` broadcast: `g_t` summed to `v`'s shape.
    Add { user: PrimNodeId },
}

impl HoistedTerm {
    fn user(&self) -> PrimNodeId {
        match self {
            HoistedTerm::MatMulRight { user, .. }
            | HoistedTerm::MatMulRightTransposed { user, .. }
            | HoistedTerm::Add { user } => *user,
        }
    }
}

/// Where a hoisted term's stacked values are in the packed step output: `(columns, the
/// value's shape in one step)`.
enum HoistedPiece {
    MatMulRight {
        left: ((usize, usize), Vec<usize>),
        grad: ((usize, usize), Vec<usize>),
        transposed: bool,
    },
    Sum {
        grad: ((usize, usize), Vec<usize>),
    },
}

/// Which nodes of the body need a gradient, and the needed invariants whose gradient is
/// hoisted out of the backward scan (with their terms); the other needed invariants are
/// summed inside it, carried as states. An invariant is hoisted when every reader is a
/// [`HoistedTerm`] whose output needs a gradient anyway (so its adjoint exists without the
/// invariant as a source): the stacked per-step values are then activation-sized, where the
/// packed running sums would be `T` copies of the invariant.
fn plan_invariant_gradients(
    body: &ScanBody,
    node: &ForwardNode,
    needed_invariants: &[usize],
) -> (HashSet<PrimNodeId>, Vec<(usize, Vec<HoistedTerm>)>) {
    let (sequence_count, state_count) = (body.sequence_count, body.state_count);
    let invariant_start = sequence_count + state_count;
    let input = |position: usize| body.graph.inputs[position].1;
    let mut base: Vec<PrimNodeId> = (sequence_count..invariant_start).map(input).collect();
    base.extend(
        (0..sequence_count)
            .filter(|position| node.needs[*position])
            .map(input),
    );
    let mut candidates: Vec<(usize, Vec<HoistedTerm>)> = needed_invariants
        .iter()
        .filter_map(|position| {
            hoisted_terms(&body.graph, input(invariant_start + position))
                .map(|terms| (*position, terms))
        })
        .collect();
    let needs_with = |hoisted: &[(usize, Vec<HoistedTerm>)]| {
        let mut sources = base.clone();
        sources.extend(
            needed_invariants
                .iter()
                .filter(|position| !hoisted.iter().any(|(hoisted, _)| hoisted == *position))
                .map(|position| input(invariant_start + position)),
        );
        nodes_needing_gradient(&body.graph, &sources, false)
    };
    let without = needs_with(&candidates);
    candidates.retain(|(_, terms)| terms.iter().all(|term| without.contains(&term.user())));
    (needs_with(&candidates), candidates)
}

/// The terms of every reader of `invariant`, or `None` when one reader is of another kind
/// (or the invariant is itself a body output).
fn hoisted_terms(graph: &PrimGraph, invariant: PrimNodeId) -> Option<Vec<HoistedTerm>> {
    let is_output = |id: PrimNodeId| graph.outputs.iter().any(|(_, output)| *output == id);
    let rank = |id: PrimNodeId| graph.node(id).ty.shape.len();
    // `user = left @ right` with both rank 2 and `right` read once: its `left`.
    let matmul_left = |user: PrimNodeId, right: PrimNodeId| {
        let operands = graph.operands(user);
        let reads_once = operands.iter().filter(|operand| **operand == right).count() == 1;
        (matches!(graph.node(user).op, PrimOp::MatMul)
            && reads_once
            && operands[1] == right
            && rank(right) == 2
            && rank(operands[0]) == 2)
            .then_some(operands[0])
    };
    let users = graph.users(invariant);
    if is_output(invariant) || users.is_empty() {
        return None;
    }
    let mut terms = Vec::new();
    for user in users {
        let operands = graph.operands(user);
        if operands
            .iter()
            .filter(|operand| **operand == invariant)
            .count()
            != 1
        {
            return None;
        }
        match &graph.node(user).op {
            PrimOp::MatMul => terms.push(HoistedTerm::MatMulRight {
                user,
                left: matmul_left(user, invariant)?,
            }),
            PrimOp::Binary(BinaryFn::Add) => terms.push(HoistedTerm::Add { user }),
            PrimOp::Transpose { perm } if perm == &[1, 0] && !is_output(user) => {
                let readers = graph.users(user);
                if readers.is_empty() {
                    return None;
                }
                for reader in readers {
                    terms.push(HoistedTerm::MatMulRightTransposed {
                        user: reader,
                        left: matmul_left(reader, user)?,
                    });
                }
            }
            _ => return None,
        }
    }
    Some(terms)
}

/// Copies every non-input node of `source` into the builder's graph, in order, recording
/// where each went in `value_of` (which already maps the inputs).
fn copy_body_nodes(
    b: &mut GradientBuilder,
    source: &PrimGraph,
    value_of: &mut HashMap<PrimNodeId, PrimNodeId>,
) -> Result<(), AutodiffError> {
    for id in source.topological_order() {
        let node = source.node(id);
        // Inputs, and values the caller already has (recorded products), are not copied.
        if matches!(node.op, PrimOp::Input { .. }) || value_of.contains_key(&id) {
            continue;
        }
        let operands: Vec<PrimNodeId> = source
            .operands(id)
            .iter()
            .map(|operand| value_of[operand])
            .collect();
        let copy = b
            .graph
            .add(node.op.clone(), &operands, node.origin.clone())
            .map_err(|error| internal(&error.to_string()))?;
        value_of.insert(id, copy);
    }
    Ok(())
}

fn internal(message: &str) -> AutodiffError {
    AutodiffError::Internal {
        op: "scan",
        message: message.to_string(),
    }
}
