//! Wide-vector versions of the costly elementwise functions (exp, sigmoid, tanh), written in Rust
//! with AVX-512 or AVX2 intrinsics, which JIT kernels call over blocks of elements.
//!
//! Cranelift 0.135 emits 128-bit vectors only. Arithmetic streams are limited by memory anyway,
//! but a transcendental is some thirty vector instructions per vector, so at four lanes an LSTM
//! cell's gates (three sigmoids and two tanh per element) ran at 5.5 ns per element while
//! the CPU's 16-lane units sat idle. These functions compute the same algorithms as
//! `vector_math.rs`, operation for operation (the same Cephes polynomial for exp, the same
//! odd polynomial below 0.625 for tanh, `1 / (1 + e^-x)` for sigmoid, fma where it has fma), so
//! the accuracy table there holds for them too, only with 16 (AVX-512) or 8 (AVX2) lanes.
//!
//! Each entry point has the C signature [`LibraryFn`] and computes `dst[i] = f(src[i])` for
//! `i < len`; `src` and `dst` may be the same buffer. Every element goes through the same
//! instructions wherever it sits (the tail of a block is padded into a full vector), so a result
//! never depends on how a range was cut into blocks or split between threads. The functions
//! never panic, so they cannot unwind into the JIT code that calls them.

use super::elementwise::UnaryOp;

/// `dst[i] = f(src[i])` for `i < len`.
pub type LibraryFn = unsafe extern "C" fn(src: *const f32, dst: *mut f32, len: usize);

/// The wide version of `op` this CPU can run, or `None` (the JIT then computes it in f32x4).
/// `NNC_VECTOR_LIBRARY=off` in the environment turns the library off for the whole process, to
/// measure what it gains; `JitOptions::vector_library` does it for one JIT.
pub fn library_function(op: UnaryOp) -> Option<LibraryFn> {
    if !library_enabled() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let (avx512, avx2) = x86::detected();
        return match op {
            UnaryOp::Exp if avx512 => Some(x86::exp_avx512),
            UnaryOp::Sigmoid if avx512 => Some(x86::sigmoid_avx512),
            UnaryOp::Tanh if avx512 => Some(x86::tanh_avx512),
            UnaryOp::Exp if avx2 => Some(x86::exp_avx2),
            UnaryOp::Sigmoid if avx2 => Some(x86::sigmoid_avx2),
            UnaryOp::Tanh if avx2 => Some(x86::tanh_avx2),
            _ => None,
        };
    }
    #[allow(unreachable_code)]
    None
}

fn library_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED
        .get_or_init(|| std::env::var("NNC_VECTOR_LIBRARY").map_or(true, |value| value != "off"))
}

/// The operations the algorithms need, on one vector of lanes. Implementations exist only
/// inside functions compiled for their instruction set.
trait Lanes: Copy {
    fn splat(value: f32) -> Self;
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    fn div(self, other: Self) -> Self;
    /// `self * b + c`, rounded once.
    fn fma(self, b: Self, c: Self) -> Self;
    /// `if self < b { when_less } else { otherwise }` per lane (false for NaN).
    fn select_if_less(self, b: Self, when_less: Self, otherwise: Self) -> Self;
    fn abs(self) -> Self;
    /// A non-negative `self` with the sign bit of `sign`.
    fn with_sign_of(self, sign: Self) -> Self;
    /// `self * 2^n` for the integer `n` (also `shifted - magic` as a float, and in the low
    /// mantissa bits of `shifted`), rounded once, so that subnormal and huge results come out
    /// right.
    fn scale_by_rounded_exponent(self, n: Self, shifted: Self, magic: Self) -> Self;
}

/// e^x: `vector_math::exp`, step for step.
#[inline(always)]
fn exp<V: Lanes>(x: V) -> V {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    const ROUNDING_MAGIC: f32 = 12_582_912.0;
    const POLYNOMIAL: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ];
    let (low, high) = (V::splat(-104.0), V::splat(89.0));
    let clamped = x.select_if_less(low, low, x);
    let clamped = high.select_if_less(clamped, high, clamped);
    let magic = V::splat(ROUNDING_MAGIC);
    let shifted = clamped.fma(V::splat(std::f32::consts::LOG2_E), magic);
    let n = shifted.sub(magic);
    let reduced = n.fma(V::splat(-LN2_HIGH), clamped);
    let reduced = n.fma(V::splat(-LN2_LOW), reduced);
    let mut polynomial = V::splat(POLYNOMIAL[0]);
    for coefficient in &POLYNOMIAL[1..] {
        polynomial = polynomial.fma(reduced, V::splat(*coefficient));
    }
    let mantissa = polynomial.fma(reduced.mul(reduced), reduced);
    let mantissa = mantissa.add(V::splat(1.0));
    mantissa.scale_by_rounded_exponent(n, shifted, magic)
}

/// 1 / (1 + e^-x).
#[inline(always)]
fn sigmoid<V: Lanes>(x: V) -> V {
    let minus_x = V::splat(0.0).sub(x);
    V::splat(1.0).div(V::splat(1.0).add(exp(minus_x)))
}

/// tanh: an odd polynomial below 0.625, `1 - 2/(e^2|x| + 1)` with the sign of x above.
#[inline(always)]
fn tanh<V: Lanes>(x: V) -> V {
    const POLYNOMIAL: [f32; 5] = [
        -5.704_988_7e-3,
        2.063_909e-2,
        -5.373_971_6e-2,
        1.333_144_2e-1,
        -3.333_328e-1,
    ];
    let x_squared = x.mul(x);
    let mut polynomial = V::splat(POLYNOMIAL[0]);
    for coefficient in &POLYNOMIAL[1..] {
        polynomial = polynomial.fma(x_squared, V::splat(*coefficient));
    }
    let near_zero = polynomial.mul(x_squared).fma(x, x);
    let magnitude = x.abs();
    let exponential = exp(magnitude.add(magnitude));
    let one = V::splat(1.0);
    let fraction = V::splat(2.0).div(exponential.add(one));
    let far = one.sub(fraction).with_sign_of(x);
    magnitude.select_if_less(V::splat(0.625), near_zero, far)
}

/// One-vector AVX-512 exp for Rust kernels (see its doc in the `x86` module).
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::exp_avx512_vector;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{exp, sigmoid, tanh, Lanes};
    use std::arch::x86_64::*;

    /// Whether the CPU has AVX-512F, and AVX2 with FMA.
    pub(super) fn detected() -> (bool, bool) {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        (avx512, avx2)
    }

    /// Sixteen lanes. Only built inside `#[target_feature(enable = "avx512f")]` functions.
    #[derive(Clone, Copy)]
    struct Avx512(__m512);

    // SAFETY (every method): the type is only created by the AVX-512 entry points below, which
    // the library hands out only when the CPU has AVX-512F; `inline(always)` compiles each
    // method into those functions, with their target features.
    impl Lanes for Avx512 {
        #[inline(always)]
        fn splat(value: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(value) })
        }
        #[inline(always)]
        fn add(self, other: Self) -> Self {
            Avx512(unsafe { _mm512_add_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn sub(self, other: Self) -> Self {
            Avx512(unsafe { _mm512_sub_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn mul(self, other: Self) -> Self {
            Avx512(unsafe { _mm512_mul_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn div(self, other: Self) -> Self {
            Avx512(unsafe { _mm512_div_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn fma(self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn select_if_less(self, b: Self, when_less: Self, otherwise: Self) -> Self {
            unsafe {
                let less = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, b.0);
                Avx512(_mm512_mask_blend_ps(less, otherwise.0, when_less.0))
            }
        }
        #[inline(always)]
        fn abs(self) -> Self {
            Avx512(unsafe { _mm512_abs_ps(self.0) })
        }
        #[inline(always)]
        fn with_sign_of(self, sign: Self) -> Self {
            unsafe {
                let sign_bits =
                    _mm512_and_si512(_mm512_castps_si512(sign.0), _mm512_set1_epi32(i32::MIN));
                let bits = _mm512_or_si512(_mm512_castps_si512(self.0), sign_bits);
                Avx512(_mm512_castsi512_ps(bits))
            }
        }
        /// One `vscalefps`. It rounds `self * 2^n` once, as the two multiplications of the
        /// f32x4 code do (the first by `2^(n/2)` is exact), so the bits are the same.
        #[inline(always)]
        fn scale_by_rounded_exponent(self, n: Self, _shifted: Self, _magic: Self) -> Self {
            Avx512(unsafe { _mm512_scalef_ps(self.0, n.0) })
        }
    }

    /// Eight lanes. Only built inside `#[target_feature(enable = "avx2,fma")]` functions.
    #[derive(Clone, Copy)]
    struct Avx2(__m256);

    // SAFETY (every method): as for `Avx512`, with AVX2 and FMA.
    impl Lanes for Avx2 {
        #[inline(always)]
        fn splat(value: f32) -> Self {
            Avx2(unsafe { _mm256_set1_ps(value) })
        }
        #[inline(always)]
        fn add(self, other: Self) -> Self {
            Avx2(unsafe { _mm256_add_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn sub(self, other: Self) -> Self {
            Avx2(unsafe { _mm256_sub_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn mul(self, other: Self) -> Self {
            Avx2(unsafe { _mm256_mul_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn div(self, other: Self) -> Self {
            Avx2(unsafe { _mm256_div_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn fma(self, b: Self, c: Self) -> Self {
            Avx2(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn select_if_less(self, b: Self, when_less: Self, otherwise: Self) -> Self {
            unsafe {
                let less = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, b.0);
                Avx2(_mm256_blendv_ps(otherwise.0, when_less.0, less))
            }
        }
        #[inline(always)]
        fn abs(self) -> Self {
            Avx2(unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0) })
        }
        #[inline(always)]
        fn with_sign_of(self, sign: Self) -> Self {
            unsafe {
                let sign_bits = _mm256_and_ps(sign.0, _mm256_set1_ps(-0.0));
                Avx2(_mm256_or_ps(self.0, sign_bits))
            }
        }
        #[inline(always)]
        fn scale_by_rounded_exponent(self, _n: Self, shifted: Self, magic: Self) -> Self {
            unsafe {
                let n =
                    _mm256_sub_epi32(_mm256_castps_si256(shifted.0), _mm256_castps_si256(magic.0));
                let half = _mm256_srai_epi32::<1>(n);
                let rest = _mm256_sub_epi32(n, half);
                let bias = _mm256_set1_epi32(127);
                let first = _mm256_slli_epi32::<23>(_mm256_add_epi32(half, bias));
                let second = _mm256_slli_epi32::<23>(_mm256_add_epi32(rest, bias));
                let scaled = _mm256_mul_ps(self.0, _mm256_castsi256_ps(first));
                Avx2(_mm256_mul_ps(scaled, _mm256_castsi256_ps(second)))
            }
        }
    }

    /// Defines `extern "C" fn $name(src, dst, len)` applying `$function` with 16 AVX-512 lanes;
    /// the tail is a masked load and store, so it runs the same instructions as full vectors.
    macro_rules! avx512_entry {
        ($name:ident, $function:ident) => {
            /// # Safety
            /// The CPU has AVX-512F; `src` is readable and `dst` writable for `len` floats,
            /// and they are the same buffer or do not overlap.
            pub(super) unsafe extern "C" fn $name(src: *const f32, dst: *mut f32, len: usize) {
                #[target_feature(enable = "avx512f")]
                unsafe fn body(src: *const f32, dst: *mut f32, len: usize) {
                    let mut index = 0;
                    while index + 16 <= len {
                        let x = Avx512(unsafe { _mm512_loadu_ps(src.add(index)) });
                        unsafe { _mm512_storeu_ps(dst.add(index), $function(x).0) };
                        index += 16;
                    }
                    if index < len {
                        let mask: __mmask16 = (1u16 << (len - index)) - 1;
                        let x = Avx512(unsafe { _mm512_maskz_loadu_ps(mask, src.add(index)) });
                        unsafe { _mm512_mask_storeu_ps(dst.add(index), mask, $function(x).0) };
                    }
                }
                unsafe { body(src, dst, len) }
            }
        };
    }

    /// As `avx512_entry`, with 8 AVX2 lanes; the tail goes through a padded copy.
    macro_rules! avx2_entry {
        ($name:ident, $function:ident) => {
            /// # Safety
            /// The CPU has AVX2 and FMA; `src` is readable and `dst` writable for `len` floats,
            /// and they are the same buffer or do not overlap.
            pub(super) unsafe extern "C" fn $name(src: *const f32, dst: *mut f32, len: usize) {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn body(src: *const f32, dst: *mut f32, len: usize) {
                    let mut index = 0;
                    while index + 8 <= len {
                        let x = Avx2(unsafe { _mm256_loadu_ps(src.add(index)) });
                        unsafe { _mm256_storeu_ps(dst.add(index), $function(x).0) };
                        index += 8;
                    }
                    if index < len {
                        let count = len - index;
                        let mut padded = [0.0f32; 8];
                        unsafe { std::ptr::copy(src.add(index), padded.as_mut_ptr(), count) };
                        let x = Avx2(unsafe { _mm256_loadu_ps(padded.as_ptr()) });
                        unsafe { _mm256_storeu_ps(padded.as_mut_ptr(), $function(x).0) };
                        unsafe { std::ptr::copy(padded.as_ptr(), dst.add(index), count) };
                    }
                }
                unsafe { body(src, dst, len) }
            }
        };
    }

    /// e^x on one vector of sixteen lanes, for Rust kernels that fuse exp into a larger loop
    /// (the row softmax in `kernels::row_normalization`), so that they compute the same bits as
    /// the library's `exp_avx512` rather than a second exp algorithm.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp_avx512_vector(x: __m512) -> __m512 {
        exp(Avx512(x)).0
    }

    avx512_entry!(exp_avx512, exp);
    avx512_entry!(sigmoid_avx512, sigmoid);
    avx512_entry!(tanh_avx512, tanh);
    avx2_entry!(exp_avx2, exp);
    avx2_entry!(sigmoid_avx2, sigmoid);
    avx2_entry!(tanh_avx2, tanh);
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::x86;
    use super::LibraryFn;

    /// Both instruction sets run the same operations, so they agree bit for bit, tails included
    /// (kernels compare the library with the f32x4 CLIF in `tests/vector_library.rs`).
    #[test]
    fn avx2_and_avx512_give_the_same_bits() {
        let (avx512, avx2) = x86::detected();
        if !(avx512 && avx2) {
            return;
        }
        let pairs: [(LibraryFn, LibraryFn); 3] = [
            (x86::exp_avx512, x86::exp_avx2),
            (x86::sigmoid_avx512, x86::sigmoid_avx2),
            (x86::tanh_avx512, x86::tanh_avx2),
        ];
        let inputs: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 2001) as f32 / 20.0 - 50.0)
            .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-40])
            .collect();
        for (wide, narrow) in pairs {
            for length in [0, 1, 7, 8, 9, 15, 16, 17, 100, inputs.len()] {
                let (mut first, mut second) = (vec![0.0f32; length], vec![0.0f32; length]);
                // SAFETY: the CPU has both; every buffer holds `length` floats.
                unsafe {
                    wide(inputs.as_ptr(), first.as_mut_ptr(), length);
                    narrow(inputs.as_ptr(), second.as_mut_ptr(), length);
                }
                let same = first
                    .iter()
                    .zip(&second)
                    .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
                assert!(same, "length {length}");
            }
        }
    }
}
