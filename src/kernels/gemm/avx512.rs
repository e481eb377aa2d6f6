//! The AVX-512 micro-kernel and its packing routines.
//!
//! The tile is `MR` rows by `NV` 16-float zmm vectors. Per step of k the kernel loads `NV` B
//! vectors, broadcasts `MR` A values and issues `MR * NV` FMAs into `MR * NV` accumulators,
//! which with the B vectors and one broadcast must fit the 32 zmm registers (14 x 2 uses 31).
//!
//! Partial tiles are computed and written directly: a tile with fewer rows runs a variant with
//! fewer accumulator rows (so the last row panel of a 32-row LSTM GEMM costs 4 rows, not 14),
//! one with fewer columns runs fewer vectors and masks the last one's loads and stores of C.
//! The kernel also reads A or B where they lie instead of from packed panels, when the driver
//! finds packing not worth it (see `driver.rs`); each is a separate compiled variant, so the
//! packed loop keeps its aligned loads and constant strides. Whatever the variant, each element
//! is one FMA per step of k in order, so all of them give the same bits.
//!
//! Packing k-contiguous operands (row-major A, and B stored transposed, which is how dense
//! layers multiply by `Wᵀ`) is a transpose; it runs on 16x16 blocks in registers instead of one
//! float at a time.

use std::arch::x86_64::*;

use super::microkernel::{APanel, BPanel, MicroKernel, TileTarget, TileWrite, MAX_NR};
use super::pack::{
    pack_a_block, pack_a_block_from_offsets, pack_b_block, panel_column_offsets, MatrixLayout,
    OffsetTables,
};

/// Floats per zmm register.
const LANES: usize = 16;

/// The AVX-512 kernel with `MR`-row by `NV`-vector tiles (see the module doc).
pub(crate) struct Avx512Kernel<const MR: usize, const NV: usize>;

impl<const MR: usize, const NV: usize> MicroKernel for Avx512Kernel<MR, NV> {
    const MR: usize = MR;
    const NR: usize = LANES * NV;
    const LANES: usize = LANES;
    const KC_MAX: usize = 256;
    const MC_MAX: usize = MR * 24;
    const NC_MAX: usize = LANES * NV * 128;
    const WRITES_PARTIAL_TILES: bool = true;
    const READS_B_IN_PLACE: bool = true;
    const READS_A_IN_PLACE: bool = true;

    #[inline(always)]
    unsafe fn run(
        kc: usize,
        a_panel: APanel,
        b_panel: BPanel,
        target: TileTarget<'_>,
        write: TileWrite,
    ) {
        let vectors = target.cols.div_ceil(LANES);
        let last_lanes = target.cols - (vectors - 1) * LANES;
        let last_mask = lane_mask(last_lanes);
        macro_rules! by_rows {
            ($vectors:literal, $b_in_place:literal, $a_in_place:literal) => {
                by_rows!($vectors, $b_in_place, $a_in_place; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            };
            ($vectors:literal, $b_in_place:literal, $a_in_place:literal; $($rows:literal)*) => {
                match target.rows {
                    $($rows => unsafe {
                        tile::<MR, NV, $rows, $vectors, $b_in_place, $a_in_place>(
                            kc, a_panel, b_panel, target, last_mask, write,
                        )
                    },)*
                    _ => unreachable!("internal error (a bug in nnc): a tile taller than MR"),
                }
            };
        }
        if a_panel.in_place {
            return match (vectors, b_panel.in_place) {
                (1, false) => by_rows!(1, false, true),
                (2, false) => by_rows!(2, false, true),
                (3, false) => by_rows!(3, false, true),
                (4, false) => by_rows!(4, false, true),
                (1, true) => by_rows!(1, true, true),
                (2, true) => by_rows!(2, true, true),
                (3, true) => by_rows!(3, true, true),
                (4, true) => by_rows!(4, true, true),
                _ => unreachable!("internal error (a bug in nnc): a tile wider than NR"),
            };
        }
        match (vectors, b_panel.in_place) {
            (1, false) => by_rows!(1, false, false),
            (2, false) => by_rows!(2, false, false),
            (3, false) => by_rows!(3, false, false),
            (4, false) => by_rows!(4, false, false),
            (1, true) => by_rows!(1, true, false),
            (2, true) => by_rows!(2, true, false),
            (3, true) => by_rows!(3, true, false),
            (4, true) => by_rows!(4, true, false),
            _ => unreachable!("internal error (a bug in nnc): a tile wider than NR"),
        }
    }

    #[inline(always)]
    unsafe fn pack_a(
        a: *const f32,
        row_stride: usize,
        col_stride: usize,
        rows: (usize, usize),
        columns: (usize, usize),
        packed: *mut f32,
    ) {
        if row_stride == 1 && MR <= LANES {
            // Column-major A (a transposed operand: the output gradient of a weight gradient,
            // `dY^T`): each step's rows are contiguous, one masked load and store per step
            // (element by element this packing was a third of the MLP's first weight gradient).
            return unsafe { pack_a_column_major::<MR>(a, col_stride, rows, columns, packed) };
        }
        if col_stride != 1 {
            return unsafe { pack_a_block(MR, a, row_stride, col_stride, rows, columns, packed) };
        }
        // Row-major A: each row is a k-contiguous line.
        let ((first_row, row_count), (first_col, kc)) = (rows, columns);
        for panel_index in 0..row_count.div_ceil(MR) {
            let panel_first_row = first_row + panel_index * MR;
            let rows_here = MR.min(first_row + row_count - panel_first_row);
            let mut line_starts = [a; LANES];
            for (row, start) in line_starts.iter_mut().enumerate().take(rows_here) {
                *start = unsafe { a.add((panel_first_row + row) * row_stride + first_col) };
            }
            let panel = unsafe { packed.add(panel_index * MR * kc) };
            unsafe { pack_lines_transposed(&line_starts, rows_here, kc, panel, MR) };
        }
    }

    #[inline(always)]
    unsafe fn pack_a_from_offsets(
        a: *const f32,
        tables: OffsetTables,
        rows: (usize, usize),
        columns: (usize, usize),
        packed: *mut f32,
    ) {
        let ((first_row, row_count), (first_col, kc)) = (rows, columns);
        // SAFETY: the tables hold the block's row and column offsets.
        let column_offsets =
            unsafe { std::slice::from_raw_parts(tables.columns.add(first_col), kc) };
        let contiguous = MR <= LANES
            && column_offsets
                .windows(2)
                .all(|pair| pair[1] == pair[0].wrapping_add(1));
        if !contiguous {
            return unsafe { pack_a_block_from_offsets(MR, a, tables, rows, columns, packed) };
        }
        // Rows whose block of steps is contiguous (rows of batches gathered into one product):
        // each is a line, packed by 16x16 transposes as a row-major A is.
        for panel_index in 0..row_count.div_ceil(MR) {
            let panel_first_row = first_row + panel_index * MR;
            let rows_here = MR.min(first_row + row_count - panel_first_row);
            let mut line_starts = [a; LANES];
            for (row, start) in line_starts.iter_mut().enumerate().take(rows_here) {
                // SAFETY: as above; the element is A's, inside its buffer.
                *start =
                    unsafe { a.add(*tables.rows.add(panel_first_row + row) + column_offsets[0]) };
            }
            let panel = unsafe { packed.add(panel_index * MR * kc) };
            unsafe { pack_lines_transposed(&line_starts, rows_here, kc, panel, MR) };
        }
    }

    #[inline(always)]
    unsafe fn pack_b_from_offsets(
        b: *const f32,
        tables: OffsetTables,
        rows: (usize, usize),
        columns: (usize, usize),
        packed: *mut f32,
    ) {
        unsafe { pack_b_gathered::<NV>(b, tables, rows, columns, packed) }
    }

    #[inline(always)]
    unsafe fn pack_b(
        b: *const f32,
        layout: MatrixLayout,
        rows: (usize, usize),
        columns: (usize, usize),
        packed: *mut f32,
    ) {
        let nr = LANES * NV;
        if layout.row_stride != 1 {
            return unsafe { pack_b_block(nr, b, layout, rows, columns, packed) };
        }
        // B stored transposed: each column is a k-contiguous line.
        let ((first_row, kc), (first_col, col_count)) = (rows, columns);
        for panel_index in 0..col_count.div_ceil(nr) {
            let panel_first_col = first_col + panel_index * nr;
            let cols_here = nr.min(first_col + col_count - panel_first_col);
            let panel = unsafe { packed.add(panel_index * nr * kc) };
            for vector in 0..NV {
                let first_line = vector * LANES;
                let lines = cols_here.saturating_sub(first_line).min(LANES);
                let mut line_starts = [b; LANES];
                for (line, start) in line_starts.iter_mut().enumerate().take(lines) {
                    let column = panel_first_col + first_line + line;
                    *start = unsafe { b.add(first_row + layout.columns.offset(column)) };
                }
                let vector_panel = unsafe { panel.add(first_line) };
                unsafe { pack_lines_transposed(&line_starts, lines, kc, vector_panel, nr) };
            }
        }
    }
}

/// Packs B from offset tables (see `pack::pack_b_block_from_offsets`): panels whose columns are
/// contiguous copy whole rows; the others gather each step's `NR` floats with 64-bit-index
/// vector gathers, eight at a time, instead of one scalar load and store per float (2x faster on
/// the weight gradients of LeNet's and ResNet's convolutions, whose panels mix channels and taps).
///
/// # Safety
/// As `pack::pack_b_block_from_offsets`; the CPU supports AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pack_b_gathered<const NV: usize>(
    b: *const f32,
    tables: OffsetTables,
    (first_row, kc): (usize, usize),
    (first_col, cols): (usize, usize),
    packed: *mut f32,
) {
    const GATHER_LANES: usize = 8;
    let nr = LANES * NV;
    let row_offsets = unsafe { std::slice::from_raw_parts(tables.rows.add(first_row), kc) };
    for panel_index in 0..cols.div_ceil(nr) {
        let panel_first_col = first_col + panel_index * nr;
        let cols_here = nr.min(first_col + cols - panel_first_col);
        let panel = unsafe { packed.add(panel_index * nr * kc) };
        let (column_offsets, contiguous) =
            unsafe { panel_column_offsets(tables, panel_first_col, cols_here) };
        let first_offset = column_offsets[0];
        if contiguous && cols_here == nr {
            for (step, &row_offset) in row_offsets.iter().enumerate() {
                for vector in 0..NV {
                    // SAFETY: the row's `nr` floats from the panel's first column are readable.
                    let values = unsafe {
                        _mm512_loadu_ps(b.add(row_offset + first_offset + vector * LANES))
                    };
                    unsafe { _mm512_storeu_ps(panel.add(step * nr + vector * LANES), values) };
                }
            }
            continue;
        }
        // Missing columns gather nothing (masked off) and pack as zeros.
        let mut indices = [_mm512_setzero_si512(); 2 * MAX_NR / LANES];
        let mut masks = [0 as __mmask8; 2 * MAX_NR / LANES];
        let mut padded_offsets = [0i64; MAX_NR];
        for (column, &offset) in column_offsets.iter().enumerate() {
            padded_offsets[column] = offset as i64;
        }
        for group in 0..nr / GATHER_LANES {
            indices[group] = unsafe {
                _mm512_loadu_si512(padded_offsets[group * GATHER_LANES..].as_ptr() as *const _)
            };
            let lanes = cols_here
                .saturating_sub(group * GATHER_LANES)
                .min(GATHER_LANES);
            masks[group] = ((1u32 << lanes) - 1) as __mmask8;
        }
        for (step, &row_offset) in row_offsets.iter().enumerate() {
            let source = unsafe { b.add(row_offset) };
            for group in 0..nr / GATHER_LANES {
                // SAFETY: every unmasked lane addresses a readable element of B.
                let values = unsafe {
                    _mm512_mask_i64gather_ps::<4>(
                        _mm256_setzero_ps(),
                        masks[group],
                        indices[group],
                        source,
                    )
                };
                unsafe { _mm256_storeu_ps(panel.add(step * nr + group * GATHER_LANES), values) };
            }
        }
    }
}

/// The mask of the low `lanes` lanes (0 to 16).
#[inline(always)]
fn lane_mask(lanes: usize) -> __mmask16 {
    ((1u32 << lanes) - 1) as __mmask16
}

/// One tile of `ROWS` rows (at most `MR`) and `VECTORS` vectors (at most `NV`), the last vector
/// of C written through `last_mask`. A packed A panel advances by its height `MR`; A in place is
/// read along each row. A packed B panel is read with aligned loads, advancing by its width; B
/// in place with its row stride, the last vector through `last_mask` (kept apart: the masked
/// load and the variable stride cost the packed loop 2-4%).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<
    const MR: usize,
    const NV: usize,
    const ROWS: usize,
    const VECTORS: usize,
    const B_IN_PLACE: bool,
    const A_IN_PLACE: bool,
>(
    kc: usize,
    a_panel: APanel,
    b_panel: BPanel,
    target: TileTarget<'_>,
    last_mask: __mmask16,
    write: TileWrite,
) {
    if ROWS > MR || VECTORS > NV {
        return; // never called: the dispatch only reaches variants that fit the tile
    }
    let mut b = b_panel.start;
    let mut a = a_panel.start;
    let a_rows: [*const f32; ROWS] =
        std::array::from_fn(|row| a_panel.start.wrapping_add(row * a_panel.row_stride));
    let mut step_index = 0usize;
    let b_step = if B_IN_PLACE { b_panel.step } else { LANES * NV };
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; ROWS];
    // SAFETY: the caller guarantees `kc` steps of both panels and the tile's place in C.
    unsafe {
        for row in 0..ROWS {
            let row_start = target.c.add(row * target.row_stride);
            for &offset in &target.vector_offsets[..VECTORS] {
                _mm_prefetch::<_MM_HINT_T0>(row_start.add(offset) as *const i8);
            }
        }
        for _ in 0..kc {
            let mut b_vectors = [_mm512_setzero_ps(); VECTORS];
            for (vector, b_vector) in b_vectors.iter_mut().enumerate() {
                let source = b.add(vector * LANES);
                *b_vector = if !B_IN_PLACE {
                    _mm512_load_ps(source)
                } else if vector + 1 == VECTORS {
                    _mm512_maskz_loadu_ps(last_mask, source)
                } else {
                    _mm512_loadu_ps(source)
                };
            }
            for (row, row_acc) in acc.iter_mut().enumerate() {
                let a_value = if A_IN_PLACE {
                    _mm512_set1_ps(*a_rows[row].add(step_index))
                } else {
                    _mm512_set1_ps(*a.add(row))
                };
                for (accumulator, &b_vector) in row_acc.iter_mut().zip(&b_vectors) {
                    *accumulator = _mm512_fmadd_ps(a_value, b_vector, *accumulator);
                }
            }
            if A_IN_PLACE {
                step_index += 1;
            } else {
                a = a.add(MR);
            }
            b = b.add(b_step);
        }
        // A column bias is the same for every row: loaded once per tile.
        let column_bias: [__m512; VECTORS] = std::array::from_fn(|vector| match write {
            TileWrite::AddColumnBias(bias) => {
                let mask = if vector + 1 == VECTORS {
                    last_mask
                } else {
                    0xFFFF
                };
                _mm512_maskz_loadu_ps(mask, bias.add(vector * LANES))
            }
            _ => _mm512_setzero_ps(),
        });
        for (row, row_acc) in acc.iter().enumerate() {
            let row_start = target.c.add(row * target.row_stride);
            for (vector, &value) in row_acc.iter().enumerate() {
                let destination = row_start.add(target.vector_offsets[vector]);
                let mask = if vector + 1 == VECTORS {
                    last_mask
                } else {
                    0xFFFF
                };
                let value = match write {
                    TileWrite::Overwrite => value,
                    TileWrite::Add => {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, destination), value)
                    }
                    TileWrite::AddColumnBias(_) => _mm512_add_ps(column_bias[vector], value),
                    // A multiply, then an add: two roundings, as the update computes it.
                    TileWrite::AddScaled(alpha) => _mm512_add_ps(
                        _mm512_maskz_loadu_ps(mask, destination),
                        _mm512_mul_ps(_mm512_set1_ps(alpha), value),
                    ),
                    TileWrite::AddRowBias(bias) => {
                        _mm512_add_ps(_mm512_set1_ps(*bias.add(row)), value)
                    }
                };
                _mm512_mask_storeu_ps(destination, mask, value);
            }
        }
        if !target.post.is_none() {
            apply_post(target, ROWS, VECTORS, last_mask);
        }
    }
}

/// The post-operations over a tile just written (in L1): `C = relu(residual + C)`. A separate
/// pass rather than part of the write-back above, because any more code in that loop made the
/// compiler spill accumulators from the k loop (the GEMM ran at half speed).
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn apply_post(target: TileTarget<'_>, rows: usize, vectors: usize, last_mask: __mmask16) {
    let post = target.post;
    for row in 0..rows {
        for vector in 0..vectors {
            let mask = if vector + 1 == vectors {
                last_mask
            } else {
                0xFFFF
            };
            let offset = row * target.row_stride + target.vector_offsets[vector];
            // SAFETY: the tile is inside C and the residual is laid out like C.
            unsafe {
                let destination = target.c.add(offset);
                let mut value = _mm512_maskz_loadu_ps(mask, destination);
                if !post.residual.is_null() {
                    let residual = _mm512_maskz_loadu_ps(mask, post.residual.add(offset));
                    value = _mm512_add_ps(residual, value);
                }
                if post.relu {
                    // max(0, x) returns x when x is NaN, as `TilePost::apply`.
                    value = _mm512_max_ps(_mm512_setzero_ps(), value);
                }
                _mm512_mask_storeu_ps(destination, mask, value);
            }
        }
    }
}

/// Packs `lines` (at most 16) k-contiguous lines, line `l` starting at `line_starts[l]`, as
/// lanes `0..lines` of a panel whose steps are `width` floats apart, zeros in the lanes up to
/// `min(width, 16)`: `panel[step * width + l] = line_starts[l][step]` for `step < kc`. Works on
/// 16x16 blocks in registers. (Assembling each zmm from four 128-bit loads, which halves the
/// shuffles, measured no faster: the sixteen line pointers then spill.)
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pack_lines_transposed(
    line_starts: &[*const f32; LANES],
    lines: usize,
    kc: usize,
    panel: *mut f32,
    width: usize,
) {
    debug_assert!(lines <= LANES && width <= MAX_NR);
    let store_mask = lane_mask(width.min(LANES));
    for step in (0..kc).step_by(LANES) {
        let steps_here = LANES.min(kc - step);
        let load_mask = lane_mask(steps_here);
        let mut block = [_mm512_setzero_ps(); LANES];
        for (line, vector) in block.iter_mut().enumerate() {
            let mask = if line < lines { load_mask } else { 0 };
            // SAFETY: masked-off lanes (all of a missing line's) are not read; the others are
            // inside the line.
            let source = line_starts[line].wrapping_add(step);
            *vector = unsafe { _mm512_maskz_loadu_ps(mask, source) };
        }
        transpose_16x16(&mut block);
        for (offset, vector) in block.iter().enumerate().take(steps_here) {
            // SAFETY: the caller's panel holds `kc` steps of `width` floats.
            let destination = unsafe { panel.add((step + offset) * width) };
            unsafe { _mm512_mask_storeu_ps(destination, store_mask, *vector) };
        }
    }
}

/// Packs rows `rows` and steps `columns` of a column-major A (element `(i, p)` at
/// `a + i + p * col_stride`) into micro-panels of `MR` rows, zeros past the last row.
///
/// # Safety
/// As `pack::pack_a_block` with a row stride of 1; the CPU supports AVX-512F; `MR <= 16`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pack_a_column_major<const MR: usize>(
    a: *const f32,
    col_stride: usize,
    (first_row, row_count): (usize, usize),
    (first_col, kc): (usize, usize),
    packed: *mut f32,
) {
    let store_mask = lane_mask(MR);
    for panel_index in 0..row_count.div_ceil(MR) {
        let panel_first_row = first_row + panel_index * MR;
        let rows_here = MR.min(first_row + row_count - panel_first_row);
        let load_mask = lane_mask(rows_here);
        let panel = unsafe { packed.add(panel_index * MR * kc) };
        for step in 0..kc {
            // SAFETY: masked-off lanes are not read; the others are rows of this panel at this
            // step, inside A; the panel holds `kc` steps of `MR` floats.
            unsafe {
                let source = a.add((first_col + step) * col_stride + panel_first_row);
                let values = _mm512_maskz_loadu_ps(load_mask, source);
                _mm512_mask_storeu_ps(panel.add(step * MR), store_mask, values);
            }
        }
    }
}

/// Transposes a 16x16 block held as sixteen row vectors: unpack pairs of rows, shuffle pairs of
/// pairs, then exchange 128-bit lanes twice.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose_16x16(rows: &mut [__m512; LANES]) {
    let r = *rows;
    let mut t = [_mm512_setzero_ps(); LANES];
    for pair in 0..8 {
        t[2 * pair] = _mm512_unpacklo_ps(r[2 * pair], r[2 * pair + 1]);
        t[2 * pair + 1] = _mm512_unpackhi_ps(r[2 * pair], r[2 * pair + 1]);
    }
    let mut u = [_mm512_setzero_ps(); LANES];
    for quad in 0..4 {
        let base = 4 * quad;
        u[base] = _mm512_shuffle_ps::<0x44>(t[base], t[base + 2]);
        u[base + 1] = _mm512_shuffle_ps::<0xEE>(t[base], t[base + 2]);
        u[base + 2] = _mm512_shuffle_ps::<0x44>(t[base + 1], t[base + 3]);
        u[base + 3] = _mm512_shuffle_ps::<0xEE>(t[base + 1], t[base + 3]);
    }
    // u[4q + j] holds column j of rows 4q..4q+4 in each 128-bit lane; gather the lanes.
    for half in 0..2 {
        let base = 8 * half;
        for j in 0..4 {
            t[base + j] = _mm512_shuffle_f32x4::<0x88>(u[base + j], u[base + 4 + j]);
            t[base + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(u[base + j], u[base + 4 + j]);
        }
    }
    for j in 0..8 {
        rows[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]);
        rows[8 + j] = _mm512_shuffle_f32x4::<0xDD>(t[j], t[8 + j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_packing_equals_the_definition() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        for (lines, kc, width) in [
            (16, 16, 16),
            (14, 37, 14),
            (5, 3, 32),
            (1, 1, 14),
            (16, 40, 32),
            (0, 20, 32),
            (9, 48, 14),
        ] {
            let stride = kc + 3;
            let source: Vec<f32> = (0..LANES * stride).map(|index| index as f32).collect();
            let mut starts = [source.as_ptr(); LANES];
            for (line, start) in starts.iter_mut().enumerate().take(lines) {
                *start = source[line * stride..].as_ptr();
            }
            let mut panel = vec![f32::NAN; kc * width];
            unsafe { pack_lines_transposed(&starts, lines, kc, panel.as_mut_ptr(), width) };
            for step in 0..kc {
                for lane in 0..width.min(LANES) {
                    let want = if lane < lines {
                        source[lane * stride + step]
                    } else {
                        0.0
                    };
                    assert_eq!(panel[step * width + lane], want, "{lines} {kc} {width}");
                }
            }
        }
    }
}
