//! GEMM + bias + activation epilogue: which way of calling the JIT epilogue is faster.
//!
//! `cargo run --release --example epilogue_bench [-- --rounds R]`
//!
//! - `rust call + jit`: the runtime calls the Rust GEMM, then the JIT elementwise function over
//!   the output in place (what `src/runtime` does);
//! - `one jit function`: a Cranelift function that calls `nnc_sgemm` through a registered
//!   symbol and then calls the same elementwise function (an indirect call; the loop itself is
//!   the same code either way);
//! - `all rust`: the Rust GEMM, then a plain Rust loop for bias + activation (the reference).
//!
//! Shapes: lenet5's fc1 at batch 64 (`[64, 400] x [400, 120]`, tanh), an MLP layer at batch 64
//! (`[64, 784] x [784, 256]`, relu), and a square 512 (relu). Medians over alternating rounds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cranelift_codegen::ir::{types, AbiParam, InstBuilder};
use cranelift_module::{Linkage, Module};
use nnc::codegen::{
    compile_elementwise, BinaryOp, ElementwiseExpr, ElementwiseKernel, ExternalSymbol, InputLayout,
    Jit, JitOptions, UnaryOp,
};
use nnc::kernels::gemm::{nnc_sgemm, sgemm, MatrixMut, MatrixRef};

/// `fn(a, b, c, epilogue inputs)` compiled by Cranelift.
type FusedFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, *const *const f32);

struct Case {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    activation: UnaryOp,
}

const CASES: &[Case] = &[
    Case {
        name: "lenet fc1 64x400x120 tanh",
        m: 64,
        k: 400,
        n: 120,
        activation: UnaryOp::Tanh,
    },
    Case {
        name: "mlp 64x784x256 relu",
        m: 64,
        k: 784,
        n: 256,
        activation: UnaryOp::Relu,
    },
    Case {
        name: "square 512 relu",
        m: 512,
        k: 512,
        n: 512,
        activation: UnaryOp::Relu,
    },
];

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let rounds: usize = arguments
        .iter()
        .position(|argument| argument == "--rounds")
        .and_then(|index| arguments.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(200);
    let symbol = ExternalSymbol {
        name: "nnc_sgemm",
        address: nnc_sgemm as *const u8,
    };
    // SAFETY: `nnc_sgemm` is an `extern "C"` function declared below with its true signature.
    let jit =
        unsafe { Jit::with_symbols(&JitOptions::default(), &[symbol]) }.expect("supported host");
    println!("GEMM + bias + activation, one thread, median of {rounds} rounds (us)");
    println!(
        "{:<28} {:>16} {:>17} {:>9} {:>12}",
        "case", "rust call + jit", "one jit function", "all rust", "jit/rust"
    );
    for case in CASES {
        bench(&jit, case, rounds);
    }
}

fn bench(jit: &Jit, case: &Case, rounds: usize) {
    let (m, k, n) = (case.m, case.k, case.n);
    let a: Vec<f32> = (0..m * k)
        .map(|index| ((index * 37) % 101) as f32 / 101.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|index| ((index * 53) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let bias: Vec<f32> = (0..n).map(|index| index as f32 / n as f32 - 0.5).collect();
    let mut expr = ElementwiseExpr::new();
    let product = expr.input(InputLayout::Contiguous);
    let bias_input = expr.input(InputLayout::PerLastDim { features: n });
    let sum = expr.binary(BinaryOp::Add, product, bias_input);
    expr.unary(case.activation, sum);
    let epilogue = compile_elementwise(jit, &expr).expect("compiles");
    let fused = compile_fused(jit, m, k, n, &epilogue);
    // SAFETY: compiled with exactly this signature; `fused` keeps the code alive.
    let fused_entry: FusedFn = unsafe { std::mem::transmute(fused.code_address()) };

    let mut c = vec![0.0f32; m * n];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let mut results = Vec::new();
    for round in 0..rounds {
        for (variant, samples) in times.iter_mut().enumerate() {
            let started = Instant::now();
            match variant {
                0 => {
                    sgemm(
                        m,
                        n,
                        k,
                        MatrixRef::row_major(&a, k),
                        MatrixRef::row_major(&b, n),
                        MatrixMut::row_major(&mut c, n),
                        false,
                    )
                    .expect("fits");
                    let inputs = [c.as_ptr(), bias.as_ptr()];
                    // SAFETY: `c` has m*n elements, read in place; the bias has n.
                    unsafe { (epilogue.entry())(inputs.as_ptr(), c.as_mut_ptr(), 0, m * n) };
                }
                1 => {
                    let inputs = [c.as_ptr(), bias.as_ptr()];
                    // SAFETY: the buffers have the sizes the function was compiled for.
                    unsafe { fused_entry(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), inputs.as_ptr()) };
                }
                _ => {
                    sgemm(
                        m,
                        n,
                        k,
                        MatrixRef::row_major(&a, k),
                        MatrixRef::row_major(&b, n),
                        MatrixMut::row_major(&mut c, n),
                        false,
                    )
                    .expect("fits");
                    for row in c.chunks_exact_mut(n) {
                        for (value, bias) in row.iter_mut().zip(&bias) {
                            let x = *value + bias;
                            *value = match case.activation {
                                UnaryOp::Tanh => x.tanh(),
                                _ => x.max(0.0),
                            };
                        }
                    }
                }
            }
            samples.push(started.elapsed());
            black_box(&mut c);
            if round == 0 {
                results.push(c.clone());
            }
        }
    }
    assert_eq!(
        results[0], results[1],
        "{}: the two JIT variants differ",
        case.name
    );
    let [split, single, rust] = times.map(|mut samples| median_us(&mut samples));
    println!(
        "{:<28} {:>16.1} {:>17.1} {:>9.1} {:>11.2}x",
        case.name,
        split,
        single,
        rust,
        split / rust
    );
}

/// `fused(a, b, c, inputs)`: `nnc_sgemm` into `c`, then the epilogue over `c` in place.
fn compile_fused(
    jit: &Jit,
    m: usize,
    k: usize,
    n: usize,
    epilogue: &ElementwiseKernel,
) -> nnc::codegen::CompiledFunction {
    let mut signature = jit.make_signature();
    for _ in 0..4 {
        signature.params.push(AbiParam::new(types::I64));
    }
    let mut sgemm_signature = jit.make_signature();
    for parameter in 0..14 {
        let ty = if parameter == 12 {
            types::I32
        } else {
            types::I64
        };
        sgemm_signature.params.push(AbiParam::new(ty));
    }
    let mut epilogue_signature = jit.make_signature();
    for _ in 0..4 {
        epilogue_signature.params.push(AbiParam::new(types::I64));
    }
    let epilogue_address = epilogue.entry() as usize as i64;
    jit.compile_function("gemm_epilogue", signature, |builder, module| {
        let callee = module
            .declare_function("nnc_sgemm", Linkage::Import, &sgemm_signature)
            .expect("declares");
        let callee = module.declare_func_in_func(callee, builder.func);
        let epilogue_reference = builder.import_signature(epilogue_signature.clone());
        let entry = builder.create_block();
        builder.append_block_params_for_function_params(entry);
        builder.switch_to_block(entry);
        let parameters = builder.block_params(entry).to_vec();
        let (a, b, c, inputs) = (parameters[0], parameters[1], parameters[2], parameters[3]);
        let constant = |builder: &mut cranelift_frontend::FunctionBuilder<'_>, value: usize| {
            builder.ins().iconst(types::I64, value as i64)
        };
        let (m_value, n_value, k_value) = (
            constant(builder, m),
            constant(builder, n),
            constant(builder, k),
        );
        let (one, k_stride, n_stride) = (
            constant(builder, 1),
            constant(builder, k),
            constant(builder, n),
        );
        let no_accumulate = builder.ins().iconst(types::I32, 0);
        let threads = constant(builder, 1);
        builder.ins().call(
            callee,
            &[
                m_value,
                n_value,
                k_value,
                a,
                k_stride,
                one,
                b,
                n_stride,
                one,
                c,
                n_stride,
                one,
                no_accumulate,
                threads,
            ],
        );
        let zero = constant(builder, 0);
        let total = constant(builder, m * n);
        let address = builder.ins().iconst(types::I64, epilogue_address);
        builder
            .ins()
            .call_indirect(epilogue_reference, address, &[inputs, c, zero, total]);
        builder.ins().return_(&[]);
        builder.seal_all_blocks();
        Ok(())
    })
    .expect("compiles")
}

fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}
