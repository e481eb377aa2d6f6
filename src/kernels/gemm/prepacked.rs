//! B packed once, multiplied many times: [`PackedB`] holds a matrix in the micro-panel layout the
//! driver would pack it into, for every k block and every column, so that a GEMM with that B
//! skips its packing.
//!
//! Two callers gain from it. A bound inference executable multiplies by the same weights on
//! every run (the MLP's dense layers at batch 64 spent about 15% of their time packing B), and
//! a recurrence multiplies by the same recurrent weight at every step of its scan (the LSTM's
//! 128 x 512 weight was packed 32 times per forward pass, a fifth of its run time).
//!
//! Results do not change: the panels hold the same floats in the same places as the driver's
//! own packing, and the micro-kernel computes each element in the same order whether B was
//! packed by the call or before it.

#[cfg(target_arch = "x86_64")]
use super::driver::Avx512Tile;
use super::driver::{grown, k_block_depth, AlignedFloats, PackedBView};
#[cfg(target_arch = "x86_64")]
use super::microkernel::Avx2FmaKernel;
use super::microkernel::{MicroKernel, PortableKernel};
use super::pack::MatrixLayout;
use super::{check_fits, GemmError, GemmKernel, MatrixRef};

/// A `k x n` matrix packed for one kernel family's B micro-panels (see the module doc).
pub struct PackedB {
    kernel: GemmKernel,
    k: usize,
    n: usize,
    depth: usize,
    padded_n: usize,
    panels: Vec<AlignedFloats>,
}

impl PackedB {
    /// Packs `b` (`k x n`) for the process's kernel family ([`GemmKernel::active`]).
    pub fn pack(b: MatrixRef<'_>, k: usize, n: usize) -> Result<PackedB, GemmError> {
        PackedB::pack_for(GemmKernel::active(), b, k, n)
    }

    /// Packs `b` (`k x n`) for the given kernel family; refused when the CPU lacks it.
    pub fn pack_for(
        kernel: GemmKernel,
        b: MatrixRef<'_>,
        k: usize,
        n: usize,
    ) -> Result<PackedB, GemmError> {
        if !kernel.is_supported() {
            return Err(GemmError::UnsupportedKernel {
                kernel: kernel.name(),
            });
        }
        check_fits('B', k, n, b.row_stride, b.col_stride, b.data.len())?;
        let (nr, kc_max) = tile_of(kernel);
        let padded_n = n.div_ceil(nr) * nr;
        let mut panels = Vec::new();
        let destination = grown(&mut panels, k * padded_n);
        let layout = MatrixLayout::strided(b.row_stride, b.col_stride);
        let source = b.data.as_ptr();
        // SAFETY: every element of B that the layout addresses is inside `b.data` (checked
        // above), the destination holds `k * padded_n` floats, and the family is supported.
        unsafe {
            match kernel {
                #[cfg(target_arch = "x86_64")]
                GemmKernel::Avx512 => pack_avx512(source, layout, k, n, destination),
                #[cfg(target_arch = "x86_64")]
                GemmKernel::Avx2Fma => pack_avx2(source, layout, k, n, destination),
                _ => pack_whole::<PortableKernel>(source, layout, k, n, destination),
            }
        }
        Ok(PackedB {
            kernel,
            k,
            n,
            depth: k_block_depth(k, kc_max),
            padded_n,
            panels,
        })
    }

    /// The rows of the packed matrix (the GEMM's k).
    pub fn rows(&self) -> usize {
        self.k
    }

    /// The columns of the packed matrix (the GEMM's n).
    pub fn columns(&self) -> usize {
        self.n
    }

    /// The kernel family the panels are laid out for.
    pub fn kernel(&self) -> GemmKernel {
        self.kernel
    }

    /// The bytes the panels take (zero-padded to whole micro-panels).
    pub fn bytes(&self) -> usize {
        self.panels.len() * std::mem::size_of::<AlignedFloats>()
    }

    pub(super) fn view(&self) -> PackedBView {
        PackedBView {
            panels: self.panels.as_ptr() as *const f32,
            kernel: self.kernel,
            depth: self.depth,
            padded_n: self.padded_n,
        }
    }
}

/// A family's panel width (`NR`) and deepest k block (`KC_MAX`).
fn tile_of(kernel: GemmKernel) -> (usize, usize) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => (Avx512Tile::NR, Avx512Tile::KC_MAX),
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2Fma => (Avx2FmaKernel::NR, Avx2FmaKernel::KC_MAX),
        _ => (PortableKernel::NR, PortableKernel::KC_MAX),
    }
}

/// Packs every k block of B, block `pc` at `packed + pc * padded_n`, each the way the driver
/// packs the block `(pc, kc) x (0, n)`.
#[inline(always)]
unsafe fn pack_whole<K: MicroKernel>(
    b: *const f32,
    layout: MatrixLayout,
    k: usize,
    n: usize,
    packed: *mut f32,
) {
    let depth = k_block_depth(k, K::KC_MAX);
    let padded_n = n.div_ceil(K::NR) * K::NR;
    for pc in (0..k).step_by(depth) {
        let kc = depth.min(k - pc);
        unsafe { K::pack_b(b, layout, (pc, kc), (0, n), packed.add(pc * padded_n)) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pack_avx512(b: *const f32, layout: MatrixLayout, k: usize, n: usize, packed: *mut f32) {
    unsafe { pack_whole::<Avx512Tile>(b, layout, k, n, packed) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_avx2(b: *const f32, layout: MatrixLayout, k: usize, n: usize, packed: *mut f32) {
    unsafe { pack_whole::<Avx2FmaKernel>(b, layout, k, n, packed) }
}

#[cfg(test)]
mod tests {
    use super::super::{
        sgemm_packed_b, sgemm_with_kernel, sgemm_with_start, GemmPost, GemmStart, MatrixMut,
    };
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|index| ((index * 7919 + seed * 104_729) % 29) as f32 / 13.0 - 1.0)
            .collect()
    }

    /// Every kernel family this CPU supports, on shapes with one and several k blocks, partial
    /// panels, B row-major and transposed, C overwritten and accumulated, on one and two
    /// threads: the packed-B GEMM equals a plain f64 loop within rounding, and the ordinary
    /// GEMM bit for bit (the panels hold the same floats the call would have packed).
    #[test]
    fn packed_b_gives_the_ordinary_gemm_bit_for_bit() {
        let shapes = [
            (1, 1, 1),
            (32, 512, 128),
            (64, 10, 256),
            (7, 45, 300),
            (29, 33, 513),
            (100, 70, 17),
        ];
        for kernel in GemmKernel::supported() {
            for &(m, n, k) in &shapes {
                for b_transposed in [false, true] {
                    // C's start: zero, accumulated onto, or a column bias (bit for bit what
                    // filling C with the bias and accumulating gives).
                    for start_kind in ["zero", "accumulate", "column bias"] {
                        let accumulate = start_kind != "zero";
                        let a = values(m * k, 1);
                        let b = values(k * n, 2);
                        let b_matrix = if b_transposed {
                            MatrixRef::row_major(&b, k).transposed()
                        } else {
                            MatrixRef::row_major(&b, n)
                        };
                        let packed = PackedB::pack_for(kernel, b_matrix, k, n).unwrap();
                        let bias = values(n, 4);
                        let start = if start_kind == "column bias" {
                            bias.iter().cycle().take(m * n).copied().collect()
                        } else {
                            values(m * n, 3)
                        };
                        let mut expected = start.clone();
                        sgemm_with_kernel(
                            kernel,
                            1,
                            m,
                            n,
                            k,
                            MatrixRef::row_major(&a, k),
                            b_matrix,
                            MatrixMut::row_major(&mut expected, n),
                            accumulate,
                        )
                        .unwrap();
                        for (row, expected_row) in expected.chunks(n).enumerate() {
                            for (column, value) in expected_row.iter().enumerate() {
                                let mut sum = if accumulate {
                                    start[row * n + column] as f64
                                } else {
                                    0.0
                                };
                                for p in 0..k {
                                    let b_value = if b_transposed {
                                        b[column * k + p]
                                    } else {
                                        b[p * n + column]
                                    };
                                    sum += a[row * k + p] as f64 * b_value as f64;
                                }
                                assert!((*value as f64 - sum).abs() <= 1e-4 * (1.0 + sum.abs()));
                            }
                        }
                        for threads in [1, 2] {
                            let (mut c, gemm_start) = match start_kind {
                                "zero" => (vec![f32::NAN; m * n], GemmStart::Zero),
                                "accumulate" => (start.clone(), GemmStart::Accumulate),
                                _ => (vec![f32::NAN; m * n], GemmStart::ColumnBias(&bias)),
                            };
                            sgemm_packed_b(
                                threads,
                                m,
                                n,
                                k,
                                MatrixRef::row_major(&a, k),
                                &packed,
                                MatrixMut::row_major(&mut c, n),
                                gemm_start,
                                GemmPost::default(),
                            )
                            .unwrap();
                            assert!(
                                c.iter()
                                    .zip(&expected)
                                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                                "{} {m}x{n}x{k} transposed {b_transposed} start \
                                 {start_kind} threads {threads}",
                                kernel.name()
                            );
                        }
                    }
                }
            }
        }
    }

    /// A's rows given by offsets into one buffer (in any order, some shared, with contiguous or
    /// strided steps) times a packed B: bit for bit the ordinary GEMM on A's rows copied out.
    #[test]
    fn gathered_rows_give_the_gemm_of_the_copied_rows() {
        let source = values(4000, 7);
        for kernel in GemmKernel::supported() {
            for &(m, n, k) in &[(1, 5, 3), (40, 33, 17), (70, 64, 300)] {
                for column_stride in [1, 3] {
                    let span = (k - 1) * column_stride + 1;
                    let row_offsets: Vec<usize> = (0..m)
                        .map(|row| (row * 7919 + 13) % (source.len() - span))
                        .collect();
                    let mut copied = Vec::with_capacity(m * k);
                    for &offset in &row_offsets {
                        copied.extend((0..k).map(|step| source[offset + step * column_stride]));
                    }
                    let b = values(k * n, 8);
                    let b_matrix = MatrixRef::row_major(&b, n);
                    let packed = PackedB::pack_for(kernel, b_matrix, k, n).unwrap();
                    let mut expected = vec![0.0; m * n];
                    sgemm_with_kernel(
                        kernel,
                        1,
                        m,
                        n,
                        k,
                        MatrixRef::row_major(&copied, k),
                        b_matrix,
                        MatrixMut::row_major(&mut expected, n),
                        false,
                    )
                    .unwrap();
                    for threads in [1, 2] {
                        let mut c = vec![f32::NAN; m * n];
                        super::super::sgemm_gathered_rows_packed_b(
                            threads,
                            &row_offsets,
                            k,
                            &source,
                            column_stride,
                            &packed,
                            MatrixMut::row_major(&mut c, n),
                            GemmStart::Zero,
                            GemmPost::default(),
                        )
                        .unwrap();
                        assert!(
                            c.iter()
                                .zip(&expected)
                                .all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{} {m}x{n}x{k} stride {column_stride} threads {threads}",
                            kernel.name()
                        );
                    }
                }
            }
        }
        // A row that runs past the buffer is refused.
        let b = values(12, 0);
        let packed = PackedB::pack(MatrixRef::row_major(&b, 4), 3, 4).unwrap();
        let mut c = vec![0.0; 4];
        let refused = super::super::sgemm_gathered_rows_packed_b(
            1,
            &[3998],
            3,
            &source,
            1,
            &packed,
            MatrixMut::row_major(&mut c, 4),
            GemmStart::Zero,
            GemmPost::default(),
        );
        assert!(matches!(refused, Err(GemmError::BufferTooSmall { .. })));
    }

    #[test]
    fn a_packed_b_of_another_shape_is_refused() {
        let b = values(12, 0);
        let packed = PackedB::pack(MatrixRef::row_major(&b, 4), 3, 4).unwrap();
        let a = values(6, 1);
        let mut c = vec![0.0; 8];
        let refused = sgemm_packed_b(
            1,
            2,
            4,
            4,
            MatrixRef::row_major(&a, 3),
            &packed,
            MatrixMut::row_major(&mut c, 4),
            GemmStart::Zero,
            GemmPost::default(),
        );
        assert!(matches!(refused, Err(GemmError::PackedShape { .. })));
    }

    /// Post-operations (a residual add, a ReLU) applied as tiles are written give the same bits
    /// as applying them after the GEMM, for every kernel family, packed or not, with and
    /// without a column bias, at shapes with edge tiles and several k blocks, on 1 and 2
    /// threads; a residual that does not cover C is refused.
    #[test]
    fn post_operations_match_a_separate_pass() {
        let shapes = [
            (1usize, 1usize, 1usize),
            (13, 40, 300),
            (29, 33, 513),
            (64, 100, 17),
        ];
        for kernel in GemmKernel::supported() {
            for &(m, n, k) in &shapes {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let bias = values(n, 3);
                let residual = values(m * n, 4);
                let b_matrix = MatrixRef::row_major(&b, n);
                let packed = PackedB::pack_for(kernel, b_matrix, k, n).unwrap();
                for (with_bias, with_residual, relu) in [
                    (false, true, false),
                    (true, false, true),
                    (true, true, true),
                ] {
                    let start = if with_bias {
                        GemmStart::ColumnBias(&bias)
                    } else {
                        GemmStart::Zero
                    };
                    let mut expected = vec![0.0; m * n];
                    let c = MatrixMut::row_major(&mut expected, n);
                    let a_matrix = MatrixRef::row_major(&a, k);
                    sgemm_with_start(
                        kernel,
                        1,
                        m,
                        n,
                        k,
                        a_matrix,
                        b_matrix,
                        c,
                        start,
                        GemmPost::default(),
                    )
                    .unwrap();
                    for (value, extra) in expected.iter_mut().zip(&residual) {
                        if with_residual {
                            *value += *extra;
                        }
                        if relu && *value < 0.0 {
                            *value = 0.0;
                        }
                    }
                    let post = GemmPost {
                        residual: with_residual.then_some(&residual[..]),
                        relu,
                    };
                    for threads in [1, 2] {
                        let mut plain = vec![f32::NAN; m * n];
                        let c = MatrixMut::row_major(&mut plain, n);
                        sgemm_with_start(
                            kernel, threads, m, n, k, a_matrix, b_matrix, c, start, post,
                        )
                        .unwrap();
                        let mut prepacked = vec![f32::NAN; m * n];
                        let c = MatrixMut::row_major(&mut prepacked, n);
                        sgemm_packed_b(threads, m, n, k, a_matrix, &packed, c, start, post)
                            .unwrap();
                        for result in [&plain, &prepacked] {
                            assert!(
                                result.iter().zip(&expected).all(|(x, y)| x.to_bits() == y.to_bits()),
                                "{} {m}x{n}x{k} bias {with_bias} residual {with_residual} relu {relu} threads {threads}",
                                kernel.name()
                            );
                        }
                    }
                }
            }
        }
        let (a, b, short) = (values(6, 1), values(6, 2), values(3, 3));
        let mut c = vec![0.0; 4];
        let post = GemmPost {
            residual: Some(&short),
            relu: false,
        };
        let refused = sgemm_with_start(
            GemmKernel::active(),
            1,
            2,
            2,
            3,
            MatrixRef::row_major(&a, 3),
            MatrixRef::row_major(&b, 2),
            MatrixMut::row_major(&mut c, 2),
            GemmStart::Zero,
            post,
        );
        assert!(matches!(
            refused,
            Err(GemmError::BufferTooSmall { operand: 'R', .. })
        ));
    }

    /// `AccumulateScaled(alpha)` over one k block gives the bits of computing the product and
    /// then `C + alpha * product` (an SGD update written into the weight), for every kernel
    /// family, packed or not, at edge-tile shapes, on 1 and 2 threads.
    #[test]
    fn a_scaled_accumulation_over_one_k_block_matches_the_separate_update() {
        let shapes = [
            (1usize, 1usize, 1usize),
            (13, 40, 64),
            (29, 33, 256),
            (64, 100, 17),
        ];
        for kernel in GemmKernel::supported() {
            for &(m, n, k) in &shapes {
                assert!(kernel.one_k_block(k));
                let (a, b, weight) = (values(m * k, 1), values(k * n, 2), values(m * n, 3));
                let (a_matrix, b_matrix) =
                    (MatrixRef::row_major(&a, k), MatrixRef::row_major(&b, n));
                let alpha = -0.037f32;
                let mut product = vec![0.0; m * n];
                let c = MatrixMut::row_major(&mut product, n);
                sgemm_with_start(
                    kernel,
                    1,
                    m,
                    n,
                    k,
                    a_matrix,
                    b_matrix,
                    c,
                    GemmStart::Zero,
                    GemmPost::default(),
                )
                .unwrap();
                let expected: Vec<f32> = weight
                    .iter()
                    .zip(&product)
                    .map(|(w, g)| w + alpha * g)
                    .collect();
                let packed = PackedB::pack_for(kernel, b_matrix, k, n).unwrap();
                let start = GemmStart::AccumulateScaled(alpha);
                for threads in [1, 2] {
                    let mut plain = weight.clone();
                    let c = MatrixMut::row_major(&mut plain, n);
                    sgemm_with_start(
                        kernel,
                        threads,
                        m,
                        n,
                        k,
                        a_matrix,
                        b_matrix,
                        c,
                        start,
                        GemmPost::default(),
                    )
                    .unwrap();
                    let mut prepacked = weight.clone();
                    let c = MatrixMut::row_major(&mut prepacked, n);
                    sgemm_packed_b(
                        threads,
                        m,
                        n,
                        k,
                        a_matrix,
                        &packed,
                        c,
                        start,
                        GemmPost::default(),
                    )
                    .unwrap();
                    for result in [&plain, &prepacked] {
                        assert!(
                            result
                                .iter()
                                .zip(&expected)
                                .all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{} {m}x{n}x{k} threads {threads}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}
