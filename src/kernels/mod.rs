//! Compute kernels that carry most of a network's FLOPs, in plain Rust: single-precision GEMM
//! ([`gemm`]), 2-D convolution and transposed convolution on top of it ([`conv`]), and pooling
//! ([`pool`]). The JIT-compiled code calls them (see [`gemm::nnc_sgemm`]) for the inner tiles,
//! where Cranelift's 128-bit vectors would reach only half of this CPU's 256-bit FMA peak.
//!
//! Every kernel takes a thread count and gives bit-identical results for any count: work is
//! split into disjoint outputs, each computed in an order that does not depend on the split.
//! Threads come from a small persistent pool ([`parallel`]).

pub mod conv;
mod conv_direct;
mod conv_direct_channels;
mod conv_transpose;
mod conv_transpose_stride_one;
pub mod conv_weight_gradient;
mod conv_weight_gradient_direct;
pub mod gemm;
mod im2col;
pub mod parallel;
pub mod pool;
pub mod row_normalization;

/// Why a convolution or pooling call was refused. Nothing is written when a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("{what} must be at least 1")]
    ZeroParameter { what: &'static str },
    #[error("{channels} {which} channels are not divisible into {groups} groups")]
    GroupsDoNotDivide {
        which: &'static str,
        channels: usize,
        groups: usize,
    },
    #[error("the kernel spans {extent} along {axis} but the padded input has only {padded}")]
    KernelLargerThanInput {
        axis: &'static str,
        extent: usize,
        padded: usize,
    },
    #[error("padding {padding} along {axis} is more than half the kernel extent {extent}")]
    PaddingTooLarge {
        axis: &'static str,
        padding: usize,
        extent: usize,
    },
    #[error("a transposed convolution with an empty input or output along {axis}")]
    EmptyTransposedConvolution { axis: &'static str },
    #[error("{buffer} has {actual} elements but the shapes need {expected}")]
    BufferLength {
        buffer: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{what} is not supported")]
    Unsupported { what: &'static str },
    #[error("the tensor sizes overflow the address space")]
    SizeOverflow,
}

/// The product of sizes, or an error when it overflows.
pub(crate) fn checked_product(sizes: &[usize]) -> Result<usize, KernelError> {
    sizes
        .iter()
        .try_fold(1usize, |product, &size| product.checked_mul(size))
        .ok_or(KernelError::SizeOverflow)
}

/// Checks that a buffer has exactly the length the shapes need.
pub(crate) fn check_length(
    buffer: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::BufferLength {
            buffer,
            expected,
            actual,
        })
    }
}
