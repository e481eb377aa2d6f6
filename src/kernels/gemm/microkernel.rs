//! Micro-kernels: the innermost `MR x NR` tile of C computed from one packed A micro-panel
//! (`MR` values per step of k) and one packed B micro-panel (`NR` values per step of k).
//!
//! Every kernel computes each element of the tile the same way: an accumulator that starts at
//! zero and takes one product per step of k in order, then is stored into C or added to C once.
//! No element's arithmetic depends on where the tile sits, so any split of C into tiles or threads
//! gives bit-identical results. The AVX2 kernel uses fused multiply-adds; the portable kernel
//! (for CPUs without AVX2/FMA) a multiply then an add, so the two differ in the last bits, but a
//! given machine always picks the same one.

/// Rows of the C tile: six rows times two 8-wide vectors make twelve accumulators, which with two
/// B vectors and one broadcast A value fit the sixteen ymm registers.
pub(crate) const MR: usize = 6;
/// Columns of the C tile: two 256-bit vectors.
pub(crate) const NR: usize = 16;

/// How the finished tile meets C.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TileWrite {
    /// C = tile (C is not read, so it may hold garbage or NaN).
    Overwrite,
    /// C = C + tile.
    Add,
}

/// One micro-kernel implementation. `run` computes a full `MR x NR` tile from `kc` steps of the
/// packed panels and writes it to `c`, whose rows are `c_row_stride` apart and whose columns are
/// contiguous.
pub(crate) trait MicroKernel {
    /// # Safety
    /// `a_panel` holds `kc * MR` floats, `b_panel` `kc * NR`, and `c` is valid for an `MR x NR`
    /// tile at the given row stride; the CPU supports the kernel's instructions.
    unsafe fn run(
        kc: usize,
        a_panel: *const f32,
        b_panel: *const f32,
        c: *mut f32,
        c_row_stride: usize,
        write: TileWrite,
    );
}

/// The portable kernel: plain loops over a local tile that the compiler vectorizes for whatever
/// the target has.
pub(crate) struct PortableKernel;

impl MicroKernel for PortableKernel {
    #[inline(always)]
    unsafe fn run(
        kc: usize,
        a_panel: *const f32,
        b_panel: *const f32,
        c: *mut f32,
        c_row_stride: usize,
        write: TileWrite,
    ) {
        let mut tile = [[0.0f32; NR]; MR];
        // SAFETY: the caller guarantees the panel lengths.
        let a_values = unsafe { std::slice::from_raw_parts(a_panel, kc * MR) };
        let b_values = unsafe { std::slice::from_raw_parts(b_panel, kc * NR) };
        for (a_step, b_step) in a_values.chunks_exact(MR).zip(b_values.chunks_exact(NR)) {
            for (tile_row, &a_value) in tile.iter_mut().zip(a_step) {
                for (accumulator, &b_value) in tile_row.iter_mut().zip(b_step) {
                    *accumulator += a_value * b_value;
                }
            }
        }
        for (row_index, tile_row) in tile.iter().enumerate() {
            for (column_index, &value) in tile_row.iter().enumerate() {
                // SAFETY: the caller guarantees the tile is inside C.
                let target = unsafe { &mut *c.add(row_index * c_row_stride + column_index) };
                *target = match write {
                    TileWrite::Overwrite => value,
                    TileWrite::Add => *target + value,
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2FmaKernel;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MicroKernel, TileWrite, MR, NR};
    use std::arch::x86_64::*;

    /// The AVX2 + FMA kernel: twelve ymm accumulators, per step of k two B loads, six broadcasts
    /// and twelve FMAs, unrolled four steps at a time.
    pub(crate) struct Avx2FmaKernel;

    impl MicroKernel for Avx2FmaKernel {
        #[inline(always)]
        unsafe fn run(
            kc: usize,
            a_panel: *const f32,
            b_panel: *const f32,
            c: *mut f32,
            c_row_stride: usize,
            write: TileWrite,
        ) {
            // SAFETY: forwarded from the caller, which checked the CPU features.
            unsafe { tile_6x16(kc, a_panel, b_panel, c, c_row_stride, write) }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_6x16(
        kc: usize,
        mut a: *const f32,
        mut b: *const f32,
        c: *mut f32,
        c_row_stride: usize,
        write: TileWrite,
    ) {
        const { assert!(MR == 6 && NR == 16) };
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
        // SAFETY (for the pointer arithmetic below): the caller guarantees kc steps of each panel.
        unsafe {
            for row in 0..MR {
                _mm_prefetch::<_MM_HINT_T0>(c.add(row * c_row_stride) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.add(row * c_row_stride + NR - 1) as *const i8);
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
                let target = c.add(row * c_row_stride);
                let (mut low, mut high) = (row_acc[0], row_acc[1]);
                if write == TileWrite::Add {
                    low = _mm256_add_ps(_mm256_loadu_ps(target), low);
                    high = _mm256_add_ps(_mm256_loadu_ps(target.add(8)), high);
                }
                _mm256_storeu_ps(target, low);
                _mm256_storeu_ps(target.add(8), high);
            }
        }
    }
}
