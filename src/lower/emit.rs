//! The helper that adds primitive nodes on behalf of one layer: every node gets the layer's
//! origin, and a shape-rule failure (a bug in lowering) becomes an internal `LowerError`.

use super::LowerError;
use crate::prim::*;

/// Builds primitive nodes into one graph on behalf of one layer node (its origin).
pub(crate) struct Emitter {
    pub graph: PrimGraph,
    pub origin: Origin,
}

impl Emitter {
    pub fn emit(&mut self, op: PrimOp, operands: &[PrimNodeId]) -> Result<PrimNodeId, LowerError> {
        self.graph
            .add(op, operands, self.origin.clone())
            .map_err(|error| LowerError::Internal {
                path: self.origin.path.to_string(),
                span: self.origin.span,
                message: error.to_string(),
            })
    }

    pub fn shape(&self, id: PrimNodeId) -> Vec<usize> {
        self.graph.node(id).ty.shape.clone()
    }

    pub fn unary(&mut self, function: UnaryFn, x: PrimNodeId) -> Result<PrimNodeId, LowerError> {
        self.emit(PrimOp::Unary(function), &[x])
    }

    pub fn binary(
        &mut self,
        function: BinaryFn,
        a: PrimNodeId,
        b: PrimNodeId,
    ) -> Result<PrimNodeId, LowerError> {
        self.emit(PrimOp::Binary(function), &[a, b])
    }

    pub fn scalar(&mut self, value: f64) -> Result<PrimNodeId, LowerError> {
        self.emit(PrimOp::Constant(Constant::scalar(value)), &[])
    }

    pub fn zeros(&mut self, shape: Vec<usize>) -> Result<PrimNodeId, LowerError> {
        self.emit(PrimOp::Constant(Constant::Splat { shape, value: 0.0 }), &[])
    }

    /// A reshape, or `x` itself when the shape is already `shape`.
    pub fn reshape(&mut self, x: PrimNodeId, shape: Vec<usize>) -> Result<PrimNodeId, LowerError> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        self.emit(PrimOp::Reshape { shape }, &[x])
    }

    pub fn transpose(&mut self, x: PrimNodeId, perm: Vec<usize>) -> Result<PrimNodeId, LowerError> {
        if perm
            .iter()
            .enumerate()
            .all(|(position, axis)| position == *axis)
        {
            return Ok(x);
        }
        self.emit(PrimOp::Transpose { perm }, &[x])
    }

    /// A 2-D matrix transposed: `[rows, cols] -> [cols, rows]`.
    pub fn transpose_matrix(&mut self, x: PrimNodeId) -> Result<PrimNodeId, LowerError> {
        self.transpose(x, vec![1, 0])
    }

    pub fn slice(
        &mut self,
        x: PrimNodeId,
        axis: usize,
        start: usize,
        end: usize,
    ) -> Result<PrimNodeId, LowerError> {
        if start == 0 && end == self.shape(x)[axis] {
            return Ok(x);
        }
        self.emit(PrimOp::Slice { axis, start, end }, &[x])
    }

    /// Element `index` of `axis`, with that axis removed.
    pub fn select(
        &mut self,
        x: PrimNodeId,
        axis: usize,
        index: usize,
    ) -> Result<PrimNodeId, LowerError> {
        let sliced = self.slice(x, axis, index, index + 1)?;
        let mut shape = self.shape(x);
        shape.remove(axis);
        self.reshape(sliced, shape)
    }

    pub fn concat(&mut self, parts: &[PrimNodeId], axis: usize) -> Result<PrimNodeId, LowerError> {
        match parts {
            [single] => Ok(*single),
            _ => self.emit(PrimOp::Concat { axis }, parts),
        }
    }

    pub fn matmul(&mut self, a: PrimNodeId, b: PrimNodeId) -> Result<PrimNodeId, LowerError> {
        self.emit(PrimOp::MatMul, &[a, b])
    }

    pub fn reduce(
        &mut self,
        op: ReduceFn,
        x: PrimNodeId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> Result<PrimNodeId, LowerError> {
        self.emit(PrimOp::Reduce { op, axes, keepdim }, &[x])
    }
}
