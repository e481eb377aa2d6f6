//! The AVX-512 micro-kernel and its packing routines.
//!
//! The tile is `MR` rows by `NV` 16-float zmm vectors. Per step of k the kernel loads `NV` B
//! vectors, broadcasts `MR` A values and issues `MR * NV` FMAs into `MR * NV` accumulators,
//! which with the B vectors and one broadcast must fit the 32 zmm registers.
//!
//! Partial tiles are computed and written directly: a tile with fewer rows runs a variant with
//! fewer accumulator rows (so the last row panel of a 32-row LSTM GEMM costs 4 rows, not 14),
//! one with fewer columns runs fewer vectors and masks the last one's loads and stores of C. Each
//! element is still one FMA per step of k in order, so partial tiles give the same bits as full
//! ones.
//!
//! Packing k-contiguous operands (row-major A, and B stored transposed, which is how dense
//! layers multiply by `Wᵀ`) is a transpose; it runs on 16x16 blocks in registers instead of one
//! float at a time.

use std::arch::x86_64::*;

use super::microkernel::{MicroKernel, TileTarget, TileWrite, MAX_NR};
use super::pack::{pack_a_block, pack_b_block, MatrixLayout};

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

    #[inline(always)]
    unsafe fn run(
        kc: usize,
        a_panel: *const f32,
        b_panel: *const f32,
        target: TileTarget<'_>,
        write: TileWrite,
    ) {
        let vectors = target.cols.div_ceil(LANES);
        let last_lanes = target.cols - (vectors - 1) * LANES;
        let last_mask = lane_mask(last_lanes);
        macro_rules! by_rows {
            ($vectors:literal) => {
                by_rows!($vectors; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            };
            ($vectors:literal; $($rows:literal)*) => {
                match target.rows {
                    $($rows => unsafe {
                        tile::<MR, NV, $rows, $vectors>(kc, a_panel, b_panel, target, last_mask, write)
                    },)*
                    _ => unreachable!("internal error (a bug in nnc): a tile taller than MR"),
                }
            };
        }
        match vectors {
            1 => by_rows!(1),
            2 => by_rows!(2),
            3 => by_rows!(3),
            4 => by_rows!(4),
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

/// The mask of the low `lanes` lanes (1 to 16).
#[inline(always)]
fn lane_mask(lanes: usize) -> __mmask16 {
    (u32::MAX >> (32 - lanes)) as __mmask16
}

/// One tile of `ROWS` rows (at most `MR`) and `VECTORS` vectors (at most `NV`), the last vector
/// written through `last_mask`. A and B advance by the full panel widths `MR` and `16 * NV`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const MR: usize, const NV: usize, const ROWS: usize, const VECTORS: usize>(
    kc: usize,
    mut a: *const f32,
    mut b: *const f32,
    target: TileTarget<'_>,
    last_mask: __mmask16,
    write: TileWrite,
) {
    if ROWS > MR || VECTORS > NV {
        return; // never called: the dispatch only reaches variants that fit the tile
    }
    let nr = LANES * NV;
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
                *b_vector = _mm512_load_ps(b.add(vector * LANES));
            }
            for (row, row_acc) in acc.iter_mut().enumerate() {
                let a_value = _mm512_set1_ps(*a.add(row));
                for (accumulator, &b_vector) in row_acc.iter_mut().zip(&b_vectors) {
                    *accumulator = _mm512_fmadd_ps(a_value, b_vector, *accumulator);
                }
            }
            a = a.add(MR);
            b = b.add(nr);
        }
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
                    TileWrite::Add => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, destination), value),
                };
                _mm512_mask_storeu_ps(destination, mask, value);
            }
        }
    }
}

/// Sixteen zeros that stand in for the missing lines of a partial block.
static ZERO_LINE: [f32; LANES] = [0.0; LANES];

/// Packs `lines` (at most 16) k-contiguous lines, line `l` starting at `line_starts[l]`, as
/// lanes `0..lines` of a panel whose steps are `width` floats apart, zeros in the lanes up to
/// `min(width, 16)`: `panel[step * width + l] = line_starts[l][step]` for `step < kc`.
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
    let mut step = 0;
    while step + LANES <= kc {
        let mut sources = [ZERO_LINE.as_ptr(); LANES];
        for (line, source) in sources.iter_mut().enumerate().take(lines) {
            *source = unsafe { line_starts[line].add(step) };
        }
        // SAFETY: each source holds 16 floats; the panel holds these 16 steps.
        unsafe { transpose_block(&sources, panel.add(step * width), width, store_mask) };
        step += LANES;
    }
    if step < kc {
        unsafe { pack_tail_transposed(line_starts, lines, step, kc, panel, width, store_mask) };
    }
}

/// Transposes a 16x16 block whose row `r` is the 16 floats at `sources[r]` into 16 steps of a
/// panel, `width` floats apart, storing the lanes of `store_mask`. Each zmm is assembled from four
/// 128-bit loads of rows `r, r + 4, r + 8, r + 12` (the inserts run on two ports), which leaves
/// 4x4 transposes inside 128-bit lanes: 32 shuffles on the shuffle port instead of 64.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_block(
    sources: &[*const f32; LANES],
    panel: *mut f32,
    width: usize,
    store_mask: __mmask16,
) {
    for quad in 0..4 {
        let column = 4 * quad;
        // SAFETY: every source holds 16 floats.
        let gathered: [__m512; 4] = std::array::from_fn(|row| unsafe {
            let low = _mm512_castps128_ps512(_mm_loadu_ps(sources[row].add(column)));
            let low = _mm512_insertf32x4::<1>(low, _mm_loadu_ps(sources[row + 4].add(column)));
            let low = _mm512_insertf32x4::<2>(low, _mm_loadu_ps(sources[row + 8].add(column)));
            _mm512_insertf32x4::<3>(low, _mm_loadu_ps(sources[row + 12].add(column)))
        });
        // Lane L of gathered[r] holds columns column..column + 4 of row r + 4L.
        let pair_low = _mm512_unpacklo_ps(gathered[0], gathered[1]);
        let pair_high = _mm512_unpackhi_ps(gathered[0], gathered[1]);
        let next_low = _mm512_unpacklo_ps(gathered[2], gathered[3]);
        let next_high = _mm512_unpackhi_ps(gathered[2], gathered[3]);
        let columns = [
            _mm512_shuffle_ps::<0x44>(pair_low, next_low),
            _mm512_shuffle_ps::<0xEE>(pair_low, next_low),
            _mm512_shuffle_ps::<0x44>(pair_high, next_high),
            _mm512_shuffle_ps::<0xEE>(pair_high, next_high),
        ];
        for (offset, &vector) in columns.iter().enumerate() {
            // SAFETY: the panel holds 16 steps of `width` floats from here.
            unsafe {
                _mm512_mask_storeu_ps(panel.add((column + offset) * width), store_mask, vector)
            };
        }
    }
}

/// The last `kc - step` (fewer than 16) steps of `pack_lines_transposed`, with masked loads.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pack_tail_transposed(
    line_starts: &[*const f32; LANES],
    lines: usize,
    step: usize,
    kc: usize,
    panel: *mut f32,
    width: usize,
    store_mask: __mmask16,
) {
    let steps_here = kc - step;
    let load_mask = lane_mask(steps_here);
    let mut block = [_mm512_setzero_ps(); LANES];
    for (line, vector) in block.iter_mut().enumerate() {
        let mask = if line < lines { load_mask } else { 0 };
        // SAFETY: masked-off lanes are not read; the others are inside the line.
        *vector = unsafe { _mm512_maskz_loadu_ps(mask, line_starts[line].add(step)) };
    }
    transpose_16x16(&mut block);
    for (offset, vector) in block.iter().enumerate().take(steps_here) {
        // SAFETY: the caller's panel holds `kc` steps of `width` floats.
        unsafe { _mm512_mask_storeu_ps(panel.add((step + offset) * width), store_mask, *vector) };
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
        for (lines, kc, width) in [(16, 16, 16), (14, 37, 14), (5, 3, 32), (1, 1, 14), (16, 40, 32), (0, 20, 32), (9, 48, 14)] {
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
