//! Single-precision GEMM: `C (=|+=) A x B` on strided matrices, so transposed operands (as the
//! backward pass needs: `dA = dC x Bᵀ`, `dB = Aᵀ x dC`) are just swapped strides.
//!
//! ```
//! use nnc::kernels::gemm::{sgemm, MatrixMut, MatrixRef};
//! let a = [1.0, 2.0, 3.0, 4.0]; // 2x2, row-major
//! let b = [5.0, 6.0, 7.0, 8.0];
//! let mut c = [0.0; 4];
//! sgemm(2, 2, 2, MatrixRef::row_major(&a, 2), MatrixRef::row_major(&b, 2).transposed(),
//!       MatrixMut::row_major(&mut c, 2), false).unwrap();
//! assert_eq!(c, [17.0, 23.0, 39.0, 53.0]); // A x Bᵀ
//! ```
//!
//! The implementation is BLIS-style (`driver.rs`): A and B are packed into cache-sized blocks of
//! micro-panels (`pack.rs`) and a register-blocked micro-kernel computes each tile. The kernel
//! family is picked once per process ([`GemmKernel::active`]): AVX-512 with a 14x32 tile
//! (`avx512.rs`), else AVX2+FMA with a 6x16 tile (`microkernel.rs`), else a portable kernel; the
//! `NNC_GEMM` environment variable or [`sgemm_with_kernel`] picks another. Results are
//! bit-identical for any thread count.
//!
//! What a layer adds around the product happens as tiles are written, not in passes over C:
//! a bias per column ([`GemmStart::ColumnBias`]; a convolution's per row) enters with the first
//! k block, and [`GemmPost`] (`relu(residual + C)`) applies after the last.
//!
//! Measured on the Sapphire Rapids class Xeon this was tuned on (one core, thread CPU time, so
//! other load on the shared machine does not count): at 512³ the AVX-512 kernel reaches
//! 165-180 GFLOP/s against 105-115 for AVX2 and 176 for PyTorch (oneDNN); over the benchmark
//! networks' GEMM shapes it runs 1.4-2x the AVX2 kernel (`examples/gemm_bench.rs` prints the
//! comparison).

#[cfg(target_arch = "x86_64")]
mod avx512;
mod driver;
mod microkernel;
mod pack;
mod prepacked;
mod select;

pub(crate) use driver::{run_gemm, run_gemm_from_offsets, GemmProblem, OperandTables, OutputStart};
pub(crate) use microkernel::TilePost;
pub(crate) use pack::{ColumnLayout, MatrixLayout, OffsetTables};
pub use prepacked::PackedB;
pub use select::{GemmKernel, GEMM_KERNEL_VARIABLE};

/// Why a GEMM call was refused. Nothing is written to C when a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GemmError {
    #[error("matrix {operand} ({rows}x{cols}, strides {row_stride} and {col_stride}) needs {needed} elements but its buffer has {available}")]
    BufferTooSmall {
        operand: char,
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
        needed: usize,
        available: usize,
    },
    #[error("the strides of C ({row_stride} and {col_stride}) make distinct elements of its {rows}x{cols} share memory")]
    OverlappingOutput {
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    },
    #[error("this CPU does not support the {kernel} GEMM kernel")]
    UnsupportedKernel { kernel: &'static str },
    #[error("a bias of {len} values was given for a C with {cols} columns")]
    BiasLength { len: usize, cols: usize },
    #[error("a packed B of {packed_rows}x{packed_cols} was given for a {rows}x{cols} B")]
    PackedShape {
        rows: usize,
        cols: usize,
        packed_rows: usize,
        packed_cols: usize,
    },
}

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatrixRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatrixRef<'a> {
    /// A row-major matrix whose rows are `row_stride` elements apart (the `lda` of BLAS).
    pub fn row_major(data: &'a [f32], row_stride: usize) -> MatrixRef<'a> {
        MatrixRef {
            data,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of this matrix, without moving data.
    pub fn transposed(self) -> MatrixRef<'a> {
        MatrixRef {
            data: self.data,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// A writable matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`. Distinct
/// elements must not share memory (checked by [`sgemm`]).
#[derive(Debug)]
pub struct MatrixMut<'a> {
    pub data: &'a mut [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatrixMut<'a> {
    /// A row-major matrix whose rows are `row_stride` elements apart (the `ldc` of BLAS).
    pub fn row_major(data: &'a mut [f32], row_stride: usize) -> MatrixMut<'a> {
        MatrixMut {
            data,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of this matrix, without moving data.
    pub fn transposed(self) -> MatrixMut<'a> {
        MatrixMut {
            data: self.data,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// What C holds before `A x B` is added to it.
#[derive(Clone, Copy, Debug)]
pub enum GemmStart<'a> {
    /// `C = A x B`: C is only written, never read.
    Zero,
    /// `C += A x B`.
    Accumulate,
    /// `C = bias + A x B`, `bias[j]` added to column `j` (a dense layer's bias). The bias is
    /// added as each tile is written: the same bits as filling C with it and accumulating,
    /// without that pass over C.
    ColumnBias(&'a [f32]),
    /// `C += alpha * (A x B)`: each k block's tile is scaled (rounded), then added. With one k
    /// block ([`GemmKernel::one_k_block`]) that is `C + alpha * (A x B)` rounded as an SGD update
    /// `W - lr * gradient` computes it, so a weight gradient can update its weight in place.
    AccumulateScaled(f32),
}

impl GemmStart<'_> {
    fn from_accumulate(accumulate: bool) -> GemmStart<'static> {
        if accumulate {
            GemmStart::Accumulate
        } else {
            GemmStart::Zero
        }
    }

    /// The driver's form, once the bias is checked to cover C's `n` columns.
    fn checked(self, n: usize) -> Result<OutputStart, GemmError> {
        Ok(match self {
            GemmStart::Zero => OutputStart::Zero,
            GemmStart::Accumulate => OutputStart::Existing,
            GemmStart::AccumulateScaled(alpha) => OutputStart::ExistingScaled(alpha),
            GemmStart::ColumnBias(bias) if bias.len() == n => {
                OutputStart::ColumnBias(bias.as_ptr())
            }
            GemmStart::ColumnBias(bias) => {
                return Err(GemmError::BiasLength {
                    len: bias.len(),
                    cols: n,
                })
            }
        })
    }
}

/// What the GEMM does to each element of C after the product is added, as it writes the tile
/// (so no pass over C follows): `C = relu(residual + C)`, each part optional.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemmPost<'a> {
    /// A matrix laid out like C (same strides), added element by element.
    pub residual: Option<&'a [f32]>,
    /// `max(x, 0)`, keeping NaN and -0.0 as the JIT's relu does.
    pub relu: bool,
}

impl GemmPost<'_> {
    /// The driver's form, once the residual is checked to hold C's `m x n` at C's strides.
    fn checked(self, m: usize, n: usize, c: &MatrixMut<'_>) -> Result<TilePost, GemmError> {
        let residual = match self.residual {
            Some(residual) => {
                check_fits('R', m, n, c.row_stride, c.col_stride, residual.len())?;
                residual.as_ptr()
            }
            None => std::ptr::null(),
        };
        Ok(TilePost {
            residual,
            relu: self.relu,
        })
    }
}

/// `C = A x B` (or `C += A x B` when `accumulate`), with A `m x k`, B `k x n` and C `m x n`, on
/// one thread. With `accumulate == false` C is only written, never read.
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    c: MatrixMut<'_>,
    accumulate: bool,
) -> Result<(), GemmError> {
    sgemm_threaded(1, m, n, k, a, b, c, accumulate)
}

/// [`sgemm`] on up to `threads` threads (0 means all available cores). The threads compute
/// disjoint blocks of C, each element in the same order whatever the thread count, so the
/// result is bit-identical for every `threads`. Small products run on one thread.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_threaded(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    c: MatrixMut<'_>,
    accumulate: bool,
) -> Result<(), GemmError> {
    sgemm_with_kernel(GemmKernel::active(), threads, m, n, k, a, b, c, accumulate)
}

/// [`sgemm_threaded`] on a given kernel family instead of the process's choice, for benchmarks
/// and for tests that cover every family the CPU supports. Refused when the CPU lacks it.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with_kernel(
    kernel: GemmKernel,
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    c: MatrixMut<'_>,
    accumulate: bool,
) -> Result<(), GemmError> {
    let start = GemmStart::from_accumulate(accumulate);
    sgemm_with_start(
        kernel,
        threads,
        m,
        n,
        k,
        a,
        b,
        c,
        start,
        GemmPost::default(),
    )
}

/// [`sgemm_with_kernel`] from any [`GemmStart`] (a column bias included), with post-operations.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with_start(
    kernel: GemmKernel,
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    c: MatrixMut<'_>,
    start: GemmStart<'_>,
    post: GemmPost<'_>,
) -> Result<(), GemmError> {
    if !kernel.is_supported() {
        return Err(GemmError::UnsupportedKernel {
            kernel: kernel.name(),
        });
    }
    check_fits('A', m, k, a.row_stride, a.col_stride, a.data.len())?;
    check_fits('B', k, n, b.row_stride, b.col_stride, b.data.len())?;
    check_output(m, n, &c)?;
    let problem = GemmProblem {
        m,
        n,
        k,
        a: a.data.as_ptr(),
        a_layout: MatrixLayout::strided(a.row_stride, a.col_stride),
        b: b.data.as_ptr(),
        b_layout: MatrixLayout::strided(b.row_stride, b.col_stride),
        c: c.data.as_mut_ptr(),
        c_layout: MatrixLayout::strided(c.row_stride, c.col_stride),
        start: start.checked(n)?,
        post: post.checked(m, n, &c)?,
    };
    // SAFETY: every addressed element is inside its slice (checked above), C's elements are
    // distinct, and C is a unique borrow, so it overlaps neither A nor B.
    unsafe { driver::run_gemm_with(&problem, resolve_threads(threads), kernel) };
    Ok(())
}

/// [`sgemm_threaded`] with B packed beforehand ([`PackedB`], for its kernel family): the same
/// result bit for bit, without packing B on every call.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_b(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatrixRef<'_>,
    b: &PackedB,
    c: MatrixMut<'_>,
    start: GemmStart<'_>,
    post: GemmPost<'_>,
) -> Result<(), GemmError> {
    if b.rows() != k || b.columns() != n {
        return Err(GemmError::PackedShape {
            rows: k,
            cols: n,
            packed_rows: b.rows(),
            packed_cols: b.columns(),
        });
    }
    check_fits('A', m, k, a.row_stride, a.col_stride, a.data.len())?;
    check_output(m, n, &c)?;
    let view = b.view();
    let problem = GemmProblem {
        m,
        n,
        k,
        a: a.data.as_ptr(),
        a_layout: MatrixLayout::strided(a.row_stride, a.col_stride),
        // Never read: the driver takes B's panels from `packed_b`.
        b: view.panels,
        b_layout: MatrixLayout::strided(n, 1),
        c: c.data.as_mut_ptr(),
        c_layout: MatrixLayout::strided(c.row_stride, c.col_stride),
        start: start.checked(n)?,
        post: post.checked(m, n, &c)?,
    };
    let tables = OperandTables {
        packed_b: Some(view),
        ..OperandTables::default()
    };
    // SAFETY: A's and C's elements are inside their slices (checked above), C's are distinct
    // and C, a unique borrow, overlaps neither A nor the packed panels, which hold `k x n`
    // (checked above) for the family the driver will run (it takes the panels' family).
    unsafe { driver::run_gemm_from_offsets(&problem, tables, resolve_threads(threads)) };
    Ok(())
}

/// [`sgemm_packed_b`] with A's rows anywhere in `a`: row `i` starts at `a[row_offsets[i]]`,
/// its elements `a_col_stride` apart, so the rows of several batches of a strided operand make
/// one tall product (a time-major view of a batch-major sequence, times one weight). C is
/// `row_offsets.len() x n`. The same bits as one product per batch: each element is summed in
/// the same order.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_gathered_rows_packed_b(
    threads: usize,
    row_offsets: &[usize],
    k: usize,
    a: &[f32],
    a_col_stride: usize,
    b: &PackedB,
    c: MatrixMut<'_>,
    start: GemmStart<'_>,
    post: GemmPost<'_>,
) -> Result<(), GemmError> {
    let (m, n) = (row_offsets.len(), b.columns());
    if b.rows() != k {
        return Err(GemmError::PackedShape {
            rows: k,
            cols: n,
            packed_rows: b.rows(),
            packed_cols: b.columns(),
        });
    }
    if k > 0 {
        for &offset in row_offsets {
            // The row's elements from its offset on (none left when it starts past the end).
            check_fits('A', 1, k, 0, a_col_stride, a.len().saturating_sub(offset))?;
        }
    }
    check_output(m, n, &c)?;
    let column_offsets: Vec<usize> = (0..k).map(|step| step * a_col_stride).collect();
    let view = b.view();
    let problem = GemmProblem {
        m,
        n,
        k,
        // Never read through a layout: the tables address A.
        a: a.as_ptr(),
        a_layout: MatrixLayout::strided(0, 0),
        b: view.panels,
        b_layout: MatrixLayout::strided(n, 1),
        c: c.data.as_mut_ptr(),
        c_layout: MatrixLayout::strided(c.row_stride, c.col_stride),
        start: start.checked(n)?,
        post: post.checked(m, n, &c)?,
    };
    let tables = OperandTables {
        a: Some(OffsetTables {
            rows: row_offsets.as_ptr(),
            columns: column_offsets.as_ptr(),
        }),
        b: None,
        packed_b: Some(view),
    };
    // SAFETY: every row's k elements lie inside `a` (checked above), C's elements are inside
    // its slice and distinct, and C, a unique borrow, overlaps neither A nor the panels.
    unsafe { driver::run_gemm_from_offsets(&problem, tables, resolve_threads(threads)) };
    Ok(())
}

/// The C-ABI entry point for JIT-compiled code: `C (=|+=) A x B` with element `(i, j)` of each
/// matrix at `pointer[i * row_stride + j * col_stride]`; `accumulate != 0` adds to C; `threads` as
/// in [`sgemm_threaded`]. Register it with the JIT by address (`nnc_sgemm as *const u8`).
///
/// # Safety
/// The caller (the code generator, which checked every buffer against the compiled shapes) must
/// guarantee that for all `i < m, j < n, p < k` the addressed elements `A(i, p)` and `B(p, j)`
/// are readable `f32`s and `C(i, j)` writable ones; that distinct `C(i, j)` do not share memory;
/// and that C overlaps neither A nor B. Pointers may dangle when `m`, `n` or `k` make them unused.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nnc_sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_row_stride: usize,
    a_col_stride: usize,
    b: *const f32,
    b_row_stride: usize,
    b_col_stride: usize,
    c: *mut f32,
    c_row_stride: usize,
    c_col_stride: usize,
    accumulate: u32,
    threads: usize,
) {
    let problem = GemmProblem {
        m,
        n,
        k,
        a,
        a_layout: MatrixLayout::strided(a_row_stride, a_col_stride),
        b,
        b_layout: MatrixLayout::strided(b_row_stride, b_col_stride),
        c,
        c_layout: MatrixLayout::strided(c_row_stride, c_col_stride),
        start: if accumulate != 0 {
            OutputStart::Existing
        } else {
            OutputStart::Zero
        },
        post: TilePost::NONE,
    };
    // A panic must not unwind into JIT frames; the kernel panics only on an internal bug.
    let outcome =
        std::panic::catch_unwind(|| unsafe { run_gemm(&problem, resolve_threads(threads)) });
    if outcome.is_err() {
        eprintln!("internal error (a bug in nnc): nnc_sgemm panicked");
        std::process::abort();
    }
}

/// The thread count to use for a requested count, where 0 means all available cores.
pub fn resolve_threads(threads: usize) -> usize {
    if threads == 0 {
        crate::kernels::parallel::available_threads()
    } else {
        threads.min(crate::kernels::parallel::MAX_THREADS)
    }
}

/// Checks that C (`m x n`) fits its slice and that its elements are distinct.
fn check_output(m: usize, n: usize, c: &MatrixMut<'_>) -> Result<(), GemmError> {
    check_fits('C', m, n, c.row_stride, c.col_stride, c.data.len())?;
    if !elements_are_distinct(m, n, c.row_stride, c.col_stride) {
        return Err(GemmError::OverlappingOutput {
            rows: m,
            cols: n,
            row_stride: c.row_stride,
            col_stride: c.col_stride,
        });
    }
    Ok(())
}

fn check_fits(
    operand: char,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
    available: usize,
) -> Result<(), GemmError> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1).checked_mul(row_stride).and_then(|row_part| {
        (cols - 1)
            .checked_mul(col_stride)
            .and_then(|col_part| row_part.checked_add(col_part))
    });
    let needed = last
        .and_then(|last| last.checked_add(1))
        .unwrap_or(usize::MAX);
    if needed > available {
        return Err(GemmError::BufferTooSmall {
            operand,
            rows,
            cols,
            row_stride,
            col_stride,
            needed,
            available,
        });
    }
    Ok(())
}

/// Whether `rows x cols` elements at these strides occupy distinct memory: true when one stride
/// steps over a whole run of the other (row-major-like or column-major-like layouts).
fn elements_are_distinct(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    if rows == 0 || cols == 0 || (rows == 1 && cols == 1) {
        return true;
    }
    if rows <= 1 {
        return col_stride >= 1;
    }
    if cols <= 1 {
        return row_stride >= 1;
    }
    let row_major_like = col_stride >= 1 && row_stride >= cols.saturating_mul(col_stride);
    let col_major_like = row_stride >= 1 && col_stride >= rows.saturating_mul(row_stride);
    row_major_like || col_major_like
}
