//! SGEMM throughput at the shapes the LSTM and transformer-layer benchmark workloads run (batch
//! 32 and 8), one thread, so that GEMM work can be aimed at the shapes that matter:
//! `cargo run --release --example workload_gemm_shapes`. Each figure is the fastest of many
//! repetitions (the machine is shared and noisy).

use std::time::{Duration, Instant};

use nnc::kernels::gemm::{sgemm_threaded, MatrixMut, MatrixRef};

fn main() {
    // (name, m, n, k, batches)
    let shapes = [
        ("lstm input projection", 1024, 512, 64, 1),
        ("lstm step (h x W_hh)", 32, 512, 128, 1),
        ("transformer qkv projection", 512, 384, 128, 1),
        ("transformer scores (per head)", 64, 64, 32, 32),
        ("transformer probs x V (per head)", 64, 32, 64, 32),
        ("transformer out projection", 512, 128, 128, 1),
        ("transformer feed-forward 1", 512, 512, 128, 1),
        ("transformer feed-forward 2", 512, 128, 512, 1),
    ];
    println!(
        "{:<34} {:>16} {:>10} {:>9}",
        "shape", "m x n x k", "us", "GFLOP/s"
    );
    for (name, m, n, k, batches) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let mut best = Duration::MAX;
        for _ in 0..300 {
            let started = Instant::now();
            for _ in 0..batches {
                sgemm_threaded(
                    1,
                    m,
                    n,
                    k,
                    MatrixRef::row_major(&a, k),
                    MatrixRef::row_major(&b, n),
                    MatrixMut::row_major(&mut c, n),
                    false,
                )
                .expect("fits");
            }
            best = best.min(started.elapsed());
        }
        let flops = 2.0 * (m * n * k * batches) as f64;
        println!(
            "{:<34} {:>16} {:>10.1} {:>9.1}",
            name,
            format!(
                "{m}x{n}x{k}{}",
                if batches > 1 {
                    format!(" x{batches}")
                } else {
                    String::new()
                }
            ),
            best.as_secs_f64() * 1e6,
            flops / best.as_secs_f64() / 1e9
        );
    }
}
