//! The compute kernels (`nnc::kernels`) against independent references: plain f64 loops written
//! here from the definitions (GEMM as a triple loop, convolutions and pooling as direct window
//! sums with PyTorch's size rules), at many seeded random shapes. An f32 result passes when its
//! error is at most 1e-4 relative to the sum of the magnitudes of the terms it adds up (the plain
//! relative error when nothing cancels). Multi-threaded results must equal single-threaded ones
//! bit for bit. The GEMM tests run on every micro-kernel family this CPU supports (AVX-512,
//! AVX2+FMA, portable); the convolutions use the process's family, which `NNC_GEMM` can force.

use nnc::kernels::conv::{conv2d, conv_transpose2d, Conv2dGeometry, ConvTranspose2dGeometry};
use nnc::kernels::gemm::{
    nnc_sgemm, sgemm, sgemm_threaded, sgemm_with_kernel, GemmError, GemmKernel, MatrixMut,
    MatrixRef,
};
use nnc::kernels::pool::{avg_pool2d, max_pool2d, Pool2dGeometry};
use nnc::kernels::KernelError;

const TOLERANCE: f64 = 1e-4;

/// SplitMix64: a small seeded generator, so every run tests the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
    fn range(&mut self, low: usize, high_inclusive: usize) -> usize {
        low + self.below(high_inclusive - low + 1)
    }
    fn values(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect()
    }
}

/// Asserts `got` matches `(value, magnitude_sum)` pairs from a reference.
fn assert_close(what: &str, got: &[f32], reference: &[(f64, f64)]) {
    assert_eq!(got.len(), reference.len(), "{what}: length");
    for (index, (&got, &(want, scale))) in got.iter().zip(reference).enumerate() {
        let error = (got as f64 - want).abs();
        assert!(
            error <= TOLERANCE * scale.max(f64::MIN_POSITIVE),
            "{what}: element {index} is {got}, want {want} (scale {scale})"
        );
    }
}

// ---------------------------------------------------------------- GEMM

/// A matrix stored row-major or column-major, with a random padding of its leading stride.
struct Stored {
    data: Vec<f32>,
    row_stride: usize,
    col_stride: usize,
}

impl Stored {
    fn new(rng: &mut Rng, rows: usize, cols: usize, transposed: bool) -> Stored {
        let padding = rng.below(3);
        let (row_stride, col_stride) = if transposed {
            (1, rows + padding)
        } else {
            (cols + padding, 1)
        };
        let len = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * row_stride + (cols - 1) * col_stride + 1
        };
        Stored {
            data: rng.values(len),
            row_stride,
            col_stride,
        }
    }
    fn at(&self, row: usize, col: usize) -> usize {
        row * self.row_stride + col * self.col_stride
    }
    fn view(&self) -> MatrixRef<'_> {
        MatrixRef {
            data: &self.data,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
    a: Stored,
    b: Stored,
    c: Stored,
    accumulate: bool,
}

impl GemmCase {
    fn new(
        rng: &mut Rng,
        (m, n, k): (usize, usize, usize),
        layouts: usize,
        accumulate: bool,
    ) -> GemmCase {
        let a = Stored::new(rng, m, k, layouts & 1 != 0);
        let b = Stored::new(rng, k, n, layouts & 2 != 0);
        let mut c = Stored::new(rng, m, n, layouts & 4 != 0);
        if !accumulate {
            // C must not be read when overwriting.
            c.data.fill(f32::NAN);
        }
        GemmCase {
            m,
            n,
            k,
            a,
            b,
            c,
            accumulate,
        }
    }

    /// C after the GEMM on the process's kernel family.
    fn run(&self, threads: usize) -> Vec<f32> {
        self.run_on(GemmKernel::active(), threads)
    }

    fn run_on(&self, kernel: GemmKernel, threads: usize) -> Vec<f32> {
        let mut c = self.c.data.clone();
        let output = MatrixMut {
            data: &mut c,
            row_stride: self.c.row_stride,
            col_stride: self.c.col_stride,
        };
        sgemm_with_kernel(
            kernel,
            threads,
            self.m,
            self.n,
            self.k,
            self.a.view(),
            self.b.view(),
            output,
            self.accumulate,
        )
        .unwrap();
        c
    }

    /// The f64 triple loop, element by element of C's storage.
    fn reference(&self) -> Vec<(f64, f64)> {
        let mut reference: Vec<(f64, f64)> = self
            .c
            .data
            .iter()
            .map(|&value| (value as f64, value.abs() as f64))
            .collect();
        for i in 0..self.m {
            for j in 0..self.n {
                let (mut sum, mut scale) = if self.accumulate {
                    reference[self.c.at(i, j)]
                } else {
                    (0.0, 0.0)
                };
                for p in 0..self.k {
                    let product =
                        self.a.data[self.a.at(i, p)] as f64 * self.b.data[self.b.at(p, j)] as f64;
                    sum += product;
                    scale += product.abs();
                }
                reference[self.c.at(i, j)] = (sum, scale);
            }
        }
        reference
    }
}

fn gemm_shapes(rng: &mut Rng) -> Vec<(usize, usize, usize)> {
    let mut shapes = vec![
        (1, 1, 1),
        (1, 1, 9),
        (7, 1, 1),
        (1, 9, 1),
        (6, 16, 1),
        (6, 16, 4),
        (5, 17, 3),
        (7, 15, 2),
        (12, 32, 256),
        (13, 31, 257),
        (64, 64, 64),
        (3, 100, 513),
        (37, 21, 1100),
        (150, 20, 50),
        (2, 300, 9),
        (145, 33, 7),
        (0, 5, 5),
        (5, 0, 5),
        (4, 5, 0),
        (97, 130, 70),
        // AVX-512 tiles are 14x32: full tiles, one more row or column, N=10 (a classifier), and
        // several row panels with a short last one. Parts with at most 28 rows read B in place,
        // parts with at most 32 columns read A in place (both, in the fourth), over k blocks.
        (14, 32, 5),
        (15, 33, 17),
        (13, 10, 256),
        (20, 30, 600),
        (64, 10, 256),
        (100, 32, 600),
        (28, 64, 300),
        (43, 48, 513),
    ];
    shapes.extend((0..25).map(|_| (rng.range(1, 80), rng.range(1, 80), rng.range(1, 300))));
    shapes
}

#[test]
fn gemm_matches_a_triple_loop_for_every_layout_and_kernel() {
    let mut rng = Rng(1);
    for shape in gemm_shapes(&mut rng) {
        for layouts in 0..8 {
            for accumulate in [false, true] {
                let case = GemmCase::new(&mut rng, shape, layouts, accumulate);
                for kernel in GemmKernel::supported() {
                    let what = format!(
                        "gemm {shape:?} layouts {layouts:03b} accumulate {accumulate} kernel {}",
                        kernel.name()
                    );
                    check_against_reference(&case, &what, &case.run_on(kernel, 1));
                }
            }
        }
    }
}

/// Checks a GEMM result against the f64 reference, and that padding outside C kept its value.
fn check_against_reference(case: &GemmCase, what: &str, got: &[f32]) {
    let reference = case.reference();
    let touched = touched_mask(case);
    for (index, &inside) in touched.iter().enumerate() {
        if !inside {
            assert_eq!(
                got[index].to_bits(),
                case.c.data[index].to_bits(),
                "{what}: padding {index} changed"
            );
        }
    }
    let (inside_got, inside_reference): (Vec<f32>, Vec<(f64, f64)>) = touched
        .iter()
        .zip(got.iter().zip(&reference))
        .filter(|(inside, _)| **inside)
        .map(|(_, (g, r))| (*g, *r))
        .unzip();
    assert_close(what, &inside_got, &inside_reference);
}

fn touched_mask(case: &GemmCase) -> Vec<bool> {
    let mut mask = vec![false; case.c.data.len()];
    for i in 0..case.m {
        for j in 0..case.n {
            mask[case.c.at(i, j)] = true;
        }
    }
    mask
}

#[test]
fn gemm_results_are_bit_identical_for_any_thread_count() {
    let mut rng = Rng(2);
    let shapes = [
        (300, 40, 300),
        (40, 300, 300),
        (97, 131, 259),
        (512, 17, 200),
        (7, 900, 300),
        (200, 200, 600),
        (32, 512, 128),
    ];
    for (index, &shape) in shapes.iter().enumerate() {
        let case = GemmCase::new(&mut rng, shape, index % 8, index % 2 == 0);
        for kernel in GemmKernel::supported() {
            let one_thread = case.run_on(kernel, 1);
            for threads in [2, 3, 4, 0] {
                let many = case.run_on(kernel, threads);
                let identical = one_thread
                    .iter()
                    .zip(&many)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    identical,
                    "gemm {shape:?} kernel {}: {threads} threads differ from 1",
                    kernel.name()
                );
            }
        }
    }
}

#[test]
fn gemm_safe_api_uses_the_active_kernel_and_refuses_unsupported_ones() {
    let mut rng = Rng(4);
    let case = GemmCase::new(&mut rng, (29, 45, 70), 0b010, false);
    let mut c = case.c.data.clone();
    let output = MatrixMut {
        data: &mut c,
        row_stride: case.c.row_stride,
        col_stride: case.c.col_stride,
    };
    sgemm_threaded(
        2,
        case.m,
        case.n,
        case.k,
        case.a.view(),
        case.b.view(),
        output,
        false,
    )
    .unwrap();
    let active = case.run_on(GemmKernel::active(), 2);
    assert!(c
        .iter()
        .zip(&active)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(GemmKernel::supported().contains(&GemmKernel::Portable));
    for kernel in GemmKernel::ALL {
        if kernel.is_supported() {
            continue;
        }
        let mut c = vec![0.0; 4];
        let refused = sgemm_with_kernel(
            kernel,
            1,
            2,
            2,
            1,
            MatrixRef::row_major(&[1.0, 2.0], 1),
            MatrixRef::row_major(&[1.0, 2.0], 2),
            MatrixMut::row_major(&mut c, 2),
            false,
        );
        assert_eq!(
            refused,
            Err(GemmError::UnsupportedKernel {
                kernel: kernel.name()
            })
        );
    }
}

#[test]
fn gemm_c_abi_entry_point_equals_the_safe_api() {
    let mut rng = Rng(3);
    let case = GemmCase::new(&mut rng, (33, 47, 129), 0b101, true);
    let expected = case.run(1);
    let mut c = case.c.data.clone();
    let (a, b) = (&case.a, &case.b);
    // SAFETY: the buffers hold every addressed element (built by `Stored::new`).
    unsafe {
        nnc_sgemm(
            case.m,
            case.n,
            case.k,
            a.data.as_ptr(),
            a.row_stride,
            a.col_stride,
            b.data.as_ptr(),
            b.row_stride,
            b.col_stride,
            c.as_mut_ptr(),
            case.c.row_stride,
            case.c.col_stride,
            1,
            2,
        )
    };
    assert!(c
        .iter()
        .zip(&expected)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn gemm_refuses_short_buffers_and_overlapping_outputs() {
    let a = vec![1.0; 6];
    let mut c = vec![0.0; 4];
    let short = sgemm(
        2,
        2,
        3,
        MatrixRef::row_major(&a, 3),
        MatrixRef::row_major(&a[..5], 2),
        MatrixMut::row_major(&mut c, 2),
        false,
    );
    assert!(
        matches!(
            short,
            Err(GemmError::BufferTooSmall {
                operand: 'B',
                needed: 6,
                available: 5,
                ..
            })
        ),
        "{short:?}"
    );
    let overlapping = sgemm(
        2,
        2,
        3,
        MatrixRef::row_major(&a, 3),
        MatrixRef::row_major(&a, 2),
        MatrixMut::row_major(&mut c, 1),
        false,
    );
    assert!(
        matches!(overlapping, Err(GemmError::OverlappingOutput { .. })),
        "{overlapping:?}"
    );
}

// ---------------------------------------------------------------- convolutions

/// PyTorch's output size of a convolution along one axis.
fn conv_out(input: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> usize {
    (input + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1
}

/// conv2d by its definition: every output is the bias plus the window's products.
fn conv2d_reference(
    g: &Conv2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<(f64, f64)> {
    let [oh, ow] = [0, 1].map(|axis| {
        conv_out(
            g.in_size[axis],
            g.kernel[axis],
            g.stride[axis],
            g.padding[axis],
            g.dilation[axis],
        )
    });
    let (group_in, group_out) = (g.in_channels / g.groups, g.out_channels / g.groups);
    let [h, w] = g.in_size;
    let mut output = Vec::new();
    for image in 0..g.batch {
        for out_channel in 0..g.out_channels {
            let group = out_channel / group_out;
            for y in 0..oh {
                for x in 0..ow {
                    let bias_value = bias.map_or(0.0, |bias| bias[out_channel] as f64);
                    let (mut sum, mut scale) = (bias_value, bias_value.abs());
                    for c in 0..group_in {
                        for ky in 0..g.kernel[0] {
                            for kx in 0..g.kernel[1] {
                                let iy = (y * g.stride[0] + ky * g.dilation[0]) as isize
                                    - g.padding[0] as isize;
                                let ix = (x * g.stride[1] + kx * g.dilation[1]) as isize
                                    - g.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let in_channel = group * group_in + c;
                                let value =
                                    input[((image * g.in_channels + in_channel) * h + iy as usize)
                                        * w
                                        + ix as usize] as f64;
                                let weight_value =
                                    weight[((out_channel * group_in + c) * g.kernel[0] + ky)
                                        * g.kernel[1]
                                        + kx] as f64;
                                sum += value * weight_value;
                                scale += (value * weight_value).abs();
                            }
                        }
                    }
                    output.push((sum, scale));
                }
            }
        }
    }
    output
}

/// conv_transpose2d by its definition: every input element scatters its products with the kernel
/// into the output window it spreads over.
fn conv_transpose2d_reference(
    g: &ConvTranspose2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<(f64, f64)> {
    let [oh, ow] = g.out_size;
    let (group_in, group_out) = (g.in_channels / g.groups, g.out_channels / g.groups);
    let [h, w] = g.in_size;
    let mut output = vec![(0.0, 0.0); g.batch * g.out_channels * oh * ow];
    for image in 0..g.batch {
        for out_channel in 0..g.out_channels {
            let bias_value = bias.map_or(0.0, |bias| bias[out_channel] as f64);
            for position in 0..oh * ow {
                output[(image * g.out_channels + out_channel) * oh * ow + position] =
                    (bias_value, bias_value.abs());
            }
        }
        for in_channel in 0..g.in_channels {
            let group = in_channel / group_in;
            for (y, x) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
                let value = input[((image * g.in_channels + in_channel) * h + y) * w + x] as f64;
                for o in 0..group_out {
                    for (ky, kx) in
                        (0..g.kernel[0]).flat_map(|ky| (0..g.kernel[1]).map(move |kx| (ky, kx)))
                    {
                        let oy =
                            (y * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                        let ox =
                            (x * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                        if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                            continue;
                        }
                        let weight_value = weight
                            [((in_channel * group_out + o) * g.kernel[0] + ky) * g.kernel[1] + kx]
                            as f64;
                        let out_channel = group * group_out + o;
                        let target = &mut output[((image * g.out_channels + out_channel) * oh
                            + oy as usize)
                            * ow
                            + ox as usize];
                        target.0 += value * weight_value;
                        target.1 += (value * weight_value).abs();
                    }
                }
            }
        }
    }
    output
}

/// A random convolution setting (sizes other than the image's); `kind` cycles through plain,
/// grouped, depthwise and pointwise convolutions.
struct ConvSetting {
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
}

fn random_conv_setting(rng: &mut Rng, kind: usize) -> ConvSetting {
    let groups = match kind % 4 {
        0 | 3 => 1,
        _ => rng.range(2, 4),
    };
    let mut in_channels = groups * rng.range(1, 5);
    let mut out_channels = groups * rng.range(1, 5);
    if kind % 4 == 2 {
        (in_channels, out_channels) = (groups, groups);
    }
    let batch = rng.range(1, 3);
    let mut kernel = [rng.range(1, 4), rng.range(1, 4)];
    let mut stride = [rng.range(1, 3), rng.range(1, 3)];
    let mut dilation = [rng.range(1, 2), rng.range(1, 3)];
    let mut padding = [rng.below(3), rng.below(3)];
    if kind % 4 == 3 {
        (kernel, stride, dilation, padding) = ([1, 1], [1, 1], [1, 1], [0, 0]);
    }
    ConvSetting {
        batch,
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
        dilation,
        groups,
    }
}

#[test]
fn conv2d_matches_direct_loops_and_is_thread_count_independent() {
    let mut rng = Rng(4);
    for case in 0..120 {
        let ConvSetting {
            batch,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            groups,
        } = random_conv_setting(&mut rng, case);
        let in_size =
            [0, 1].map(|axis| (dilation[axis] * (kernel[axis] - 1) + 1).max(rng.range(1, 13)));
        let g = Conv2dGeometry {
            batch,
            in_channels,
            out_channels,
            in_size,
            kernel,
            stride,
            padding,
            dilation,
            groups,
        };
        let input = rng.values(batch * in_channels * in_size[0] * in_size[1]);
        let weight = rng.values(out_channels * in_channels / groups * kernel[0] * kernel[1]);
        let bias = (case % 3 != 0).then(|| rng.values(out_channels));
        let reference = conv2d_reference(&g, &input, &weight, bias.as_deref());
        let mut output = vec![f32::NAN; reference.len()];
        conv2d(&g, &input, &weight, bias.as_deref(), &mut output, 1).unwrap();
        assert_close(&format!("conv2d {g:?}"), &output, &reference);
        let mut two_threads = vec![f32::NAN; reference.len()];
        conv2d(&g, &input, &weight, bias.as_deref(), &mut two_threads, 2).unwrap();
        assert!(
            output
                .iter()
                .zip(&two_threads)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "conv2d {g:?}: 2 threads differ"
        );
    }
}

#[test]
fn conv2d_on_larger_images_matches_direct_loops() {
    // Sizes that make several image chunks, k blocks and tiles that cross image boundaries.
    let settings = [
        (5, 16, 24, [15, 15], [3, 3], [1, 1], [1, 1]),
        (3, 64, 8, [7, 9], [3, 3], [2, 2], [1, 1]),
        (40, 3, 6, [6, 5], [2, 2], [0, 0], [1, 1]),
    ];
    let mut rng = Rng(5);
    for (batch, in_channels, out_channels, in_size, kernel, padding, stride) in settings {
        let g = Conv2dGeometry {
            batch,
            in_channels,
            out_channels,
            in_size,
            kernel,
            stride,
            padding,
            dilation: [1, 1],
            groups: 1,
        };
        let input = rng.values(batch * in_channels * in_size[0] * in_size[1]);
        let weight = rng.values(out_channels * in_channels * kernel[0] * kernel[1]);
        let reference = conv2d_reference(&g, &input, &weight, None);
        let mut output = vec![f32::NAN; reference.len()];
        conv2d(&g, &input, &weight, None, &mut output, 2).unwrap();
        assert_close(&format!("conv2d {g:?}"), &output, &reference);
    }
}

#[test]
fn conv_transpose2d_matches_direct_loops_and_is_thread_count_independent() {
    let mut rng = Rng(6);
    for case in 0..100 {
        let ConvSetting {
            batch,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            groups,
        } = random_conv_setting(&mut rng, case);
        let in_size = [rng.range(1, 7), rng.range(1, 7)];
        // Mostly PyTorch's sizes (any output padding below the stride or dilation); every
        // fourth case any size from a crop to a few extra rows, as gradients need.
        let Some(out_size) = option_pair([0, 1].map(|axis| {
            let output_padding = rng.below(stride[axis].max(dilation[axis]));
            let pytorch = ConvTranspose2dGeometry::pytorch_out_size(
                in_size[axis],
                kernel[axis],
                stride[axis],
                padding[axis],
                dilation[axis],
                output_padding,
            );
            if case % 4 == 3 {
                pytorch.map(|size| rng.range(1, size + 3))
            } else {
                pytorch
            }
        })) else {
            continue; // The padding ate the whole output, which PyTorch refuses too.
        };
        let g = ConvTranspose2dGeometry {
            batch,
            in_channels,
            out_channels,
            in_size,
            kernel,
            stride,
            padding,
            out_size,
            dilation,
            groups,
        };
        let input = rng.values(batch * in_channels * in_size[0] * in_size[1]);
        let weight = rng.values(in_channels * out_channels / groups * kernel[0] * kernel[1]);
        let bias = (case % 3 != 0).then(|| rng.values(out_channels));
        let reference = conv_transpose2d_reference(&g, &input, &weight, bias.as_deref());
        assert_eq!(
            reference.len(),
            batch * out_channels * out_size[0] * out_size[1]
        );
        let mut output = vec![f32::NAN; reference.len()];
        conv_transpose2d(&g, &input, &weight, bias.as_deref(), &mut output, 1).unwrap();
        assert_close(&format!("conv_transpose2d {g:?}"), &output, &reference);
        let mut two_threads = vec![f32::NAN; reference.len()];
        conv_transpose2d(&g, &input, &weight, bias.as_deref(), &mut two_threads, 2).unwrap();
        assert!(
            output
                .iter()
                .zip(&two_threads)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "conv_transpose2d {g:?}: 2 threads differ"
        );
    }
}

#[test]
fn conv2d_refuses_inconsistent_shapes() {
    let g = Conv2dGeometry {
        batch: 1,
        in_channels: 4,
        out_channels: 6,
        in_size: [5, 5],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 1,
    };
    let (input, weight, mut output) = (vec![0.0; 100], vec![0.0; 216], vec![0.0; 54]);
    assert_eq!(conv2d(&g, &input, &weight, None, &mut output, 1), Ok(()));
    assert!(matches!(
        conv2d(&g, &input[1..], &weight, None, &mut output, 1),
        Err(KernelError::BufferLength {
            buffer: "input",
            ..
        })
    ));
    let grouped = Conv2dGeometry { groups: 4, ..g };
    assert!(matches!(
        grouped.out_size(),
        Err(KernelError::GroupsDoNotDivide {
            channels: 6,
            groups: 4,
            ..
        })
    ));
    let too_big = Conv2dGeometry {
        kernel: [7, 3],
        ..g
    };
    assert!(matches!(
        too_big.out_size(),
        Err(KernelError::KernelLargerThanInput { axis: "height", .. })
    ));
    let no_stride = Conv2dGeometry {
        stride: [0, 1],
        ..g
    };
    assert!(matches!(
        no_stride.out_size(),
        Err(KernelError::ZeroParameter { .. })
    ));
}

// ---------------------------------------------------------------- pooling

/// PyTorch's pooling output size along one axis.
fn pool_out(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> usize {
    let numerator =
        input + 2 * padding - dilation * (kernel - 1) - 1 + if ceil_mode { stride - 1 } else { 0 };
    let out = numerator / stride + 1;
    if ceil_mode && (out - 1) * stride >= input + padding {
        out - 1
    } else {
        out
    }
}

enum PoolKind {
    Max,
    Average {
        count_include_pad: bool,
        divisor_override: Option<usize>,
    },
}

fn pool_reference(g: &Pool2dGeometry, kind: &PoolKind, input: &[f32]) -> Vec<(f64, f64)> {
    let [oh, ow] = [0, 1].map(|axis| {
        pool_out(
            g.in_size[axis],
            g.kernel[axis],
            g.stride[axis],
            g.padding[axis],
            g.dilation[axis],
            g.ceil_mode,
        )
    });
    let [h, w] = g.in_size;
    let mut output = Vec::new();
    for plane in 0..g.batch * g.channels {
        for (y, x) in (0..oh).flat_map(|y| (0..ow).map(move |x| (y, x))) {
            let start = [
                (y * g.stride[0]) as isize - g.padding[0] as isize,
                (x * g.stride[1]) as isize - g.padding[1] as isize,
            ];
            let mut values = Vec::new();
            for (ky, kx) in (0..g.kernel[0]).flat_map(|ky| (0..g.kernel[1]).map(move |kx| (ky, kx)))
            {
                let (iy, ix) = (
                    start[0] + (ky * g.dilation[0]) as isize,
                    start[1] + (kx * g.dilation[1]) as isize,
                );
                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                    values.push(input[(plane * h + iy as usize) * w + ix as usize] as f64);
                }
            }
            output.push(match kind {
                PoolKind::Max if values.iter().any(|v| v.is_nan()) => (f64::NAN, 0.0),
                PoolKind::Max => (
                    values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    0.0,
                ),
                PoolKind::Average { .. } if values.is_empty() => (0.0, 0.0),
                PoolKind::Average {
                    count_include_pad,
                    divisor_override,
                } => {
                    // The window clipped to the padded input counts when padding is included.
                    let padded_count: usize = [0, 1]
                        .iter()
                        .map(|&axis| {
                            let end = (start[axis] + g.kernel[axis] as isize)
                                .min((g.in_size[axis] + g.padding[axis]) as isize);
                            (end - start[axis]) as usize
                        })
                        .product();
                    let divisor = divisor_override.unwrap_or(if *count_include_pad {
                        padded_count
                    } else {
                        values.len()
                    }) as f64;
                    (
                        values.iter().sum::<f64>() / divisor,
                        values.iter().map(|v| v.abs()).sum::<f64>() / divisor,
                    )
                }
            });
        }
    }
    output
}

#[test]
fn pooling_matches_direct_loops() {
    let mut rng = Rng(7);
    for case in 0..300 {
        let kernel = [rng.range(1, 4), rng.range(1, 4)];
        let stride = [rng.range(1, 3), rng.range(1, 3)];
        let average = case % 2 == 1;
        let dilation = if average {
            [1, 1]
        } else {
            [rng.range(1, 2), rng.range(1, 2)]
        };
        let extents = [0, 1].map(|axis| dilation[axis] * (kernel[axis] - 1) + 1);
        let padding = extents.map(|extent| rng.below(extent / 2 + 1));
        let in_size =
            [0, 1].map(|axis| (dilation[axis] * (kernel[axis] - 1) + 1).max(rng.range(1, 11)));
        let g = Pool2dGeometry {
            batch: rng.range(1, 2),
            channels: rng.range(1, 3),
            in_size,
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode: rng.below(2) == 1,
        };
        let mut input = rng.values(g.batch * g.channels * in_size[0] * in_size[1]);
        if case % 10 == 0 {
            let poisoned = rng.below(input.len());
            input[poisoned] = f32::NAN;
        }
        let kind = if average {
            PoolKind::Average {
                count_include_pad: rng.below(2) == 1,
                divisor_override: (case % 7 == 1).then(|| rng.range(1, 5)),
            }
        } else {
            PoolKind::Max
        };
        let reference = pool_reference(&g, &kind, &input);
        for threads in [1, 2] {
            let mut output = vec![123.0; reference.len()];
            match kind {
                PoolKind::Max => max_pool2d(&g, &input, &mut output, threads).unwrap(),
                PoolKind::Average {
                    count_include_pad,
                    divisor_override,
                } => avg_pool2d(
                    &g,
                    count_include_pad,
                    divisor_override,
                    &input,
                    &mut output,
                    threads,
                )
                .unwrap(),
            }
            for (index, (&got, &(want, scale))) in output.iter().zip(&reference).enumerate() {
                let close = (got.is_nan() && want.is_nan())
                    || (got as f64 - want).abs() <= TOLERANCE * scale
                    || got as f64 == want;
                assert!(close, "pool {g:?}: element {index} is {got}, want {want}");
            }
        }
    }
}

#[test]
fn pooling_refuses_padding_beyond_half_the_kernel() {
    let g = Pool2dGeometry {
        batch: 1,
        channels: 1,
        in_size: [4, 4],
        kernel: [2, 2],
        stride: [2, 2],
        padding: [2, 0],
        dilation: [1, 1],
        ceil_mode: false,
    };
    assert!(matches!(
        g.out_size(),
        Err(KernelError::PaddingTooLarge { axis: "height", .. })
    ));
}

/// Both sizes, when both exist.
fn option_pair(sizes: [Option<usize>; 2]) -> Option<[usize; 2]> {
    Some([sizes[0]?, sizes[1]?])
}

/// Stride-1 transposed convolutions run as convolutions reading a flipped weight through offset
/// tables; channel counts above the GEMM's block depths exercise several k and row blocks.
#[test]
fn wide_stride_one_conv_transpose2d_matches_direct_loops() {
    let mut rng = Rng(9);
    for (in_channels, out_channels, groups, size) in
        [(300, 40, 1, 6), (64, 600, 2, 4), (520, 520, 1, 3)]
    {
        let g = ConvTranspose2dGeometry {
            batch: 3,
            in_channels,
            out_channels,
            in_size: [size, size + 1],
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            out_size: [size, size + 1],
            dilation: [1, 1],
            groups,
        };
        let input = rng.values(3 * in_channels * size * (size + 1));
        let weight = rng.values(in_channels * out_channels / groups * 9);
        let bias = Some(rng.values(out_channels));
        let reference = conv_transpose2d_reference(&g, &input, &weight, bias.as_deref());
        let mut output = vec![f32::NAN; reference.len()];
        conv_transpose2d(&g, &input, &weight, bias.as_deref(), &mut output, 2).unwrap();
        assert_close(&format!("conv_transpose2d {g:?}"), &output, &reference);
    }
}

/// A 1x1 stride-1 transposed convolution is a pointwise convolution reading its flipped weight
/// through offset tables and its input as a grouped matrix.
#[test]
fn pointwise_conv_transpose2d_matches_direct_loops() {
    let mut rng = Rng(10);
    for (in_channels, out_channels, groups) in [(300, 40, 1), (24, 36, 3)] {
        let g = ConvTranspose2dGeometry {
            batch: 3,
            in_channels,
            out_channels,
            in_size: [5, 6],
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            out_size: [5, 6],
            dilation: [1, 1],
            groups,
        };
        let input = rng.values(3 * in_channels * 30);
        let weight = rng.values(in_channels * out_channels / groups);
        let reference = conv_transpose2d_reference(&g, &input, &weight, None);
        let mut output = vec![f32::NAN; reference.len()];
        conv_transpose2d(&g, &input, &weight, None, &mut output, 1).unwrap();
        assert_close(&format!("conv_transpose2d {g:?}"), &output, &reference);
    }
}

/// Convolutions with at most 8 output channels, stride 1 and rows of 17 to 32 pixels run as
/// direct loops (`conv_direct.rs` on AVX-512 machines): every channel count,
/// row widths across the vector boundary, padding, several input channels, with and without bias.
#[test]
fn few_channel_conv2d_matches_direct_loops() {
    let mut rng = Rng(11);
    for out_channels in 1..=17 {
        let in_channels = 1 + out_channels % 3;
        // Up to 8 channels take the direct loops; more take the GEMM.
        let width = if out_channels <= 8 {
            [8, 15, 16, 17, 28, 32][out_channels % 6]
        } else {
            [10, 12, 16][out_channels % 3]
        };
        let g = Conv2dGeometry {
            batch: 3,
            in_channels,
            out_channels,
            in_size: [6 + out_channels, width],
            kernel: [3, 1 + out_channels % 5],
            stride: [1, 1],
            padding: [1, (out_channels % 5) / 2],
            dilation: [1, 1],
            groups: 1,
        };
        let [height_out, width_out] = g.out_size().unwrap();
        let input = rng.values(3 * in_channels * g.in_size[0] * g.in_size[1]);
        let weight = rng.values(out_channels * in_channels * g.kernel[0] * g.kernel[1]);
        let bias = (out_channels % 2 == 0).then(|| rng.values(out_channels));
        let reference = conv2d_reference(&g, &input, &weight, bias.as_deref());
        let mut output = vec![f32::NAN; 3 * out_channels * height_out * width_out];
        conv2d(&g, &input, &weight, bias.as_deref(), &mut output, 2).unwrap();
        assert_close(&format!("conv2d {g:?}"), &output, &reference);
    }
}

/// Stride-1 transposed convolutions to few channels: LeNet's second input gradient (14-pixel
/// rows: GEMM and col2im) and wider ones, which run as the direct convolution on a flipped copy
/// of the weight (on AVX-512 machines).
#[test]
fn few_output_stride_one_conv_transpose2d_matches_direct_loops() {
    let mut rng = Rng(12);
    for (out_channels, padding, size) in [(6, 0, 10), (3, 2, 20), (8, 1, 24)] {
        let g = ConvTranspose2dGeometry {
            batch: 3,
            in_channels: 16,
            out_channels,
            in_size: [size, size],
            kernel: [5, 5],
            stride: [1, 1],
            padding: [padding, padding],
            out_size: [size + 4 - 2 * padding, size + 4 - 2 * padding],
            dilation: [1, 1],
            groups: 1,
        };
        let input = rng.values(3 * 16 * size * size);
        let weight = rng.values(16 * out_channels * 25);
        let bias = Some(rng.values(out_channels));
        let reference = conv_transpose2d_reference(&g, &input, &weight, bias.as_deref());
        let mut output = vec![f32::NAN; reference.len()];
        conv_transpose2d(&g, &input, &weight, bias.as_deref(), &mut output, 2).unwrap();
        assert_close(&format!("conv_transpose2d {g:?}"), &output, &reference);
    }
}
