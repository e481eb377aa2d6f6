//! Packing constant matmul operands once: the B operand of a matmul that is the same on every
//! run (a parameter of a bound executable, a folded value, a constant) or on every step of a
//! scan (a parameter, or an invariant the scan hands its body) is packed into the GEMM's
//! micro-panel layout ahead of time, and each run or step multiplies by the packed panels
//! ([`PackedB`], `src/kernels/gemm/prepacked.rs`). The results are bit for bit those of packing
//! on every call.
//!
//! Only a B shared by every batch of its product qualifies (a weight, not one matrix per
//! batch), and only up to [`MAX_PACKED_FLOATS`] floats, so that the copy never doubles the
//! memory of a large classifier (VGG-16's first dense layer has 103M weights; packing it once
//! per run costs less than a 400 MB copy kept beside it).

use std::collections::HashMap;

use super::plan::Location;
use super::program::{Action, Program};
use super::RuntimeError;
use crate::kernels::gemm::{MatrixRef, PackedB};
use crate::prim::{PrimNodeId, PrimOp};

/// The largest B, in floats, packed ahead of time (16 MiB).
const MAX_PACKED_FLOATS: usize = 1 << 22;

/// Packed B operands by the matmul node that reads them.
#[derive(Default)]
pub(super) struct PackedOperands {
    by_matmul: HashMap<PrimNodeId, PackedB>,
}

impl PackedOperands {
    /// The packed B of `matmul`, if it has one.
    pub fn get(&self, matmul: PrimNodeId) -> Option<&PackedB> {
        self.by_matmul.get(&matmul)
    }
}

impl Program {
    /// Packs the B operand of every matmul step whose B does not change while these values
    /// hold: B in `parameters` (bound by [`Program::bind_parameters`]), in the program's
    /// constants, or in an input given in `constant_inputs` (by input index; `None` for inputs
    /// that change between runs, such as a scan body's sequences and states).
    pub(super) fn pack_constant_operands(
        &self,
        parameters: &[&[f32]],
        constant_inputs: &[Option<&[f32]>],
    ) -> Result<PackedOperands, RuntimeError> {
        let mut packed = PackedOperands::default();
        for step in &self.steps {
            let (matmul, with_views) = match &step.action {
                Action::Producer { producer, .. } => (*producer, true),
                Action::Primitive => (step.output, false),
                Action::Scan | Action::Elementwise(_) | Action::RowNormalization(_) => continue,
            };
            if !matches!(self.graph.node(matmul).op, PrimOp::MatMul) {
                continue;
            }
            let Some(&b_id) = self.graph.operands(matmul).get(1) else {
                return Err(RuntimeError::internal("a matmul without a second operand"));
            };
            let shape = self.graph.node(b_id).ty.shape.as_slice();
            let rank = shape.len();
            if rank < 2 || shape[..rank - 2].iter().any(|extent| *extent != 1) {
                continue;
            }
            let (k, n) = (shape[rank - 2], shape[rank - 1]);
            if k * n == 0 || k * n > MAX_PACKED_FLOATS {
                continue;
            }
            let view = match with_views {
                true => self
                    .producer_views
                    .get(&matmul)
                    .and_then(|views| views.get(1))
                    .and_then(Option::as_ref),
                false => None,
            };
            let (source, offset, row_stride, column_stride) = match view {
                Some(view) if view.strides.len() == rank => (
                    view.source,
                    view.offset,
                    view.strides[rank - 2],
                    view.strides[rank - 1],
                ),
                Some(_) => return Err(RuntimeError::internal("a matmul view of the wrong rank")),
                None => (b_id, 0, n, 1),
            };
            let data: &[f32] = match self.location(source)? {
                Location::Parameter(index) => parameters.get(index).copied().ok_or_else(|| {
                    RuntimeError::internal("a parameter index beyond the parameters")
                })?,
                Location::Constant(index) => self.constants.get(index).ok_or_else(|| {
                    RuntimeError::internal("a constant index beyond the constants")
                })?,
                Location::Input(index) => match constant_inputs.get(index).copied().flatten() {
                    Some(data) => data,
                    None => continue,
                },
                Location::Arena { .. } => continue,
            };
            let data = data
                .get(offset..)
                .ok_or_else(|| RuntimeError::internal("a matmul view starts past its buffer"))?;
            let matrix = MatrixRef {
                data,
                row_stride,
                col_stride: column_stride,
            };
            let panels = PackedB::pack(matrix, k, n).map_err(RuntimeError::Gemm)?;
            packed.by_matmul.insert(matmul, panels);
        }
        Ok(packed)
    }
}
