//! Which micro-kernel family GEMMs run on: the fastest one the CPU supports, decided once per
//! process, unless the `NNC_GEMM` environment variable names another (`avx512`, `avx2` or
//! `portable`), which benchmarks and tests use to compare the paths on one machine.

use std::sync::OnceLock;

/// The environment variable that forces a kernel family.
pub const GEMM_KERNEL_VARIABLE: &str = "NNC_GEMM";

/// A micro-kernel family. Within one family, results are bit-identical for any thread count;
/// families differ from each other only in float rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmKernel {
    /// 512-bit FMAs on a 14x32 tile (x86-64 with AVX-512F).
    Avx512,
    /// 256-bit FMAs on a 6x16 tile (x86-64 with AVX2 and FMA).
    Avx2Fma,
    /// Plain Rust loops that the compiler vectorizes for the build target.
    Portable,
}

impl GemmKernel {
    /// Every family, fastest first.
    pub const ALL: [GemmKernel; 3] = [
        GemmKernel::Avx512,
        GemmKernel::Avx2Fma,
        GemmKernel::Portable,
    ];

    /// The name that `NNC_GEMM` takes.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Avx512 => "avx512",
            GemmKernel::Avx2Fma => "avx2",
            GemmKernel::Portable => "portable",
        }
    }

    /// The family with this `NNC_GEMM` name (case-insensitive).
    pub fn from_name(name: &str) -> Option<GemmKernel> {
        GemmKernel::ALL
            .into_iter()
            .find(|kernel| kernel.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the family.
    pub fn is_supported(self) -> bool {
        match self {
            GemmKernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The families this CPU can run, fastest first (always ends with `Portable`).
    pub fn supported() -> Vec<GemmKernel> {
        GemmKernel::ALL
            .into_iter()
            .filter(|kernel| kernel.is_supported())
            .collect()
    }

    /// Whether a product over `k` is one k block for this family (every family blocks k by at
    /// most 256): each C element is then one sum, finished before it meets C.
    pub fn one_k_block(self, k: usize) -> bool {
        let depth = match self {
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx512 => {
                <super::driver::Avx512Tile as super::microkernel::MicroKernel>::KC_MAX
            }
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx2Fma => {
                <super::microkernel::Avx2FmaKernel as super::microkernel::MicroKernel>::KC_MAX
            }
            _ => <super::microkernel::PortableKernel as super::microkernel::MicroKernel>::KC_MAX,
        };
        k <= depth
    }

    /// The fastest family this CPU can run.
    pub fn fastest_supported() -> GemmKernel {
        GemmKernel::supported()[0]
    }

    /// The family that GEMMs use when the caller does not name one: `NNC_GEMM` when it names a
    /// family this CPU supports, otherwise the fastest supported (with a warning on stderr when
    /// `NNC_GEMM` was set to something else). Decided on first use, then fixed for the process.
    pub fn active() -> GemmKernel {
        static ACTIVE: OnceLock<GemmKernel> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let requested = std::env::var(GEMM_KERNEL_VARIABLE).ok();
            let (kernel, warning) = choose(requested.as_deref());
            if let Some(warning) = warning {
                eprintln!("warning: {warning}");
            }
            kernel
        })
    }
}

/// The family for a requested `NNC_GEMM` value, and a warning when the request cannot be met.
fn choose(requested: Option<&str>) -> (GemmKernel, Option<String>) {
    let fastest = GemmKernel::fastest_supported();
    let Some(requested) = requested.filter(|value| !value.trim().is_empty()) else {
        return (fastest, None);
    };
    match GemmKernel::from_name(requested) {
        Some(kernel) if kernel.is_supported() => (kernel, None),
        Some(kernel) => (
            fastest,
            Some(format!(
                "{GEMM_KERNEL_VARIABLE}={requested}: this CPU does not support the {} GEMM kernel; using {}",
                kernel.name(),
                fastest.name()
            )),
        ),
        None => (
            fastest,
            Some(format!(
                "{GEMM_KERNEL_VARIABLE}={requested} is not a GEMM kernel (expected avx512, avx2 or portable); using {}",
                fastest.name()
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_honoured_only_when_supported() {
        let fastest = GemmKernel::fastest_supported();
        assert_eq!(choose(None), (fastest, None));
        assert_eq!(choose(Some("")), (fastest, None));
        assert_eq!(choose(Some("Portable")), (GemmKernel::Portable, None));
        let (kernel, warning) = choose(Some("sse9"));
        assert_eq!(kernel, fastest);
        assert!(warning.unwrap().contains("not a GEMM kernel"));
        for kernel in GemmKernel::ALL {
            let (chosen, warning) = choose(Some(kernel.name()));
            assert_eq!(chosen == kernel, kernel.is_supported());
            assert_eq!(warning.is_none(), kernel.is_supported());
        }
    }
}
