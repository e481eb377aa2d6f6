//! Lowering of recurrences to `Scan`: PyTorch's rnn, lstm and gru, and cells written in the
//! language.
//!
//! A built-in layer becomes, per layer and direction, one large matmul that projects the whole
//! sequence at once (`x W_ih^T + b_ih`, outside the loop, where it is efficient) and a scan whose
//! body adds the recurrent projection `h W_hh^T + b_hh` and applies the gates, with PyTorch's
//! gate order and equations:
//! - rnn: `h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)`;
//! - lstm (i, f, g, o): `c' = sigmoid(f) * c + sigmoid(i) * tanh(g)`, `h' = sigmoid(o) * tanh(c')`;
//! - gru (r, z, n): `r = sigmoid(x_r + h_r)`, `z = sigmoid(x_z + h_z)`,
//!   `n = tanh(x_n + r * h_n)` (where `h_n` includes `b_hn`), `h' = (1 - z) * n + z * h`.
//!
//! States start at zero. A bidirectional layer runs a second, reversed scan with the `_reverse`
//! weights and concatenates the two outputs on the feature axis; a stacked layer reads the
//! previous layer's output. With `sequence = false` the result is each direction's final hidden
//! state (PyTorch's `h_n` of the last layer, concatenated): for one direction that is the last
//! step's output; for the reverse direction it is its output at position 0.

use super::{origin_of, Emitter, GraphLowering, LowerError};
use crate::ir::{NodeId, RecurrentAttrs, RecurrentKind};
use crate::prim::*;

/// A built-in `rnn`, `lstm` or `gru` on `[N, T, I]`.
pub(super) fn recurrent(
    cx: &mut GraphLowering,
    attrs: &RecurrentAttrs,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let directions: &[bool] = if attrs.bidirectional {
        &[false, true]
    } else {
        &[false]
    };
    // The layers run time-major ([T, N, features]): each step's slice of a projected sequence
    // is then one contiguous block that the scan hands its body in place, where batch-major it
    // would gather N rows at every step (2 MiB of copies per forward pass of the benchmark LSTM,
    // and as much again for each scan of its backward pass).
    let mut layer_input = cx.out.transpose(x, vec![1, 0, 2])?;
    let mut outputs = Vec::new();
    for layer in 0..attrs.layers {
        outputs.clear();
        for &reverse in directions {
            let suffix = format!("_l{layer}{}", if reverse { "_reverse" } else { "" });
            outputs.push(direction(cx, attrs, layer_input, &suffix, reverse)?);
        }
        layer_input = cx.out.concat(&outputs, 2)?;
    }
    if attrs.sequence {
        return cx.out.transpose(layer_input, vec![1, 0, 2]);
    }
    let steps = cx.out.shape(x)[1];
    let mut finals = Vec::new();
    for (output, reverse) in outputs.iter().zip(directions) {
        let last = if *reverse { 0 } else { steps - 1 };
        finals.push(cx.out.select(*output, 0, last)?);
    }
    cx.out.concat(&finals, 1)
}

/// One layer in one direction, time-major: `[T, N, I] -> [T, N, H]`.
fn direction(
    cx: &mut GraphLowering,
    attrs: &RecurrentAttrs,
    x: PrimNodeId,
    suffix: &str,
    reverse: bool,
) -> Result<PrimNodeId, LowerError> {
    let weight_ih = cx.parameter(&format!("weight_ih{suffix}"))?;
    let weight_ih = cx.out.transpose_matrix(weight_ih)?;
    let mut projected = cx.out.matmul(x, weight_ih)?;
    if attrs.bias {
        let bias_ih = cx.parameter(&format!("bias_ih{suffix}"))?;
        projected = cx.out.binary(BinaryFn::Add, projected, bias_ih)?;
    }
    let weight_hh = cx.parameter(&format!("weight_hh{suffix}"))?;
    let mut invariants = vec![cx.out.transpose_matrix(weight_hh)?];
    if attrs.bias {
        invariants.push(cx.parameter(&format!("bias_hh{suffix}"))?);
    }
    let (batch, hidden) = (cx.out.shape(x)[1], attrs.hidden as usize);
    let body = cell_body(attrs.kind, batch, hidden, attrs.bias, cx.out.origin.clone())?;
    let mut operands = vec![projected];
    for _ in 0..body.state_count {
        operands.push(cx.out.zeros(vec![batch, hidden])?);
    }
    operands.extend(invariants);
    let scan = PrimOp::Scan {
        body: Box::new(body),
        axis: 0,
        reverse,
    };
    cx.out.emit(scan, &operands)
}

/// The step of a built-in cell. Inputs: the projected step `x` `[N, G*H]`, the states (`h`, and
/// `c` for lstm) `[N, H]`, `W_hh^T` `[H, G*H]` and, with bias, `b_hh` `[G*H]`.
fn cell_body(
    kind: RecurrentKind,
    batch: usize,
    hidden: usize,
    bias: bool,
    origin: Origin,
) -> Result<ScanBody, LowerError> {
    let gates = kind.gate_count() as usize * hidden;
    let mut body = Emitter {
        graph: PrimGraph::default(),
        origin: origin.clone(),
    };
    let mut input = |name: &str, shape: Vec<usize>| body_input(&mut body, name, shape);
    let x = input("x", vec![batch, gates]);
    let h = input("h", vec![batch, hidden]);
    let c = (kind == RecurrentKind::Lstm).then(|| input("c", vec![batch, hidden]));
    let weight_hh = input("weight_hh_t", vec![hidden, gates]);
    let bias_hh = bias.then(|| input("bias_hh", vec![gates]));
    let mut recurrent = body.matmul(h, weight_hh)?;
    if let Some(bias_hh) = bias_hh {
        recurrent = body.binary(BinaryFn::Add, recurrent, bias_hh)?;
    }
    let gate = |body: &mut Emitter, value: PrimNodeId, index: usize| {
        body.slice(value, 1, index * hidden, (index + 1) * hidden)
    };
    let mut outputs = Vec::new();
    match (kind, c) {
        (RecurrentKind::Rnn, _) => {
            let sum = body.binary(BinaryFn::Add, x, recurrent)?;
            let next = body.unary(UnaryFn::Tanh, sum)?;
            outputs.push(("h", next));
        }
        (RecurrentKind::Lstm, Some(c)) => {
            let sum = body.binary(BinaryFn::Add, x, recurrent)?;
            let mut activated = Vec::new();
            for (index, function) in [
                UnaryFn::Sigmoid,
                UnaryFn::Sigmoid,
                UnaryFn::Tanh,
                UnaryFn::Sigmoid,
            ]
            .into_iter()
            .enumerate()
            {
                let pre_activation = gate(&mut body, sum, index)?;
                activated.push(body.unary(function, pre_activation)?);
            }
            let [input_gate, forget_gate, candidate, output_gate] = activated[..] else {
                unreachable!("four gates")
            };
            let kept = body.binary(BinaryFn::Mul, forget_gate, c)?;
            let written = body.binary(BinaryFn::Mul, input_gate, candidate)?;
            let next_c = body.binary(BinaryFn::Add, kept, written)?;
            let squashed = body.unary(UnaryFn::Tanh, next_c)?;
            let next_h = body.binary(BinaryFn::Mul, output_gate, squashed)?;
            outputs.extend([("h", next_h), ("c", next_c)]);
        }
        (RecurrentKind::Lstm, None) => unreachable!("an lstm body has a cell state"),
        (RecurrentKind::Gru, _) => {
            let pair = |body: &mut Emitter, index| -> Result<_, LowerError> {
                Ok((gate(body, x, index)?, gate(body, recurrent, index)?))
            };
            let (x_r, h_r) = pair(&mut body, 0)?;
            let (x_z, h_z) = pair(&mut body, 1)?;
            let (x_n, h_n) = pair(&mut body, 2)?;
            let reset_sum = body.binary(BinaryFn::Add, x_r, h_r)?;
            let reset = body.unary(UnaryFn::Sigmoid, reset_sum)?;
            let update_sum = body.binary(BinaryFn::Add, x_z, h_z)?;
            let update = body.unary(UnaryFn::Sigmoid, update_sum)?;
            let gated = body.binary(BinaryFn::Mul, reset, h_n)?;
            let candidate_sum = body.binary(BinaryFn::Add, x_n, gated)?;
            let candidate = body.unary(UnaryFn::Tanh, candidate_sum)?;
            let one = body.scalar(1.0)?;
            let keep_candidate = body.binary(BinaryFn::Sub, one, update)?;
            let new_part = body.binary(BinaryFn::Mul, keep_candidate, candidate)?;
            let old_part = body.binary(BinaryFn::Mul, update, h)?;
            let next = body.binary(BinaryFn::Add, new_part, old_part)?;
            outputs.push(("h", next));
        }
    }
    let step_output = outputs[0].1;
    body.graph.outputs = outputs
        .into_iter()
        .map(|(name, id)| (name.to_string(), id))
        .collect();
    body.graph.outputs.push(("out".into(), step_output));
    let state_count = body.graph.outputs.len() - 1;
    Ok(ScanBody {
        graph: body.graph,
        sequence_count: 1,
        state_count,
    })
}

fn body_input(body: &mut Emitter, name: &str, shape: Vec<usize>) -> PrimNodeId {
    let origin = body.origin.clone();
    body.graph.add_input(name, TensorType::float(shape), origin)
}

/// A cell written in the language (`Op::Scan`): its body graph lowers recursively; the
/// parameters it reads become invariant operands of the scan.
pub(super) fn cell(
    cx: &mut GraphLowering,
    id: NodeId,
    body: &crate::ir::ScanBody,
    sequence: bool,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    let body_shapes = cx.shapes.scan_bodies.get(&id).ok_or_else(|| {
        cx.internal_at(
            cx.layers.node(id),
            "a cell has no body shapes after the shape pass",
        )
    })?;
    let mut child = GraphLowering::new(
        cx.network,
        cx.symbols,
        body_shapes,
        &body.graph,
        Some(Vec::new()),
    );
    child.options = cx.options;
    let mut inputs = vec![("in".to_string(), body.step_input)];
    inputs.extend(
        body.states
            .iter()
            .map(|state| (state.name.clone(), state.input)),
    );
    let mut state_shapes = Vec::new();
    for (position, (name, input)) in inputs.iter().enumerate() {
        let ty = child.layer_type(*input)?;
        if position > 0 {
            state_shapes.push(ty.shape.clone());
        }
        let value = child
            .out
            .graph
            .add_input(name, ty, origin_of(body.graph.node(*input)));
        child.values.insert(*input, value);
    }
    let mut roots = vec![body.output];
    roots.extend(body.states.iter().map(|state| state.next));
    child.lower_nodes(&roots)?;
    for state in &body.states {
        let next = child.value(state.next)?;
        child.out.graph.outputs.push((state.name.clone(), next));
    }
    let step_output = child.value(body.output)?;
    child.out.graph.outputs.push(("out".into(), step_output));
    let lifted = child.lifted.take().unwrap_or_default();
    let mut operands = vec![x];
    for shape in state_shapes {
        operands.push(cx.out.zeros(shape)?);
    }
    for (name, shape) in lifted {
        operands.push(cx.parameter_named(&name, shape)?);
    }
    let scan = PrimOp::Scan {
        body: Box::new(ScanBody {
            graph: child.out.graph,
            sequence_count: 1,
            state_count: body.states.len(),
        }),
        axis: 1,
        reverse: false,
    };
    let scanned = cx.out.emit(scan, &operands)?;
    if sequence {
        return Ok(scanned);
    }
    let steps = cx.out.shape(x)[1];
    cx.out.select(scanned, 1, steps - 1)
}
