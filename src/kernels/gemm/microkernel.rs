//! Micro-kernels: the innermost `MR x NR` tile of C computed from one packed A micro-panel
//! (`MR` values per step of k) and one packed B micro-panel (`NR` values per step of k).
//!
//! Every kernel computes each element of the tile the same way: an accumulator that starts at
//! zero and takes one product per step of k in order, then is stored into C or added to C once.
//! No element's arithmetic depends on where the tile sits, so any split of C into tiles or threads
//! gives bit-identical results. The AVX2 and AVX-512 kernels use fused multiply-adds in that same
//! order (they differ from each other only through their k blocking, `KC_MAX`); the portable
//! kernel (for CPUs without AVX2/FMA) a multiply then an add. A process always uses one kernel
//! family unless a caller names another (see `super::GemmKernel`).

/// The widest B micro-panel of any kernel, for stack arrays sized once for all of them.
pub(crate) const MAX_NR: usize = 64;
/// The tallest A micro-panel of any kernel.
pub(crate) const MAX_MR: usize = 16;

/// How the finished tile meets C.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum TileWrite {
    /// C = tile (C is not read, so it may hold garbage or NaN).
    Overwrite,
    /// C = C + tile.
    Add,
    /// C = bias + tile, the bias per column: tile column `j` adds `bias[j]` (the pointer is the
    /// tile's first column's bias). Bit for bit what filling C with the bias and then adding
    /// the tile gives (an IEEE sum does not depend on the order of its two operands), without
    /// the pass that fills C.
    AddColumnBias(*const f32),
    /// C = bias + tile, the bias per row: tile row `r` adds `bias[r]` (a convolution's output
    /// channels are the rows of its GEMM).
    AddRowBias(*const f32),
    /// C = C + alpha * tile, the product rounded before the sum: a plain SGD update
    /// `W - lr * (X^T dY)` written straight into W (alpha = -lr), bit for bit what computing
    /// the gradient and then the update gives when the tile is the whole sum (one k block).
    AddScaled(f32),
}

impl TileWrite {
    /// Writes element `(row, column)` of a tile whose sum is `value` to `element`.
    ///
    /// # Safety
    /// `element` is writable (and readable for `Add`), and a bias pointer addresses the tile's
    /// `row`/`column` entry.
    #[inline(always)]
    pub(crate) unsafe fn finish_element(
        self,
        element: *mut f32,
        value: f32,
        row: usize,
        column: usize,
    ) {
        unsafe {
            *element = match self {
                TileWrite::Overwrite => value,
                TileWrite::Add => *element + value,
                TileWrite::AddColumnBias(bias) => *bias.add(column) + value,
                TileWrite::AddRowBias(bias) => *bias.add(row) + value,
                TileWrite::AddScaled(alpha) => *element + alpha * value,
            };
        }
    }
}

/// Where a tile goes in C: row `r`, vector `v` (columns `v * LANES..`) starts at
/// `c + r * row_stride + vector_offsets[v]`, each vector's columns contiguous. Only `rows` rows
/// and `cols` columns are written; kernels that do not write partial tiles are given full ones.
///
/// `post` is what the write-back does after adding the tile, on the last k block only.
#[derive(Clone, Copy)]
pub(crate) struct TileTarget<'a> {
    pub c: *mut f32,
    pub row_stride: usize,
    pub vector_offsets: &'a [usize],
    pub rows: usize,
    pub cols: usize,
    pub post: TilePost,
}

/// Post-operations of a GEMM's final write-back, in registers: `C = relu(residual + C)`, each
/// part optional (oneDNN's "sum" and "eltwise" post-ops). They replace an epilogue pass over C
/// (a transformer's residual add, its feed-forward ReLU, an LSTM step's input projection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TilePost {
    /// The tile's element `(r, v)` of a matrix laid out like C adds
    /// `*(residual + r * row_stride + vector_offsets[v] + lane)`; null for none.
    pub residual: *const f32,
    pub relu: bool,
}

impl TilePost {
    pub(crate) const NONE: TilePost = TilePost {
        residual: std::ptr::null(),
        relu: false,
    };

    /// The post of a tile `offset` elements into C: its residual pointer moved as far (a null
    /// residual stays null, so that "no residual" survives the offset).
    pub(crate) fn offset_rows(self, offset: usize) -> TilePost {
        let residual = if self.residual.is_null() {
            self.residual
        } else {
            self.residual.wrapping_add(offset)
        };
        TilePost { residual, ..self }
    }

    pub(crate) fn is_none(&self) -> bool {
        self.residual.is_null() && !self.relu
    }

    /// `value` after the post-operations, for an element whose residual (if any) is at
    /// `residual_element`.
    ///
    /// # Safety
    /// `residual_element` is readable when the post has a residual.
    #[inline(always)]
    pub(crate) unsafe fn apply(&self, value: f32, residual_element: *const f32) -> f32 {
        let mut value = value;
        if !self.residual.is_null() {
            value += unsafe { *residual_element };
        }
        if self.relu {
            // `max(value, 0)` as the JIT's relu computes it: NaN stays NaN.
            value = if value < 0.0 { 0.0 } else { value };
        }
        value
    }
}

/// Where a tile's B values are: column `j` of step `p` at `start + p * step + j`. A packed
/// micro-panel has `step == NR` and zeros past the tile's columns; B read in place has its row
/// stride, and nothing past the tile's columns may be read.
#[derive(Clone, Copy)]
pub(crate) struct BPanel {
    pub start: *const f32,
    pub step: usize,
    pub in_place: bool,
}

/// Where a tile's A values are: row `r` of step `p` at `start + r * row_stride + p` when
/// `in_place` (row-major A read where it lies), else a packed micro-panel (`row_stride == 1`,
/// steps `MR` apart).
#[derive(Clone, Copy)]
pub(crate) struct APanel {
    pub start: *const f32,
    pub row_stride: usize,
    pub in_place: bool,
}

/// One micro-kernel family: its tile shape, its cache blocks and the tile computation.
pub(crate) trait MicroKernel {
    /// Rows of the C tile (the height of an A micro-panel).
    const MR: usize;
    /// Columns of the C tile (the width of a B micro-panel), a multiple of `LANES`.
    const NR: usize;
    /// Columns per vector register: runs this long must be contiguous in C to be stored directly.
    const LANES: usize;
    /// The deepest k block.
    const KC_MAX: usize;
    /// The tallest A block, a multiple of `MR`.
    const MC_MAX: usize;
    /// The widest B block, a multiple of `NR`.
    const NC_MAX: usize;
    /// Whether `run` writes partial tiles (fewer rows or columns) itself; otherwise the driver
    /// computes them into a local full tile and copies the valid part.
    const WRITES_PARTIAL_TILES: bool;
    /// Whether `run` can read B in place (any `BPanel::step`, only the tile's columns read),
    /// which saves packing B when few row tiles share each B panel.
    const READS_B_IN_PLACE: bool;
    /// Whether `run` can read a row-major A in place (an `APanel` with `in_place`).
    const READS_A_IN_PLACE: bool;

    /// Computes the tile from `kc` steps of the A micro-panel and of B and writes it to `target`.
    ///
    /// # Safety
    /// `a_panel` holds `kc * MR` floats; `b_panel` is a packed micro-panel of `kc * NR` floats
    /// or, if `READS_B_IN_PLACE`, addresses readable floats for the target's columns at each
    /// step; `target` addresses writable floats for its rows and columns (full ones unless
    /// `WRITES_PARTIAL_TILES`); and the CPU supports the kernel's instructions.
    unsafe fn run(
        kc: usize,
        a_panel: APanel,
        b_panel: BPanel,
        target: TileTarget<'_>,
        write: TileWrite,
    );

    /// Packs rows `rows` of A (element `(i, p)` at `a + i * row_stride + p * col_stride`) and
    /// columns `columns` (the k range) into micro-panels of `MR` rows at `packed`.
    ///
    /// # Safety
    /// As `super::pack::pack_a_block`.
    #[inline(always)]
    unsafe fn pack_a(
        a: *const f32,
        row_stride: usize,
        col_stride: usize,
        rows: (usize, usize),
        columns: (usize, usize),
        packed: *mut f32,
    ) {
        unsafe {
            super::pack::pack_a_block(Self::MR, a, row_stride, col_stride, rows, columns, packed)
        }
    }

    /// Packs a block of A given by offset tables into micro-panels of `MR` rows at `packed`.
    ///
    /// # Safety
    /// As `super::pack::pack_a_block_from_offsets`.
    #[inline(always)]
    unsafe fn pack_a_from_offsets(
        a: *const f32,
        tables: super::pack::OffsetTables,
        rows: (usize, usize),
        columns: (usize, usize),
        packed: *mut f32,
    ) {
        unsafe {
            super::pack::pack_a_block_from_offsets(Self::MR, a, tables, rows, columns, packed)
        }
    }

    /// Packs a block of B given by offset tables into micro-panels of `NR` columns at `packed`.
    ///
    /// # Safety
    /// As `super::pack::pack_b_block_from_offsets`.
    #[inline(always)]
    unsafe fn pack_b_from_offsets(
        b: *const f32,
        tables: super::pack::OffsetTables,
        rows: (usize, usize),
        columns: (usize, usize),
        packed: *mut f32,
    ) {
        unsafe {
            super::pack::pack_b_block_from_offsets(Self::NR, b, tables, rows, columns, packed)
        }
    }

    /// Packs a block of B into micro-panels of `NR` columns at `packed`.
    ///
    /// # Safety
    /// As `super::pack::pack_b_block`.
    #[inline(always)]
    unsafe fn pack_b(
        b: *const f32,
        layout: super::pack::MatrixLayout,
        rows: (usize, usize),
        columns: (usize, usize),
        packed: *mut f32,
    ) {
        unsafe { super::pack::pack_b_block(Self::NR, b, layout, rows, columns, packed) }
    }
}

/// Rows of the portable and AVX2 tiles: six rows times two 8-wide vectors make twelve
/// accumulators, which with two B vectors and one broadcast A value fit the sixteen ymm registers.
const SMALL_MR: usize = 6;
/// Columns of the portable and AVX2 tiles: two 256-bit vectors.
const SMALL_NR: usize = 16;

/// The portable kernel: plain loops over a local tile that the compiler vectorizes for whatever
/// the target has.
pub(crate) struct PortableKernel;

impl MicroKernel for PortableKernel {
    const MR: usize = SMALL_MR;
    const NR: usize = SMALL_NR;
    const LANES: usize = SMALL_NR;
    const KC_MAX: usize = 256;
    const MC_MAX: usize = 144;
    const NC_MAX: usize = 4080;
    const WRITES_PARTIAL_TILES: bool = false;
    const READS_B_IN_PLACE: bool = false;
    const READS_A_IN_PLACE: bool = false;

    #[inline(always)]
    unsafe fn run(
        kc: usize,
        a_panel: APanel,
        b_panel: BPanel,
        target: TileTarget<'_>,
        write: TileWrite,
    ) {
        let (a_panel, b_panel) = (a_panel.start, b_panel.start);
        let mut tile = [[0.0f32; SMALL_NR]; SMALL_MR];
        // SAFETY: the caller guarantees the panel lengths.
        let a_values = unsafe { std::slice::from_raw_parts(a_panel, kc * SMALL_MR) };
        let b_values = unsafe { std::slice::from_raw_parts(b_panel, kc * SMALL_NR) };
        for (a_step, b_step) in a_values
            .chunks_exact(SMALL_MR)
            .zip(b_values.chunks_exact(SMALL_NR))
        {
            for (tile_row, &a_value) in tile.iter_mut().zip(a_step) {
                for (accumulator, &b_value) in tile_row.iter_mut().zip(b_step) {
                    *accumulator += a_value * b_value;
                }
            }
        }
        let first_column = target.vector_offsets[0];
        for (row_index, tile_row) in tile.iter().enumerate() {
            for (column_index, &value) in tile_row.iter().enumerate() {
                let offset = row_index * target.row_stride + first_column + column_index;
                // SAFETY: the caller guarantees the tile is inside C (and the residual, laid
                // out like C) and the bias covers it.
                unsafe {
                    let element = target.c.add(offset);
                    write.finish_element(element, value, row_index, column_index);
                    if !target.post.is_none() {
                        *element = target
                            .post
                            .apply(*element, target.post.residual.wrapping_add(offset));
                    }
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2FmaKernel;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        APanel, BPanel, MicroKernel, TileTarget, TileWrite, SMALL_MR as MR, SMALL_NR as NR,
    };
    use std::arch::x86_64::*;

    /// The AVX2 + FMA kernel: twelve ymm accumulators, per step of k two B loads, six broadcasts
    /// and twelve FMAs, unrolled four steps at a time. Blocks for Zen 3 (32 KiB L1d, 512 KiB L2
    /// per core): a B micro-panel is KC x NR x 4 = 16 KiB at KC = 256, half of L1, next to a
    /// 6 KiB A micro-panel; an A block of MC x KC = 144 x 256 floats is 144 KiB, inside L2.
    pub(crate) struct Avx2FmaKernel;

    impl MicroKernel for Avx2FmaKernel {
        const MR: usize = MR;
        const NR: usize = NR;
        const LANES: usize = 8;
        const KC_MAX: usize = 256;
        const MC_MAX: usize = 144;
        const NC_MAX: usize = 4080;
        const WRITES_PARTIAL_TILES: bool = false;
        const READS_B_IN_PLACE: bool = false;
        const READS_A_IN_PLACE: bool = false;

        #[inline(always)]
        unsafe fn run(
            kc: usize,
            a_panel: APanel,
            b_panel: BPanel,
            target: TileTarget<'_>,
            write: TileWrite,
        ) {
            // SAFETY: forwarded from the caller, which checked the CPU features.
            unsafe { tile_6x16(kc, a_panel.start, b_panel.start, target, write) }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_6x16(
        kc: usize,
        mut a: *const f32,
        mut b: *const f32,
        target: TileTarget<'_>,
        write: TileWrite,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        // One step of k: the whole tile takes the outer product of an A column and a B row.
        macro_rules! step {
            ($offset:expr) => {{
                let b_low = _mm256_loadu_ps(b.add($offset * NR));
                let b_high = _mm256_loadu_ps(b.add($offset * NR + 8));
                macro_rules! row {
                    ($row:literal) => {{
                        let a_value = _mm256_broadcast_ss(&*a.add($offset * MR + $row));
                        acc[$row][0] = _mm256_fmadd_ps(a_value, b_low, acc[$row][0]);
                        acc[$row][1] = _mm256_fmadd_ps(a_value, b_high, acc[$row][1]);
                    }};
                }
                row!(0);
                row!(1);
                row!(2);
                row!(3);
                row!(4);
                row!(5);
            }};
        }
        let (low_offset, high_offset) = (target.vector_offsets[0], target.vector_offsets[1]);
        // SAFETY (for the pointer arithmetic below): the caller guarantees kc steps of each panel.
        unsafe {
            for row in 0..MR {
                let row_start = target.c.add(row * target.row_stride);
                _mm_prefetch::<_MM_HINT_T0>(row_start.add(low_offset) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(row_start.add(high_offset + 7) as *const i8);
            }
            let mut remaining = kc;
            while remaining >= 4 {
                step!(0);
                step!(1);
                step!(2);
                step!(3);
                a = a.add(4 * MR);
                b = b.add(4 * NR);
                remaining -= 4;
            }
            while remaining > 0 {
                step!(0);
                a = a.add(MR);
                b = b.add(NR);
                remaining -= 1;
            }
            for (row, row_acc) in acc.iter().enumerate() {
                let row_start = target.c.add(row * target.row_stride);
                let (low_target, high_target) =
                    (row_start.add(low_offset), row_start.add(high_offset));
                let (mut low, mut high) = (row_acc[0], row_acc[1]);
                match write {
                    TileWrite::Overwrite => {}
                    TileWrite::Add => {
                        low = _mm256_add_ps(_mm256_loadu_ps(low_target), low);
                        high = _mm256_add_ps(_mm256_loadu_ps(high_target), high);
                    }
                    // Full tiles only (the driver computes edge tiles locally), so the bias
                    // holds NR columns from the pointer.
                    TileWrite::AddColumnBias(bias) => {
                        low = _mm256_add_ps(_mm256_loadu_ps(bias), low);
                        high = _mm256_add_ps(_mm256_loadu_ps(bias.add(8)), high);
                    }
                    TileWrite::AddRowBias(bias) => {
                        let row_bias = _mm256_set1_ps(*bias.add(row));
                        low = _mm256_add_ps(row_bias, low);
                        high = _mm256_add_ps(row_bias, high);
                    }
                    // A multiply, then an add: two roundings, as the update computes it.
                    TileWrite::AddScaled(alpha) => {
                        let alpha = _mm256_set1_ps(alpha);
                        low = _mm256_add_ps(_mm256_loadu_ps(low_target), _mm256_mul_ps(alpha, low));
                        high =
                            _mm256_add_ps(_mm256_loadu_ps(high_target), _mm256_mul_ps(alpha, high));
                    }
                }
                let post = target.post;
                if !post.residual.is_null() {
                    let residual = post.residual.add(row * target.row_stride);
                    low = _mm256_add_ps(_mm256_loadu_ps(residual.add(low_offset)), low);
                    high = _mm256_add_ps(_mm256_loadu_ps(residual.add(high_offset)), high);
                }
                if post.relu {
                    // max(0, x) returns x when x is NaN, as `TilePost::apply`.
                    low = _mm256_max_ps(_mm256_setzero_ps(), low);
                    high = _mm256_max_ps(_mm256_setzero_ps(), high);
                }
                _mm256_storeu_ps(low_target, low);
                _mm256_storeu_ps(high_target, high);
            }
        }
    }
}
