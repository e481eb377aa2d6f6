//! Direct convolution vectorized over output channels (LeNet's second layer: 6 -> 16 channels,
//! 5x5, 10x10 outputs): every accumulator is one zmm vector holding 16 output channels of one
//! output pixel. A tile of up to 28 output pixels (a few whole output rows, or a slice of a wide
//! row) stays in registers while the taps run in the fixed order (input channel, tap row, tap
//! column); each tap loads one vector of 16 weights and does one multiply-add per pixel whose
//! other operand is the input value broadcast straight from memory (an embedded `{1to16}`
//! operand). Blocks of 16 output channels follow one another; a partial last block computes zero
//! weights in its spare lanes and does not store them. The weights are transposed once per call
//! into `[block][tap][16]`; the tile's vectors reach the NCHW output through a 16x16 register
//! transpose and masked row stores (a scalar store per element cost as much as the arithmetic
//! of a 3 -> 16 channel 3x3 convolution: 313 against 260 us).
//!
//! With at most 8 output channels a vector holds two pixels, half the output height apart, in
//! alternate lanes: the weights are duplicated pairwise, and the input is read from a copy whose
//! 64-bit elements pair each input float with the one half the output height further down, so a
//! 64-bit broadcast gives both pixels' operands. This halves the multiply-adds (16 -> 8 channels,
//! 3x3 on 16x16: 259 -> 203 us).
//!
//! As an implicit GEMM such a layer has 16 or 32 output-channel rows, so every float packed
//! from the input feeds only that many multiply-adds and packing sets the pace; the
//! width-vectorized direct kernel (`conv_direct.rs`) broadcasts one weight per channel and output
//! vector, too many for 10-pixel rows. Measured here (one thread, minimum of 30 alternating runs,
//! implicit GEMM -> this kernel, with the timing harness `bench_against_gemm` that this file had
//! in commit 828f831): LeNet's second convolution at batch 64 366 -> 188 us (about
//! 88% of the 512-bit FMA peak), and at batch 32: 3 -> 16 channels 3x3 pad 1 on 32x32 410 ->
//! 245 us, 16 -> 16 3x3 pad 1 on 16x16 510 -> 275 us, 16 -> 32 3x3 pad 1 on 16x16 730 ->
//! 500 us, 32 -> 32 3x3 on 8x8 200 -> 141 us, with pad 1 350 -> 285 us, 128 -> 16 3x3 pad 1
//! on 8x8 994 -> 670 us, 16 -> 32 1x1 on 16x16 109 -> 85 us; at batch 64, 6 -> 8 3x3 pad 1 on
//! 14x14 240 -> 113 us. At 48 output channels the two were within 6% (657 -> 622 us, 48 -> 48
//! 3x3 pad 1 on 8x8) and at 64 even, hence [`applies`]'s bound of 32. LeNet's first layer
//! (1 -> 6 channels, 28-pixel rows) stays with `conv_direct.rs` (175 us there, 213 us here).
//!
//! Each output element sums its taps in one fixed order (input channel, tap row, tap column),
//! starting from its bias, whatever thread computes it, so results do not depend on the thread
//! count.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::conv::copy_padded_planes;
use super::conv::{Conv2dGeometry, ConvWeight};
#[cfg(target_arch = "x86_64")]
use super::parallel::{part_range, run_parallel, SharedMutPtr};

/// Floats per zmm vector, and output channels per block.
const LANES: usize = 16;
/// The most accumulators of a tile: 28 of the 32 zmm registers, leaving room for the weight
/// vector and the broadcasts.
#[cfg(target_arch = "x86_64")]
const MAX_TILE_PIXELS: usize = 28;
/// The widest tile slice of an output row; wider rows are cut into near-equal slices.
#[cfg(target_arch = "x86_64")]
const MAX_TILE_COLUMNS: usize = 16;
/// The most output channels [`applies`] takes (two blocks).
const MAX_OUTPUT_CHANNELS: usize = 2 * LANES;
/// The most output rows of a tile (each needs a general-purpose register for its row address).
#[cfg(target_arch = "x86_64")]
const MAX_TILE_ROWS: usize = 7;

/// Whether this CPU and geometry take this kernel: AVX-512, one group, horizontal stride 1 and
/// at most 32 output channels. Every such shape measured ran faster here than as an implicit
/// GEMM (see the module doc); at 48 output channels the two were within 6%, and at 64 even.
pub(super) fn applies(geometry: &Conv2dGeometry) -> bool {
    supports(geometry) && geometry.out_channels <= MAX_OUTPUT_CHANNELS
}

/// Whether a stride-1 transposed convolution with few output channels, recast as `geometry`,
/// should run here rather than as its own GEMM and col2im. That GEMM multiplies every input
/// pixel by all output channels' taps at full vector width, while this kernel fills only as many
/// lanes as there are output channels (twice that when paired) and computes every output pixel,
/// more of them than input pixels when the transposed convolution pads little. It wins when its
/// vector multiply-adds, `out pixels * blocks` (halved when paired), are at most 1.5 times the
/// GEMM's, `in pixels * out channels / 16`. Measured (batch 32 or 64, one thread, GEMM and
/// col2im -> here, ratio in brackets): 16 -> 8 channels 3x3 on 16x16 (1.0) 323 -> 203 us,
/// 16 -> 6 3x3 on 16x16 (1.3) 236 -> 194 us; but 32 -> 4 3x3 on 16x16 (2.0) 218 -> 386 us and
/// LeNet's second input gradient, 16 -> 6 5x5 on 10x10 (2.6), 531 -> 602 us. In between, 16 -> 8
/// 5x5 on 10x10 (2.0) 727 -> 596 us and 16 -> 12 5x5 on 10x10 (2.6) 1099 -> 953 us would have
/// won too, but the bound stays below the 32 -> 4 loss.
pub(super) fn beats_transposed_gemm(geometry: &Conv2dGeometry) -> bool {
    let Ok(out_size) = geometry.out_size() else {
        return false;
    };
    let [out_height, out_width] = out_size;
    let in_pixels = geometry.in_size[0] * geometry.in_size[1];
    let (paired, block_channels) = pairing(geometry.out_channels, out_size);
    let direct_pixels = if paired {
        out_width * out_height.div_ceil(2)
    } else {
        out_width * out_height
    };
    let blocks = geometry.out_channels.div_ceil(block_channels);
    applies(geometry) && 2 * direct_pixels * blocks * LANES <= 3 * in_pixels * geometry.out_channels
}

/// Whether vectors pair two pixels' 8 channels (at most 8 output channels and 2 output rows),
/// and the output channels per block.
fn pairing(out_channels: usize, [out_height, _]: [usize; 2]) -> (bool, usize) {
    let paired = out_channels <= LANES / 2 && out_height >= 2;
    (paired, if paired { LANES / 2 } else { LANES })
}

/// Whether the kernel can compute the geometry at all (what the tests exercise): AVX-512, one
/// group, horizontal stride 1 (the tile's pixels sit at constant offsets from each other).
fn supports(geometry: &Conv2dGeometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::kernels::gemm::GemmKernel::Avx512.is_supported()
            && geometry.groups == 1
            && geometry.stride[1] == 1
            && geometry.out_size().is_ok()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = geometry;
        false
    }
}

/// Runs the convolution (buffers checked by the caller against the geometry; `applies` true).
/// The weight may be stored plainly or as a stride-1 transposed convolution's (flipped taps,
/// swapped channel axes): it is transposed into blocks here either way.
pub(super) fn direct_conv2d(
    geometry: &Conv2dGeometry,
    input: &[f32],
    weight: ConvWeight<'_>,
    bias: Option<&[f32]>,
    output: &mut [f32],
    threads: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let Ok(out_size) = geometry.out_size() else {
            return;
        };
        let plan = TilePlan::new(geometry, out_size);
        let (packed_weights, packed_bias) = pack_weights(geometry, &plan, weight, bias);
        let in_image_len = geometry.in_channels * geometry.in_size[0] * geometry.in_size[1];
        let out_image_len = geometry.out_channels * out_size[0] * out_size[1];
        let output_data = SharedMutPtr(output.as_mut_ptr());
        // Parts take runs of (image, tile row) pairs, so a batch smaller than the thread count
        // still keeps every thread busy; the split changes no element's arithmetic.
        let tile_rows_per_image = plan.tiled_rows.div_ceil(plan.tile_rows);
        let work_items = geometry.batch * tile_rows_per_image;
        let parts = threads.min(work_items).max(1);
        let pads = geometry.padding != [0, 0];
        run_parallel(parts, &|part| {
            let mut padded = vec![0.0f32; if pads { plan.source_image_len } else { 0 }];
            let mut pairs = vec![
                0.0f64;
                if plan.paired {
                    plan.source_image_len
                } else {
                    0
                }
            ];
            let items = part_range(work_items, parts, part);
            let (first_image, end_image) = (
                items.start / tile_rows_per_image,
                items.end.div_ceil(tile_rows_per_image),
            );
            for image in first_image..end_image {
                let image_items = image * tile_rows_per_image..(image + 1) * tile_rows_per_image;
                let tile_rows = items.start.max(image_items.start) - image_items.start
                    ..items.end.min(image_items.end) - image_items.start;
                let image_input = &input[image * in_image_len..(image + 1) * in_image_len];
                let source = if pads {
                    copy_padded_planes(
                        image_input,
                        geometry.in_size,
                        geometry.padding_pairs(),
                        &mut padded,
                    );
                    &padded[..]
                } else {
                    image_input
                };
                let source = if plan.paired {
                    // SAFETY: `applies` checked AVX-512.
                    unsafe { pair_source(source, plan.pair_distance, &mut pairs) };
                    pairs.as_ptr().cast::<f32>()
                } else {
                    source.as_ptr()
                };
                // Each part writes only the output rows of its own tile rows; the pointer
                // stays inside the checked output.
                let image_output = output_data.get().wrapping_add(image * out_image_len);
                // SAFETY: `applies` checked AVX-512 and the geometry; the buffers have its sizes.
                unsafe {
                    convolve_image(
                        geometry,
                        &plan,
                        source,
                        (&packed_weights, &packed_bias),
                        (image_output, tile_rows),
                    )
                };
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (geometry, input, weight, bias, output, threads);
    }
}

/// The weights as `[block][tap][16]` with taps in the order (input channel, tap row, tap column)
/// and zeros in the spare lanes of a partial last block, and the bias as `[block][16]`. Paired,
/// output channel `k` fills lanes `2k` and `2k + 1` of a single block.
#[cfg(target_arch = "x86_64")]
fn pack_weights(
    geometry: &Conv2dGeometry,
    plan: &TilePlan,
    weight: ConvWeight<'_>,
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let taps_per_channel = geometry.kernel[0] * geometry.kernel[1];
    let taps = geometry.in_channels * taps_per_channel;
    let blocks = geometry.out_channels.div_ceil(plan.block_channels);
    let copies = LANES / plan.block_channels;
    let mut packed = vec![0.0f32; blocks * taps * LANES];
    let mut packed_bias = vec![0.0f32; blocks * LANES];
    for out_channel in 0..geometry.out_channels {
        let (block, channel) = (
            out_channel / plan.block_channels,
            out_channel % plan.block_channels,
        );
        let lanes = channel * copies..(channel + 1) * copies;
        if let Some(bias) = bias {
            packed_bias[block * LANES..][lanes.clone()].fill(bias[out_channel]);
        }
        for in_channel in 0..geometry.in_channels {
            for channel_tap in 0..taps_per_channel {
                let value = match weight {
                    ConvWeight::Plain(data) => {
                        data[(out_channel * geometry.in_channels + in_channel) * taps_per_channel
                            + channel_tap]
                    }
                    // `[C, O, kh, kw]` with the taps reversed (see `ConvWeight`; one group).
                    ConvWeight::TransposedAndFlipped(data) => {
                        data[(in_channel * geometry.out_channels + out_channel) * taps_per_channel
                            + taps_per_channel
                            - 1
                            - channel_tap]
                    }
                };
                let tap = in_channel * taps_per_channel + channel_tap;
                packed[(block * taps + tap) * LANES..][lanes.clone()].fill(value);
            }
        }
    }
    (packed, packed_bias)
}

/// `pairs[p]` holds `source[p]` in its low and `source[p + distance]` (0 past the end) in its
/// high 32 bits: one 64-bit broadcast gives a vector of two pixels' inputs, alternating.
///
/// # Safety
/// The CPU supports AVX-512F (the interleaving loop is vectorized for it; element by element
/// it cost as much as the arithmetic of LeNet's second input gradient).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pair_source(source: &[f32], distance: usize, pairs: &mut [f64]) {
    // SAFETY: `[f32; 2]` has the size of `f64` and a smaller alignment.
    let pairs: &mut [[f32; 2]] =
        unsafe { std::slice::from_raw_parts_mut(pairs.as_mut_ptr().cast(), pairs.len()) };
    let paired_len = source.len().saturating_sub(distance);
    let (with_second, without_second) = pairs.split_at_mut(paired_len);
    for ((pair, &first), &second) in with_second.iter_mut().zip(source).zip(&source[distance..]) {
        *pair = [first, second];
    }
    for (pair, &first) in without_second.iter_mut().zip(&source[paired_len..]) {
        *pair = [first, 0.0];
    }
}

/// How an image's output is cut into tiles, and where each tap reads.
#[cfg(target_arch = "x86_64")]
struct TilePlan {
    /// Offset of every tap (input channel, tap row, tap column) from the tile's first input.
    tap_offsets: Vec<usize>,
    /// `(first column, columns)` of the slices of an output row.
    column_slices: Vec<(usize, usize)>,
    /// Output rows per tile (the last tile of a column of tiles may have fewer).
    tile_rows: usize,
    /// Width of the (padded) input image the kernel reads.
    source_width: usize,
    /// Floats of one (padded) input image.
    source_image_len: usize,
    out_size: [usize; 2],
    /// Whether each vector holds 8 output channels of two pixels, `pair_rows` output rows
    /// apart, in alternate lanes (at most 8 output channels): a vector of 16 channels would
    /// leave half its lanes or more idle.
    paired: bool,
    /// Output rows between the two pixels of a paired vector (the first half of the rows).
    pair_rows: usize,
    /// Input elements between the two pixels of a paired vector.
    pair_distance: usize,
    /// The output rows the tiles cover: all of them, or the first `pair_rows` when paired.
    tiled_rows: usize,
    /// Output channels per block: 16, or 8 when paired.
    block_channels: usize,
}

#[cfg(target_arch = "x86_64")]
impl TilePlan {
    fn new(geometry: &Conv2dGeometry, out_size: [usize; 2]) -> TilePlan {
        let source_size = [
            geometry.in_size[0] + 2 * geometry.padding[0],
            geometry.in_size[1] + 2 * geometry.padding[1],
        ];
        let source_plane = source_size[0] * source_size[1];
        let (paired, block_channels) = pairing(geometry.out_channels, out_size);
        let pair_rows = if paired {
            out_size[0].div_ceil(2)
        } else {
            out_size[0]
        };
        // Paired inputs are 64-bit elements, read through a float pointer at twice the offsets.
        let element_floats = if paired { 2 } else { 1 };
        let mut tap_offsets = Vec::new();
        for in_channel in 0..geometry.in_channels {
            for tap_row in 0..geometry.kernel[0] {
                for tap_col in 0..geometry.kernel[1] {
                    tap_offsets.push(
                        element_floats
                            * (in_channel * source_plane
                                + tap_row * geometry.dilation[0] * source_size[1]
                                + tap_col * geometry.dilation[1]),
                    );
                }
            }
        }
        let slices = out_size[1].div_ceil(MAX_TILE_COLUMNS);
        let column_slices: Vec<(usize, usize)> = (0..slices)
            .map(|slice| {
                let start = slice * out_size[1] / slices;
                (start, (slice + 1) * out_size[1] / slices - start)
            })
            .collect();
        let widest = column_slices
            .iter()
            .map(|&(_, columns)| columns)
            .max()
            .unwrap_or(1);
        TilePlan {
            tap_offsets,
            column_slices,
            tile_rows: (MAX_TILE_PIXELS / widest).clamp(1, MAX_TILE_ROWS),
            source_width: source_size[1],
            source_image_len: geometry.in_channels * source_plane,
            out_size,
            paired,
            pair_rows,
            pair_distance: pair_rows * geometry.stride[0] * source_size[1],
            tiled_rows: pair_rows,
            block_channels,
        }
    }
}

/// What one tile kernel reads and writes.
#[cfg(target_arch = "x86_64")]
struct TileOperands {
    /// The input under the tile's first pixel at tap 0.
    source: *const f32,
    /// Floats between the inputs of consecutive tile rows.
    row_step: usize,
    tap_offsets: *const usize,
    taps: usize,
    /// The block's `[tap][16]` weights and its 16 bias values.
    weights: *const f32,
    bias: *const f32,
    /// The output at the block's first channel and the tile's first pixel.
    output: *mut f32,
    out_plane: usize,
    out_width: usize,
    /// Output channels of the block that exist (the rest are not stored).
    channels: usize,
    /// Paired: floats from a first pixel's output to its second's, and the tile rows whose
    /// second pixels exist.
    second_offset: usize,
    second_rows: usize,
}

#[cfg(target_arch = "x86_64")]
type TileKernel = unsafe fn(&TileOperands);

/// The tiles of one image's tile rows `tile_rows`, for every channel block.
///
/// # Safety
/// The CPU supports AVX-512F; `source` holds the (padded) image, the packed operands and
/// `output` (the image's output) the geometry's sizes, and no other thread writes these rows.
#[cfg(target_arch = "x86_64")]
unsafe fn convolve_image(
    geometry: &Conv2dGeometry,
    plan: &TilePlan,
    source: *const f32,
    (packed_weights, packed_bias): (&[f32], &[f32]),
    (output, tile_rows): (*mut f32, std::ops::Range<usize>),
) {
    let [out_height, out_width] = plan.out_size;
    let out_plane = out_height * out_width;
    let taps = plan.tap_offsets.len();
    let element_floats = if plan.paired { 2 } else { 1 };
    let row_step = geometry.stride[0] * plan.source_width;
    for block in 0..geometry.out_channels.div_ceil(plan.block_channels) {
        let channels =
            (geometry.out_channels - block * plan.block_channels).min(plan.block_channels);
        for tile_row in tile_rows.clone() {
            let first_row = tile_row * plan.tile_rows;
            let rows = plan.tile_rows.min(plan.tiled_rows - first_row);
            let second_rows = (out_height - plan.pair_rows)
                .saturating_sub(first_row)
                .min(rows);
            for &(first_column, columns) in &plan.column_slices {
                let operands = TileOperands {
                    source: source
                        .wrapping_add(element_floats * (first_row * row_step + first_column)),
                    row_step: element_floats * row_step,
                    tap_offsets: plan.tap_offsets.as_ptr(),
                    taps,
                    weights: packed_weights[block * taps * LANES..].as_ptr(),
                    bias: packed_bias[block * LANES..].as_ptr(),
                    output: output.wrapping_add(
                        block * plan.block_channels * out_plane
                            + first_row * out_width
                            + first_column,
                    ),
                    out_plane,
                    out_width,
                    channels,
                    second_offset: plan.pair_rows * out_width,
                    second_rows,
                };
                // SAFETY: the tile lies inside the output, and every tap of its pixels inside
                // the (padded or paired) image, by construction of the plan from the geometry.
                unsafe { tile_kernel(rows, columns, plan.paired)(&operands) };
            }
        }
    }
}

/// The tile kernel compiled for `rows` x `columns` pixels (both within the plan's bounds).
#[cfg(target_arch = "x86_64")]
fn tile_kernel(rows: usize, columns: usize, paired: bool) -> TileKernel {
    macro_rules! for_columns {
        ($rows:literal, $columns:expr; $($column_count:literal)*) => {
            match ($columns, paired) {
                $(
                    ($column_count, false) => {
                        convolve_tile::<$rows, $column_count, false> as TileKernel
                    }
                    ($column_count, true) => {
                        convolve_tile::<$rows, $column_count, true> as TileKernel
                    }
                )*
                _ => unreachable!("the tile plan bounds the tile's pixels"),
            }
        };
    }
    match rows {
        1 => for_columns!(1, columns; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16),
        2 => for_columns!(2, columns; 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
        3 => for_columns!(3, columns; 1 2 3 4 5 6 7 8 9),
        4 => for_columns!(4, columns; 1 2 3 4 5 6 7),
        5 => for_columns!(5, columns; 1 2 3 4 5),
        6 => for_columns!(6, columns; 1 2 3 4),
        7 => for_columns!(7, columns; 1 2 3 4),
        _ => unreachable!("the tile plan bounds the tile's rows"),
    }
}

/// One tile of `ROWS` x `COLUMNS` output pixels and one block of 16 output channels: the
/// accumulators stay in registers over all taps, then go through a stack tile to the NCHW
/// output, one channel plane after another.
///
/// # Safety
/// The CPU supports AVX-512F; the operands point at buffers holding the tile's inputs, weights,
/// bias and outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn convolve_tile<const ROWS: usize, const COLUMNS: usize, const PAIRED: bool>(
    operands: &TileOperands,
) {
    // SAFETY: the caller guarantees the pointers cover the tile; see the function's contract.
    unsafe {
        let bias = _mm512_loadu_ps(operands.bias);
        let mut sums = [[bias; COLUMNS]; ROWS];
        for tap in 0..operands.taps {
            let weights = _mm512_loadu_ps(operands.weights.add(tap * LANES));
            let tap_source = operands.source.add(*operands.tap_offsets.add(tap));
            for (row, row_sums) in sums.iter_mut().enumerate() {
                let row_source = tap_source.add(row * operands.row_step);
                for (column, sum) in row_sums.iter_mut().enumerate() {
                    let value = if PAIRED {
                        let pair = row_source.add(2 * column).cast::<f64>();
                        _mm512_castpd_ps(_mm512_set1_pd(*pair))
                    } else {
                        _mm512_set1_ps(*row_source.add(column))
                    };
                    *sum = _mm512_fmadd_ps(weights, value, *sum);
                }
            }
        }
        // The pixels in tile order (row after row), transposed 16 at a time into vectors of
        // 16 pixels per channel, whose lanes go to the output rows with masked stores: a
        // scalar store per element cost as much as the arithmetic of a 3x3 convolution with
        // three input channels.
        let mut pixels = [_mm512_setzero_ps(); 2 * LANES];
        for (row, row_sums) in sums.iter().enumerate() {
            pixels[row * COLUMNS..(row + 1) * COLUMNS].copy_from_slice(row_sums);
        }
        for group in 0..(ROWS * COLUMNS).div_ceil(LANES) {
            let group_first = group * LANES;
            let mut group_pixels = [_mm512_setzero_ps(); LANES];
            group_pixels.copy_from_slice(&pixels[group_first..group_first + LANES]);
            let channel_vectors = transpose_16x16(group_pixels);
            for (lane, channel_vector) in channel_vectors.iter().enumerate() {
                // Paired, lane `2k + h` holds channel `k` of the tile pixel's `h`-th pixel.
                let (channel, second) = if PAIRED {
                    (lane / 2, lane % 2 == 1)
                } else {
                    (lane, false)
                };
                if channel >= operands.channels {
                    continue;
                }
                let (channel_output, rows) = if second {
                    let offset = channel * operands.out_plane + operands.second_offset;
                    (operands.output.wrapping_add(offset), operands.second_rows)
                } else {
                    (operands.output.add(channel * operands.out_plane), ROWS)
                };
                for row in 0..rows.min(ROWS) {
                    let first = (row * COLUMNS).max(group_first);
                    let end = ((row + 1) * COLUMNS).min(group_first + LANES);
                    if first >= end {
                        continue;
                    }
                    let mask =
                        (((1u32 << (end - first)) - 1) << (first - group_first)) as __mmask16;
                    // Lane `first - group_first` belongs at column `first - row * COLUMNS`;
                    // masked-off lanes are never accessed.
                    let target = channel_output
                        .add(row * operands.out_width + first - row * COLUMNS)
                        .wrapping_sub(first - group_first);
                    _mm512_mask_storeu_ps(target, mask, *channel_vector);
                }
            }
        }
    }
}

/// `result[j]` lane `i` is `rows[i]` lane `j`: four rounds of 16 shuffles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose_16x16(rows: [__m512; LANES]) -> [__m512; LANES] {
    // Pairs of rows interleaved within 128-bit lanes.
    let mut pairs = [_mm512_setzero_ps(); LANES];
    for pair in 0..LANES / 2 {
        let (even, odd) = (rows[2 * pair], rows[2 * pair + 1]);
        pairs[2 * pair] = _mm512_unpacklo_ps(even, odd);
        pairs[2 * pair + 1] = _mm512_unpackhi_ps(even, odd);
    }
    // `quads[4 * g + e]` holds, in 128-bit lane `l`, rows `4g..4g + 4` at column `4l + e`.
    let mut quads = [_mm512_setzero_ps(); LANES];
    for group in 0..LANES / 4 {
        let base = 4 * group;
        let as_pd = |index: usize| _mm512_castps_pd(pairs[base + index]);
        quads[base] = _mm512_castpd_ps(_mm512_unpacklo_pd(as_pd(0), as_pd(2)));
        quads[base + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(as_pd(0), as_pd(2)));
        quads[base + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(as_pd(1), as_pd(3)));
        quads[base + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(as_pd(1), as_pd(3)));
    }
    let mut result = [_mm512_setzero_ps(); LANES];
    for element in 0..4 {
        // Rows 0-7 and 8-15 at columns `element + {0, 8}` (`low`) and `element + {4, 12}`.
        let low_front = _mm512_shuffle_f32x4::<0x88>(quads[element], quads[4 + element]);
        let high_front = _mm512_shuffle_f32x4::<0xdd>(quads[element], quads[4 + element]);
        let low_back = _mm512_shuffle_f32x4::<0x88>(quads[8 + element], quads[12 + element]);
        let high_back = _mm512_shuffle_f32x4::<0xdd>(quads[8 + element], quads[12 + element]);
        result[element] = _mm512_shuffle_f32x4::<0x88>(low_front, low_back);
        result[element + 8] = _mm512_shuffle_f32x4::<0xdd>(low_front, low_back);
        result[element + 4] = _mm512_shuffle_f32x4::<0x88>(high_front, high_back);
        result[element + 12] = _mm512_shuffle_f32x4::<0xdd>(high_front, high_back);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::inputs::SplitMix;

    /// Draws from the crate's seeded generator, so failures reproduce.
    struct Random(SplitMix);

    impl Random {
        fn below(&mut self, bound: usize) -> usize {
            self.0.below(bound)
        }
        fn range(&mut self, low: usize, high: usize) -> usize {
            low + self.below(high - low + 1)
        }
        fn values(&mut self, count: usize) -> Vec<f32> {
            (0..count)
                .map(|_| (2.0 * self.0.unit() - 1.0) as f32)
                .collect()
        }
    }

    /// The convolution by definition, in f64, independent of the kernels' code.
    fn reference_conv2d(
        geometry: &Conv2dGeometry,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f64> {
        let [out_height, out_width] = geometry.out_size().unwrap();
        let [height, width] = geometry.in_size;
        let [kernel_height, kernel_width] = geometry.kernel;
        let mut output = Vec::new();
        for image in 0..geometry.batch {
            for out_channel in 0..geometry.out_channels {
                for out_row in 0..out_height {
                    for out_col in 0..out_width {
                        let mut sum = bias.map_or(0.0, |bias| bias[out_channel] as f64);
                        for in_channel in 0..geometry.in_channels {
                            for tap_row in 0..kernel_height {
                                for tap_col in 0..kernel_width {
                                    let y = (out_row * geometry.stride[0]
                                        + tap_row * geometry.dilation[0])
                                        as isize
                                        - geometry.padding[0] as isize;
                                    let x = (out_col * geometry.stride[1]
                                        + tap_col * geometry.dilation[1])
                                        as isize
                                        - geometry.padding[1] as isize;
                                    if y < 0 || x < 0 || y >= height as isize || x >= width as isize
                                    {
                                        continue;
                                    }
                                    let input_value = input[((image * geometry.in_channels
                                        + in_channel)
                                        * height
                                        + y as usize)
                                        * width
                                        + x as usize];
                                    let weight_value =
                                        weight[((out_channel * geometry.in_channels + in_channel)
                                            * kernel_height
                                            + tap_row)
                                            * kernel_width
                                            + tap_col];
                                    sum += input_value as f64 * weight_value as f64;
                                }
                            }
                        }
                        output.push(sum);
                    }
                }
            }
        }
        output
    }

    /// The plain weight `[O, C, kh, kw]` stored as a transposed convolution's `[C, O, kh, kw]`
    /// with its taps reversed.
    fn transposed_and_flipped(geometry: &Conv2dGeometry, weight: &[f32]) -> Vec<f32> {
        let taps = geometry.kernel[0] * geometry.kernel[1];
        let mut stored = vec![0.0; weight.len()];
        for out_channel in 0..geometry.out_channels {
            for in_channel in 0..geometry.in_channels {
                for tap in 0..taps {
                    stored[(in_channel * geometry.out_channels + out_channel) * taps + taps
                        - 1
                        - tap] =
                        weight[(out_channel * geometry.in_channels + in_channel) * taps + tap];
                }
            }
        }
        stored
    }

    #[test]
    fn matches_reference_at_random_shapes_for_any_thread_count() {
        if !crate::kernels::gemm::GemmKernel::Avx512.is_supported() {
            return;
        }
        let mut random = Random(SplitMix(0x5eed_1234_abcd_0001));
        let mut checked = 0;
        while checked < 120 {
            let kernel = [random.range(1, 5), random.range(1, 5)];
            let dilation = [random.range(1, 2), random.range(1, 2)];
            let geometry = Conv2dGeometry {
                batch: random.range(1, 3),
                in_channels: random.range(1, 40),
                out_channels: random.range(1, 40),
                in_size: [random.range(5, 20), random.range(5, 20)],
                kernel,
                stride: [random.range(1, 2), 1],
                padding: [random.range(0, 2), random.range(0, 2)],
                dilation,
                groups: 1,
            };
            if !supports(&geometry) {
                continue;
            }
            checked += 1;
            let [input_len, weight_len, output_len] = geometry.tensor_lens().unwrap();
            let input = random.values(input_len);
            let weight = random.values(weight_len);
            let bias_values = random.values(geometry.out_channels);
            let bias = (random.below(2) == 0).then_some(&bias_values[..]);
            let expected = reference_conv2d(&geometry, &input, &weight, bias);
            let flipped = transposed_and_flipped(&geometry, &weight);
            // The plain weight on 1 and 3 threads, the transposed one on 2: all bit-identical.
            let storages = [
                ConvWeight::Plain(&weight),
                ConvWeight::TransposedAndFlipped(&flipped),
                ConvWeight::Plain(&weight),
            ];
            let mut first_output: Option<Vec<f32>> = None;
            for (storage, threads) in storages.into_iter().zip([1, 2, 3]) {
                let mut output = vec![f32::NAN; output_len];
                direct_conv2d(&geometry, &input, storage, bias, &mut output, threads);
                let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for (index, (&actual, &wanted)) in output.iter().zip(&expected).enumerate() {
                    assert!(
                        ((actual as f64 - wanted) / scale).abs() <= 1e-5,
                        "{geometry:?} element {index}: {actual} vs {wanted}"
                    );
                }
                match &first_output {
                    None => first_output = Some(output),
                    Some(first) => assert!(
                        first
                            .iter()
                            .zip(&output)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{geometry:?}: 1 and 2 threads differ"
                    ),
                }
            }
        }
    }
}
