//! Every matmul: batched `[..., M, K] x [..., K, P]` with broadcast batch dims, one GEMM per
//! output batch. Operands may be strided views (`fuse/matmul_operand_views.rs`): the attention
//! heads' `Q`, `Kᵀ` and `V` read straight out of the `[N, T, 3D]` projection, each batch's
//! matrices handed to the GEMM with their row and column strides, which its packing absorbs
//! (a row-major operand is the view with row-major strides). The GEMM checks that every element
//! a view addresses lies inside the buffer, so a wrong view is an error, never an out-of-bounds
//! read. Many small batches are spread over the threads whole.

use std::sync::Mutex;

use super::execute::Operand;
use super::RuntimeError;
use crate::kernels::gemm::{
    resolve_threads, sgemm_gathered_rows_packed_b, sgemm_packed_b, sgemm_with_start, GemmKernel,
    GemmPost, GemmStart, MatrixMut, MatrixRef, PackedB,
};
use crate::kernels::parallel::{part_range, run_parallel, SharedMutPtr};

/// `output` (`[..., M, P]`, row-major) = `a x b` over broadcast batch dims, each operand read
/// through its view (or row-major when it has none), from `start` (zero, a bias row added as
/// the GEMM writes its tiles, or the output itself for a scaled accumulation). A B
/// packed ahead of time (`prepack.rs`) serves every batch when B is the same for all of them.
#[allow(clippy::too_many_arguments)]
pub(super) fn strided_matmul(
    a: &Operand<'_>,
    b: &Operand<'_>,
    packed_b: Option<&PackedB>,
    start: GemmStart<'_>,
    post: GemmPost<'_>,
    output: &mut [f32],
    output_shape: &[usize],
    threads: usize,
) -> Result<(), RuntimeError> {
    if post
        .residual
        .is_some_and(|residual| residual.len() != output.len())
    {
        return Err(RuntimeError::internal(
            "a matmul residual of the wrong length",
        ));
    }
    let rank = output_shape.len();
    let (mut m, p) = (output_shape[rank - 2], output_shape[rank - 1]);
    let k = a.shape[a.shape.len() - 1];
    let mut batch_shape = &output_shape[..rank - 2];
    let mut a_view = OperandStrides::of(a, batch_shape)?;
    let mut b_view = OperandStrides::of(b, batch_shape)?;
    // A dense layer over `[N, T, D]` multiplies every batch's rows by one broadcast weight: when
    // A's batches follow each other row after row, they are the rows of one taller product,
    // whose single GEMM packs B once instead of once per batch (8 times in the transformer
    // layer at batch 8) and gets tiles enough to fill.
    while let Some(axis) = batch_shape.len().checked_sub(1) {
        let rows_follow_on = batch_shape[axis] == 1 || a_view.batch[axis] == m * a_view.row;
        if b_view.batch[axis] != 0 || !rows_follow_on || m * p * k == 0 {
            break;
        }
        m *= batch_shape[axis];
        batch_shape = &batch_shape[..axis];
        a_view.batch.truncate(axis);
        b_view.batch.truncate(axis);
    }
    if matches!(start, GemmStart::ColumnBias(bias) if bias.len() != p) {
        return Err(RuntimeError::internal("a matmul bias of the wrong length"));
    }
    let batches: usize = batch_shape.iter().product();
    let shared_b = b_view.batch.iter().all(|stride| *stride == 0);
    let mut packed_b =
        packed_b.filter(|packed| shared_b && packed.rows() == k && packed.columns() == p);
    // A B shared by several batches whose rows could not be merged (A a strided view, such as
    // a time-major view of a batch-major sequence) is packed once for all of them.
    let packed_here;
    if packed_b.is_none() && shared_b && batches > 1 && m * p * k > 0 {
        let b_matrix = b_view.matrix(b.data, b_view.offset)?;
        packed_here = PackedB::pack(b_matrix, k, p)?;
        packed_b = Some(&packed_here);
    }
    // Batches of a shared, packed B whose A rows lie anywhere (a strided view) become one tall
    // product over all their rows, given to the GEMM by row offsets: its tiles fill where one
    // product per batch of 32 rows fills 32 of the 42 rows of three 14-row tiles.
    if let Some(packed) = packed_b.filter(|_| batches > 1 && m * p * k > 0) {
        let row_offsets: Vec<usize> = (0..batches)
            .flat_map(|batch| {
                let first = a_view.offset + batch_offset(&a_view, batch_shape, batch);
                (0..m).map(move |row| first + row * a_view.row)
            })
            .collect();
        let c = MatrixMut::row_major(output, p);
        sgemm_gathered_rows_packed_b(
            threads,
            &row_offsets,
            k,
            a.data,
            a_view.column,
            packed,
            c,
            start,
            post,
        )?;
        return Ok(());
    }
    let product = Product {
        a,
        b,
        packed_b,
        a_view: &a_view,
        b_view: &b_view,
        batch_shape,
        dims: (m, p, k),
        start,
        post,
    };
    let parts = resolve_threads(threads).min(batches);
    if parts <= 1 || m * p * k > SMALL_PRODUCT_MACS {
        for batch in 0..batches {
            let c = &mut output[batch * m * p..(batch + 1) * m * p];
            product.compute(batch, c, threads)?;
        }
        return Ok(());
    }
    // Small products (attention's per-head 64 x 64 x 32) go to the threads whole: split, each
    // would cost a wake-up for a few microseconds of work. A GEMM gives the same bits on any
    // thread count, so this changes no result.
    let output_pointer = SharedMutPtr(output.as_mut_ptr());
    let failure: Mutex<Option<RuntimeError>> = Mutex::new(None);
    run_parallel(parts, &|part| {
        for batch in part_range(batches, parts, part) {
            // SAFETY: batch `batch` owns rows `batch * m .. (batch + 1) * m` of the output, which
            // lives until `run_parallel` returns, and each batch is in exactly one part.
            let c = unsafe {
                std::slice::from_raw_parts_mut(output_pointer.get().add(batch * m * p), m * p)
            };
            if let Err(error) = product.compute(batch, c, 1) {
                *failure
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
            }
        }
    });
    match failure
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
    {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Multiply-adds below which one batch's product runs on one thread, the batches spread over
/// the threads instead (a GEMM this small does not gain from a second thread).
const SMALL_PRODUCT_MACS: usize = 1 << 20;

/// One batched product: the operands, their strides and `(m, p, k)`.
struct Product<'a, 'o> {
    a: &'a Operand<'o>,
    b: &'a Operand<'o>,
    packed_b: Option<&'a PackedB>,
    a_view: &'a OperandStrides,
    b_view: &'a OperandStrides,
    batch_shape: &'a [usize],
    dims: (usize, usize, usize),
    start: GemmStart<'a>,
    /// Post-operations over the whole output; each batch gets its part of the residual.
    post: GemmPost<'a>,
}

impl Product<'_, '_> {
    /// Batch `batch`'s `m x p` product into `c`.
    fn compute(&self, batch: usize, c: &mut [f32], threads: usize) -> Result<(), RuntimeError> {
        let (m, p, k) = self.dims;
        let a_offset = self.a_view.offset + batch_offset(self.a_view, self.batch_shape, batch);
        let b_offset = self.b_view.offset + batch_offset(self.b_view, self.batch_shape, batch);
        let a_matrix = self.a_view.matrix(self.a.data, a_offset)?;
        let c_matrix = MatrixMut::row_major(c, p);
        let post = GemmPost {
            residual: (self.post.residual)
                .map(|residual| &residual[batch * m * p..(batch + 1) * m * p]),
            relu: self.post.relu,
        };
        if let Some(packed_b) = self.packed_b {
            sgemm_packed_b(
                threads, m, p, k, a_matrix, packed_b, c_matrix, self.start, post,
            )?;
            return Ok(());
        }
        let b_matrix = self.b_view.matrix(self.b.data, b_offset)?;
        sgemm_with_start(
            GemmKernel::active(),
            threads,
            m,
            p,
            k,
            a_matrix,
            b_matrix,
            c_matrix,
            self.start,
            post,
        )?;
        Ok(())
    }
}

/// The offset of batch `batch`'s matrix in an operand, from its batch strides.
fn batch_offset(view: &OperandStrides, batch_shape: &[usize], batch: usize) -> usize {
    let (mut offset, mut rest) = (0, batch);
    for axis in (0..batch_shape.len()).rev() {
        offset += (rest % batch_shape[axis]) * view.batch[axis];
        rest /= batch_shape[axis];
    }
    offset
}

/// One operand's strides: per output batch dim (0 where it broadcasts), then its matrix's.
struct OperandStrides {
    offset: usize,
    batch: Vec<usize>,
    row: usize,
    column: usize,
}

impl OperandStrides {
    fn of(operand: &Operand<'_>, batch_shape: &[usize]) -> Result<OperandStrides, RuntimeError> {
        let shape = operand.shape;
        let rank = shape.len();
        if rank < 2 || rank - 2 > batch_shape.len() {
            return Err(RuntimeError::internal("a matmul operand of the wrong rank"));
        }
        let (offset, strides) = match operand.view {
            Some((offset, strides)) if strides.len() == rank => (offset, strides.to_vec()),
            Some(_) => return Err(RuntimeError::internal("a matmul view of the wrong rank")),
            None => (0, row_major_strides(shape)),
        };
        // Right-align the operand's batch dims with the output's; size-1 dims broadcast.
        let leading = batch_shape.len() - (rank - 2);
        let mut batch = vec![0; batch_shape.len()];
        for axis in 0..rank - 2 {
            if shape[axis] != 1 {
                batch[leading + axis] = strides[axis];
            }
        }
        Ok(OperandStrides {
            offset,
            batch,
            row: strides[rank - 2],
            column: strides[rank - 1],
        })
    }

    /// The matrix starting at `offset` of `data`; the GEMM checks it fits.
    fn matrix<'d>(&self, data: &'d [f32], offset: usize) -> Result<MatrixRef<'d>, RuntimeError> {
        let data = data
            .get(offset..)
            .ok_or_else(|| RuntimeError::internal("a matmul view starts past its buffer"))?;
        Ok(MatrixRef {
            data,
            row_stride: self.row,
            col_stride: self.column,
        })
    }
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}
