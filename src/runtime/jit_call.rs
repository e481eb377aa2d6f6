//! Calling a JIT elementwise function over a whole tensor, split across threads when the work
//! is large enough to pay for waking a worker (a few microseconds). The generated code gives
//! every element the same result whatever range it is called on, so the split never changes
//! the output; parts start on 16-float (cache line) boundaries so threads do not share lines.

use super::program::JitCall;
use crate::kernels::gemm::resolve_threads;
use crate::kernels::parallel::run_parallel;

/// Work (elements times a per-element cost) below which one thread does it all.
const WORK_PER_PART: usize = 1 << 17;
/// Floats per cache line.
const PART_ALIGN: usize = 16;

/// Raw pointers handed to worker threads.
struct Buffers {
    inputs: *const *const f32,
    output: *mut f32,
}

// SAFETY: the pointers are only dereferenced by the generated code, on disjoint output ranges
// per thread and read-only inputs, while `call_elementwise` keeps the buffers alive.
unsafe impl Sync for Buffers {}

/// Computes `output[0..total]` with `call`'s kernel.
///
/// # Safety
/// `inputs` has one pointer per kernel input, each valid for the elements its layout reads over
/// `0..total`; `output` is valid for `total` writes and overlaps no input except one read as
/// a full-size (contiguous) tensor at the same address.
pub(super) unsafe fn call_elementwise(
    call: &JitCall,
    inputs: &[*const f32],
    output: *mut f32,
    total: usize,
    threads: usize,
) {
    let entry = call.kernel.entry();
    let work = total.saturating_mul(call.cost_per_element);
    let parts = resolve_threads(threads).min(work / WORK_PER_PART).max(1);
    if parts == 1 {
        // SAFETY: the caller's contract, over the whole range.
        unsafe { entry(inputs.as_ptr(), output, 0, total) };
        return;
    }
    let chunk = total.div_ceil(parts).div_ceil(PART_ALIGN) * PART_ALIGN;
    let buffers = Buffers {
        inputs: inputs.as_ptr(),
        output,
    };
    run_parallel(parts, &|part| {
        let start = (part * chunk).min(total);
        let end = ((part + 1) * chunk).min(total);
        let buffers = &buffers;
        if start < end {
            // SAFETY: parts write disjoint ranges of the output; inputs are only read (an
            // in-place input is read at exactly the elements this part writes).
            unsafe { entry(buffers.inputs, buffers.output, start, end) };
        }
    });
}
