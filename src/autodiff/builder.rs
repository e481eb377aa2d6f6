//! Emitting helpers for the gradient rules: each adds ordinary primitive nodes to the gradient
//! graph, with the origin of the forward node being differentiated, and turns a shape-rule
//! failure into an internal error (the rules only build well-typed nodes).

use super::AutodiffError;
use crate::prim::*;

/// Adds nodes to `graph`, all tagged with `origin`.
pub(crate) struct GradientBuilder<'graph> {
    pub graph: &'graph mut PrimGraph,
    pub origin: Origin,
}

impl GradientBuilder<'_> {
    pub fn add(
        &mut self,
        op: PrimOp,
        operands: &[PrimNodeId],
    ) -> Result<PrimNodeId, AutodiffError> {
        let op_name = op.name();
        self.graph
            .add(op, operands, self.origin.clone())
            .map_err(|error| AutodiffError::Internal {
                op: op_name,
                message: error.to_string(),
            })
    }

    pub fn shape(&self, id: PrimNodeId) -> Vec<usize> {
        self.graph.node(id).ty.shape.clone()
    }

    pub fn scalar(&mut self, value: f64) -> Result<PrimNodeId, AutodiffError> {
        self.add(PrimOp::Constant(Constant::scalar(value)), &[])
    }

    pub fn splat(&mut self, shape: &[usize], value: f64) -> Result<PrimNodeId, AutodiffError> {
        let constant = Constant::Splat {
            shape: shape.to_vec(),
            value,
        };
        self.add(PrimOp::Constant(constant), &[])
    }

    pub fn unary(&mut self, function: UnaryFn, x: PrimNodeId) -> Result<PrimNodeId, AutodiffError> {
        self.add(PrimOp::Unary(function), &[x])
    }

    pub fn binary(
        &mut self,
        function: BinaryFn,
        a: PrimNodeId,
        b: PrimNodeId,
    ) -> Result<PrimNodeId, AutodiffError> {
        self.add(PrimOp::Binary(function), &[a, b])
    }

    pub fn add_values(
        &mut self,
        a: PrimNodeId,
        b: PrimNodeId,
    ) -> Result<PrimNodeId, AutodiffError> {
        self.binary(BinaryFn::Add, a, b)
    }

    pub fn sub(&mut self, a: PrimNodeId, b: PrimNodeId) -> Result<PrimNodeId, AutodiffError> {
        self.binary(BinaryFn::Sub, a, b)
    }

    pub fn mul(&mut self, a: PrimNodeId, b: PrimNodeId) -> Result<PrimNodeId, AutodiffError> {
        self.binary(BinaryFn::Mul, a, b)
    }

    pub fn div(&mut self, a: PrimNodeId, b: PrimNodeId) -> Result<PrimNodeId, AutodiffError> {
        self.binary(BinaryFn::Div, a, b)
    }

    pub fn neg(&mut self, x: PrimNodeId) -> Result<PrimNodeId, AutodiffError> {
        self.unary(UnaryFn::Neg, x)
    }

    pub fn mul_scalar(&mut self, x: PrimNodeId, value: f64) -> Result<PrimNodeId, AutodiffError> {
        let constant = self.scalar(value)?;
        self.mul(x, constant)
    }

    /// `1 - x`.
    pub fn one_minus(&mut self, x: PrimNodeId) -> Result<PrimNodeId, AutodiffError> {
        let one = self.scalar(1.0)?;
        self.sub(one, x)
    }

    /// A 0/1 mask from a comparison primitive (`greater`, `greater_equal`, `equal`), which
    /// broadcasts like any binary op and has no gradient of its own.
    pub fn compare(
        &mut self,
        function: BinaryFn,
        a: PrimNodeId,
        b: PrimNodeId,
    ) -> Result<PrimNodeId, AutodiffError> {
        debug_assert!(function.is_comparison());
        self.binary(function, a, b)
    }

    /// `[x > 0]`: 1 where `x` is positive, 0 elsewhere (NaN included).
    pub fn positive(&mut self, x: PrimNodeId) -> Result<PrimNodeId, AutodiffError> {
        let zero = self.scalar(0.0)?;
        self.compare(BinaryFn::Greater, x, zero)
    }

    pub fn reshape(&mut self, x: PrimNodeId, shape: &[usize]) -> Result<PrimNodeId, AutodiffError> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        self.add(
            PrimOp::Reshape {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }

    pub fn transpose(
        &mut self,
        x: PrimNodeId,
        perm: &[usize],
    ) -> Result<PrimNodeId, AutodiffError> {
        self.add(
            PrimOp::Transpose {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    pub fn slice(
        &mut self,
        x: PrimNodeId,
        axis: usize,
        start: usize,
        end: usize,
    ) -> Result<PrimNodeId, AutodiffError> {
        if start == 0 && end == self.shape(x)[axis] {
            return Ok(x);
        }
        self.add(PrimOp::Slice { axis, start, end }, &[x])
    }

    pub fn reduce_sum(
        &mut self,
        x: PrimNodeId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> Result<PrimNodeId, AutodiffError> {
        if axes.is_empty() {
            return Ok(x);
        }
        let op = PrimOp::Reduce {
            op: ReduceFn::Sum,
            axes,
            keepdim,
        };
        self.add(op, &[x])
    }

    /// `x` broadcast to `shape` (an `add` of zeros: there is no broadcast primitive).
    pub fn broadcast_to(
        &mut self,
        x: PrimNodeId,
        shape: &[usize],
    ) -> Result<PrimNodeId, AutodiffError> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        let zeros = self.splat(shape, 0.0)?;
        self.add_values(x, zeros)
    }

    /// Sums a gradient of a broadcast result back to the operand's `shape`: over the leading
    /// axes the operand lacks and over the axes where it has size 1.
    pub fn sum_to_shape(
        &mut self,
        grad: PrimNodeId,
        shape: &[usize],
    ) -> Result<PrimNodeId, AutodiffError> {
        let grad_shape = self.shape(grad);
        if grad_shape == shape {
            return Ok(grad);
        }
        let offset = grad_shape.len() - shape.len();
        let axes: Vec<usize> = (0..grad_shape.len())
            .filter(|axis| *axis < offset || (shape[axis - offset] == 1 && grad_shape[*axis] != 1))
            .collect();
        let summed = self.reduce_sum(grad, axes, false)?;
        self.reshape(summed, shape)
    }

    /// Swaps the last two axes (the matrix transpose of a batched matrix).
    pub fn matrix_transpose(&mut self, x: PrimNodeId) -> Result<PrimNodeId, AutodiffError> {
        let rank = self.shape(x).len();
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(rank - 2, rank - 1);
        self.transpose(x, &perm)
    }
}
