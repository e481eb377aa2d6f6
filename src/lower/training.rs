//! The parts of lowering that only training mode has: dropout with a random mask, and the
//! running-statistics updates of batch norm, which leave the graph as extra outputs named
//! `buffer_update.<state_dict name>` (after the network's outputs and the loss) holding each
//! buffer's new value. Batch norm's own lowering is in `norm.rs`.

use super::{GraphLowering, LowerError, LowerMode};
use crate::ir::{Node, Op};
use crate::prim::*;

/// The prefix of the outputs that carry a buffer's new value in training mode.
pub const BUFFER_UPDATE_PREFIX: &str = "buffer_update.";

/// `dropout(p)`: the identity at inference; in training, `x * mask / (1 - p)` with
/// `mask = [u >= p]` for uniform noise `u` in `[0, 1)`, so each element is kept with probability
/// `1 - p` and kept values are scaled as PyTorch's `F.dropout` scales them (dividing the mask by
/// `1 - p`, then multiplying). `p = 0` is the identity and `p = 1` gives zeros (`x * 0`, which
/// keeps a NaN of `x` as PyTorch does).
///
/// The noise's seed comes from the layer's instance path (and, for a layer value applied more
/// than once, which application this is), so masks are reproducible from the spec and the run
/// key alone, and differ between layers.
pub(super) fn dropout(
    cx: &mut GraphLowering,
    node: &Node,
    p: f64,
    x: PrimNodeId,
) -> Result<PrimNodeId, LowerError> {
    if cx.options.mode == LowerMode::Inference || p == 0.0 {
        return Ok(x);
    }
    if p >= 1.0 {
        let zero = cx.out.scalar(0.0)?;
        return cx.out.binary(BinaryFn::Mul, x, zero);
    }
    if cx.in_scan_body() {
        // A body's random op would draw the same mask at every step, which is not dropout.
        return Err(cx.training_error(
            "dropout inside a recurrent cell is not supported yet (one mask would repeat at \
             every step)",
        ));
    }
    let shape = cx.out.shape(x);
    let seed = dropout_seed(cx, node);
    let noise = cx.out.emit(PrimOp::RandomUniform { seed, shape }, &[])?;
    // The noise is a multiple of 2^-24, exact in f32; comparing it with `p` rounded to f32 makes
    // the f32 runtime and the f64 interpreter draw the very same mask.
    let threshold = cx.out.scalar(f64::from(p as f32))?;
    let mask = cx.out.binary(BinaryFn::GreaterEqual, noise, threshold)?;
    let keep_probability = cx.out.scalar(1.0 - p)?;
    let scaled_mask = cx.out.binary(BinaryFn::Div, mask, keep_probability)?;
    cx.out.binary(BinaryFn::Mul, x, scaled_mask)
}

/// FNV-1a of the instance path, and of `#k` for the `k`-th application (from 1) of a dropout
/// layer value that was applied before under the same path.
fn dropout_seed(cx: &GraphLowering, node: &Node) -> u64 {
    let current = cx.current.expect("a layer is being lowered");
    let earlier_applications = cx
        .layers
        .creation_order()
        .into_iter()
        .take_while(|id| *id != current)
        .filter(|id| {
            let other = cx.layers.node(*id);
            matches!(other.op, Op::Dropout { .. }) && other.path == node.path
        })
        .count();
    let mut key = node.path.to_string();
    if earlier_applications > 0 {
        key.push_str(&format!("#{earlier_applications}"));
    }
    super::basic::fnv1a(key.as_bytes())
}

impl GraphLowering<'_> {
    /// Whether this lowering builds a recurrent cell's body (whose parameters become inputs).
    pub(super) fn in_scan_body(&self) -> bool {
        self.lifted.is_some()
    }

    /// An error blaming the layer being lowered for something training mode cannot do.
    pub(super) fn training_error(&self, message: &str) -> LowerError {
        let (path, span) = match self.current {
            Some(current) => {
                let node = self.layers.node(current);
                (node.path.to_string(), node.span)
            }
            None => (self.out.origin.path.to_string(), self.out.origin.span),
        };
        LowerError::Training {
            path,
            span,
            message: message.to_string(),
        }
    }

    /// The current value of the current layer's buffer `tensor` (`running_mean`): its last
    /// recorded update when the layer already ran in this graph, else the parameter.
    pub(super) fn running_buffer(&mut self, tensor: &str) -> Result<PrimNodeId, LowerError> {
        let name = self.current_tensor_name(tensor);
        match self
            .buffer_updates
            .iter()
            .rev()
            .find(|(known, _)| *known == name)
        {
            Some((_, value)) => Ok(*value),
            None => self.parameter(tensor),
        }
    }

    /// Records `value` as the new value of the current layer's buffer `tensor`; a later update
    /// of the same buffer replaces it.
    pub(super) fn record_buffer_update(&mut self, tensor: &str, value: PrimNodeId) {
        let name = self.current_tensor_name(tensor);
        match self
            .buffer_updates
            .iter_mut()
            .find(|(known, _)| *known == name)
        {
            Some(entry) => entry.1 = value,
            None => self.buffer_updates.push((name, value)),
        }
    }

    /// Appends one output `buffer_update.<name>` per updated buffer, in the order the layers
    /// first updated them.
    pub(super) fn add_buffer_update_outputs(&mut self) {
        for (name, value) in std::mem::take(&mut self.buffer_updates) {
            let output = format!("{BUFFER_UPDATE_PREFIX}{name}");
            self.out.graph.outputs.push((output, value));
        }
    }

    fn current_tensor_name(&self, tensor: &str) -> String {
        let current = self.current.expect("a layer is being lowered");
        format!("{}.{tensor}", self.layers.node(current).path)
    }
}
