//! The BLIS-style driver: cache blocking, packing and the thread split around a micro-kernel.
//!
//! Loop nest for one thread's part of C (rows `R`, columns `S`):
//! ```text
//! for jc in S by NC:                      B block (KC x NC) lives in L2/L3
//!   for pc in 0..k by KC:                 pack B[pc.., jc..] into NR-column panels
//!     for ic in R by MC:                  pack A[ic.., pc..] into MR-row panels (L2)
//!       for jr in 0..NC by NR:            one B micro-panel stays in L1
//!         for ir in 0..MC by MR:          micro-kernel: C[ir.., jr..] (=|+=) A~ x B~
//! ```
//! Each kernel family carries its own tile and blocks (`MicroKernel`). The AVX2 kernel's are
//! sized for Zen 3 (see `microkernel.rs`). The AVX-512 kernel's for this Sapphire Rapids class
//! Xeon (48 KiB L1d, 2 MiB L2 per core): a B micro-panel is KC x 32 x 4 = 32 KiB at KC = 256,
//! an A block 336 x 256 floats = 336 KiB; KC from 192 to 384, MC from 168 to 672 and NC from
//! 1024 to 4096 all measured within noise of each other on the benchmark shapes.
//!
//! When a thread's part has at most two row tiles (LeNet's 6- and 16-channel convolutions), the
//! AVX-512 kernel reads a row-major B in place instead of packing it: each B panel would serve
//! only one or two tiles, so the copy cost more than it saved (58 -> 94 GFLOP/s at
//! 6 x 25 x 1568, 98 -> 130 at 16 x 150 x 1100). Likewise a row-major A when the part has at most
//! four column tiles (ResNet's last convolutions, classifiers): packing A is a transpose
//! (105 -> 147 GFLOP/s at 512 x 4608 x 32, 44 -> 64 at 64 x 256 x 10).
//!
//! Determinism: the k blocks depend on k alone (and the kernel family), and each C element is
//! computed by the micro-kernel in the same order wherever its tile lies and whether B was
//! packed or not, so the result does not depend on the thread count, the split or the other
//! blocks.

use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
use super::avx512::Avx512Kernel;
#[cfg(target_arch = "x86_64")]
use super::microkernel::Avx2FmaKernel;
use super::microkernel::{
    APanel, BPanel, MicroKernel, PortableKernel, TilePost, TileTarget, TileWrite, MAX_MR, MAX_NR,
};
use super::pack::{ColumnLayout, MatrixLayout, OffsetTables};
use super::GemmKernel;

use crate::kernels::parallel::run_parallel;

/// The AVX-512 tile: 14 rows by two zmm vectors, 28 accumulators. 12x32, 8x48 and 6x64 tiles
/// measured the same or slower on the benchmark shapes (512³: 160 against 152, 148 and 153
/// GFLOP/s in one run; transformer and ResNet shapes alike).
#[cfg(target_arch = "x86_64")]
pub(super) type Avx512Tile = Avx512Kernel<14, 2>;

/// Kernels that can read B in place do so when a thread's part has at most this many row tiles:
/// packing B then costs more (a copy and a second read) than it saves. More tiles measured
/// slower (B rows 4 KiB apart alias in L1: 135 -> 119 GFLOP/s at 64 x 576 x 1024 with 5).
const MAX_ROW_TILES_FOR_B_IN_PLACE: usize = 2;
/// Kernels that can read a row-major A in place do so when a thread's part has at most this many
/// column tiles: packing A is a transpose, which costs more than the few tiles reuse it (up to
/// 4: 130 -> 160 GFLOP/s at 512 x 2304 x 64; 16 made the large shapes 5-10% slower).
const MAX_COLUMN_TILES_FOR_A_IN_PLACE: usize = 4;

/// Below this many multiply-adds a GEMM runs on one thread: waking a worker costs a few µs, about
/// what 200k multiply-adds take on one core.
const MIN_MULTIPLY_ADDS_PER_THREAD: usize = 256 * 1024;

/// A GEMM with raw operands: `C (=|+=) A x B`, A `m x k`, B `k x n`, C `m x n`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmProblem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub a_layout: MatrixLayout,
    pub b: *const f32,
    pub b_layout: MatrixLayout,
    pub c: *mut f32,
    pub c_layout: MatrixLayout,
    pub start: OutputStart,
    /// Applied as the last k block writes each tile; a residual is laid out like C (`residual`
    /// is its element `(0, 0)`).
    pub post: TilePost,
}

/// What C holds before the product is added to it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum OutputStart {
    /// `C = A x B`: C is only written, never read.
    Zero,
    /// `C += A x B`.
    Existing,
    /// `C = bias + A x B` with `bias[j]` (`n` values) added to column `j`: a dense layer's bias.
    /// The first k block's tiles add it as they are written, bit for bit what filling C with
    /// the bias and accumulating gives, without the pass over C that the filling costs.
    ColumnBias(*const f32),
    /// `C = bias + A x B` with `bias[i]` (`m` values) added to row `i`: a convolution's.
    RowBias(*const f32),
    /// `C += alpha * (A x B)`, each k block's tile scaled before it is added (with one k block,
    /// `fl(C + fl(alpha * sum))`: a plain SGD update written into the weight).
    ExistingScaled(f32),
}

impl OutputStart {
    /// How a tile at `(first_row, first_col)` meets C after k block `k_block_index`.
    ///
    /// # Safety
    /// A bias pointer addresses at least `first_row`/`first_col` + the tile's extent values.
    #[inline(always)]
    unsafe fn tile_write(
        self,
        k_block_index: usize,
        first_row: usize,
        first_col: usize,
    ) -> TileWrite {
        match self {
            // Every k block's tile is scaled before it is added.
            OutputStart::ExistingScaled(alpha) => TileWrite::AddScaled(alpha),
            // Later k blocks add to what the first wrote.
            _ if k_block_index > 0 => TileWrite::Add,
            OutputStart::Zero => TileWrite::Overwrite,
            OutputStart::Existing => TileWrite::Add,
            OutputStart::ColumnBias(bias) => {
                TileWrite::AddColumnBias(unsafe { bias.add(first_col) })
            }
            OutputStart::RowBias(bias) => TileWrite::AddRowBias(unsafe { bias.add(first_row) }),
        }
    }
}

// SAFETY: the threads write disjoint parts of C (see `run_gemm`) and only read A and B.
unsafe impl Send for GemmProblem {}
unsafe impl Sync for GemmProblem {}

/// Runs the GEMM on up to `threads` threads with the process's kernel ([`GemmKernel::active`]).
///
/// # Safety
/// Every element that the layouts address for the given sizes is valid (A and B readable, C
/// writable), distinct C elements do not overlap, and C does not overlap A or B.
pub(crate) unsafe fn run_gemm(problem: &GemmProblem, threads: usize) {
    unsafe { run_gemm_with(problem, threads, GemmKernel::active()) }
}

/// The operands of a GEMM that are not given by their layouts: by offset tables (element
/// `(i, j)` of such an operand is `pointer[tables.rows[i] + tables.columns[j]]`), or B already
/// packed ([`PackedB`](super::PackedB), which takes precedence over B's tables and layout).
#[derive(Clone, Copy, Default)]
pub(crate) struct OperandTables {
    pub a: Option<OffsetTables>,
    pub b: Option<OffsetTables>,
    pub packed_b: Option<PackedBView>,
}

/// Where a [`PackedB`](super::PackedB)'s panels lie: k block `pc` (every block but the last is
/// `depth` deep) starts at `panels + pc * padded_n`, and within it the `NR`-column panel
/// starting at column `j` at `j * kc` further, exactly as `compute_blocks` would have packed
/// that block for the kernel family `kernel`.
#[derive(Clone, Copy)]
pub(crate) struct PackedBView {
    pub panels: *const f32,
    pub kernel: GemmKernel,
    pub depth: usize,
    pub padded_n: usize,
}

// SAFETY: the tables are read-only for the duration of the GEMM call, shared by its threads.
unsafe impl Send for OperandTables {}
unsafe impl Sync for OperandTables {}

/// [`run_gemm`] with A and/or B given by offset tables (their layouts in `problem` are then
/// ignored).
///
/// # Safety
/// As [`run_gemm`], with A's tables holding `m` row and `k` column offsets, B's `k` and `n`, and
/// every element they address readable.
pub(crate) unsafe fn run_gemm_from_offsets(
    problem: &GemmProblem,
    tables: OperandTables,
    threads: usize,
) {
    unsafe { run_gemm_dispatch(problem, tables, threads, GemmKernel::active()) }
}

/// [`run_gemm`] with a given kernel family; an unsupported one falls back to the portable kernel.
///
/// # Safety
/// As [`run_gemm`].
pub(crate) unsafe fn run_gemm_with(problem: &GemmProblem, threads: usize, kernel: GemmKernel) {
    unsafe { run_gemm_dispatch(problem, OperandTables::default(), threads, kernel) }
}

unsafe fn run_gemm_dispatch(
    problem: &GemmProblem,
    tables: OperandTables,
    threads: usize,
    kernel: GemmKernel,
) {
    if problem.m == 0 || problem.n == 0 {
        return;
    }
    if problem.k == 0 {
        // An empty sum: C keeps its values or starts from zero or the bias.
        for row in 0..problem.m {
            for column in 0..problem.n {
                let element = unsafe { problem.c.add(problem.c_layout.offset(row, column)) };
                match problem.start {
                    OutputStart::Existing | OutputStart::ExistingScaled(_) => {}
                    OutputStart::Zero => unsafe { *element = 0.0 },
                    OutputStart::ColumnBias(bias) => unsafe { *element = *bias.add(column) },
                    OutputStart::RowBias(bias) => unsafe { *element = *bias.add(row) },
                }
                let residual = problem
                    .post
                    .residual
                    .wrapping_add(problem.c_layout.offset(row, column));
                unsafe { *element = problem.post.apply(*element, residual) };
            }
        }
        return;
    }
    let kernel = if kernel.is_supported() {
        kernel
    } else {
        GemmKernel::Portable
    };
    // Panels packed for one family serve only that family's tile and k blocks.
    let kernel = match tables.packed_b {
        Some(packed) => packed.kernel,
        None => kernel,
    };
    match kernel {
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => unsafe {
            run_kernel::<Avx512Tile>(problem, tables, threads, compute_blocks_avx512)
        },
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2Fma => unsafe {
            run_kernel::<Avx2FmaKernel>(problem, tables, threads, compute_blocks_avx2)
        },
        _ => unsafe {
            run_kernel::<PortableKernel>(problem, tables, threads, compute_blocks::<PortableKernel>)
        },
    }
}

/// The blocked loops of one thread's part, compiled for one kernel's instruction set.
type BlockLoops = unsafe fn(&GemmProblem, &PartBlocks);

unsafe fn run_kernel<K: MicroKernel>(
    problem: &GemmProblem,
    tables: OperandTables,
    threads: usize,
    loops: BlockLoops,
) {
    let b_packed = tables.packed_b.is_some();
    let plan = ThreadSplit::plan(problem, threads, (K::MR, K::NR), b_packed);
    if plan.parts == 1 {
        unsafe { compute_part::<K>(problem, tables, 0..problem.m, 0..problem.n, loops) };
        return;
    }
    run_parallel(plan.parts, &|part| {
        let (rows, columns) = plan.ranges(problem, part);
        // SAFETY: parts cover disjoint rows or disjoint columns of C.
        unsafe { compute_part::<K>(problem, tables, rows, columns, loops) };
    });
}

/// How C is divided among threads: into contiguous ranges of `NR`-column panels (each thread packs
/// its own B and all of A) or of `MR`-row panels (each packs its own A and all of B). Splitting
/// the dimension whose other operand is smaller duplicates the least packing; with B packed
/// before the call, splitting rows duplicates none (the transformer's 512 x 512 x 128
/// feed-forward product: 2 threads took 194 us split by columns, each packing all of A).
struct ThreadSplit {
    parts: usize,
    split_columns: bool,
    panel: usize,
}

impl ThreadSplit {
    fn plan(
        problem: &GemmProblem,
        threads: usize,
        (mr, nr): (usize, usize),
        b_packed: bool,
    ) -> ThreadSplit {
        let multiply_adds = problem
            .m
            .saturating_mul(problem.n)
            .saturating_mul(problem.k);
        let wanted = threads
            .max(1)
            .min((multiply_adds / MIN_MULTIPLY_ADDS_PER_THREAD).max(1));
        let column_panels = problem.n.div_ceil(nr);
        let row_panels = problem.m.div_ceil(mr);
        // Enough row panels to split evenly: an LSTM step's 32 rows are three 14-row panels,
        // which two threads would share 1 : 2.
        let rows_split_evenly = row_panels >= 4 * wanted;
        let prefer_columns = problem.m <= problem.n && !(b_packed && rows_split_evenly);
        let split_columns = if prefer_columns {
            column_panels >= wanted || column_panels >= row_panels
        } else {
            row_panels < wanted && column_panels > row_panels
        };
        let panels = if split_columns {
            column_panels
        } else {
            row_panels
        };
        ThreadSplit {
            parts: wanted.min(panels).max(1),
            split_columns,
            panel: if split_columns { nr } else { mr },
        }
    }

    fn ranges(
        &self,
        problem: &GemmProblem,
        part: usize,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let extent = if self.split_columns {
            problem.n
        } else {
            problem.m
        };
        let panels = extent.div_ceil(self.panel);
        let first = (part * panels / self.parts * self.panel).min(extent);
        let last = ((part + 1) * panels / self.parts * self.panel).min(extent);
        if self.split_columns {
            (0..problem.m, first..last)
        } else {
            (first..last, 0..problem.n)
        }
    }
}

/// The k blocks: as even as possible, at most `kc_max` deep, a function of k alone (per kernel).
pub(super) fn k_block_depth(k: usize, kc_max: usize) -> usize {
    k.div_ceil(k.div_ceil(kc_max))
}

unsafe fn compute_part<K: MicroKernel>(
    problem: &GemmProblem,
    tables: OperandTables,
    rows: std::ops::Range<usize>,
    columns: std::ops::Range<usize>,
    loops: BlockLoops,
) {
    if rows.is_empty() || columns.is_empty() {
        return;
    }
    let block_sizes = BlockSizes {
        kc: k_block_depth(problem.k, K::KC_MAX),
        mc: K::MC_MAX.min(rows.len().div_ceil(K::MR) * K::MR),
        nc: K::NC_MAX.min(columns.len().div_ceil(K::NR) * K::NR),
    };
    let run = |buffers: &mut PackBuffers| {
        let packed_a = grown(&mut buffers.a, block_sizes.mc * block_sizes.kc);
        let packed_b = grown(&mut buffers.b, block_sizes.nc * block_sizes.kc);
        let part = PartBlocks {
            rows,
            columns,
            tables,
            sizes: block_sizes,
            packed_a,
            packed_b,
        };
        // SAFETY: `loops` belongs to a supported kernel (checked by `run_gemm_with`).
        unsafe { loops(problem, &part) }
    };
    PACK_BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => run(&mut buffers),
        Err(_) => run(&mut PackBuffers::default()),
    });
}

#[derive(Clone, Copy)]
struct BlockSizes {
    kc: usize,
    mc: usize,
    nc: usize,
}

/// One thread's part of C, its block sizes and its packing buffers (large enough for them).
struct PartBlocks {
    rows: std::ops::Range<usize>,
    columns: std::ops::Range<usize>,
    /// The operands given by offset tables instead of their layouts.
    tables: OperandTables,
    sizes: BlockSizes,
    packed_a: *mut f32,
    packed_b: *mut f32,
}

/// The blocked loops compiled with AVX2 enabled, so packing uses 256-bit moves too and the
/// micro-kernel inlines.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn compute_blocks_avx2(problem: &GemmProblem, part: &PartBlocks) {
    unsafe { compute_blocks::<Avx2FmaKernel>(problem, part) }
}

/// The blocked loops compiled with AVX-512 enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn compute_blocks_avx512(problem: &GemmProblem, part: &PartBlocks) {
    unsafe { compute_blocks::<Avx512Tile>(problem, part) }
}

/// Packing buffers, one pair per thread, kept between calls so that large GEMMs do not fault
/// fresh pages in on every call.
#[derive(Default)]
struct PackBuffers {
    a: Vec<AlignedFloats>,
    b: Vec<AlignedFloats>,
}

/// Sixteen floats on a cache line, so packed panels start on cache-line boundaries.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub(super) struct AlignedFloats([f32; 16]);

thread_local! {
    static PACK_BUFFERS: RefCell<PackBuffers> = RefCell::new(PackBuffers::default());
}

pub(super) fn grown(buffer: &mut Vec<AlignedFloats>, floats: usize) -> *mut f32 {
    let blocks = floats.div_ceil(16);
    if buffer.len() < blocks {
        buffer.resize(blocks, AlignedFloats::default());
    }
    buffer.as_mut_ptr() as *mut f32
}

#[inline(always)]
unsafe fn compute_blocks<K: MicroKernel>(problem: &GemmProblem, part: &PartBlocks) {
    let BlockSizes {
        kc: kc_max,
        mc: mc_max,
        nc: nc_max,
    } = part.sizes;
    let (rows, columns) = (&part.rows, &part.columns);
    let (a_layout, b_layout) = (problem.a_layout, problem.b_layout);
    // Small M (LeNet's convolutions have 6 and 16 output channels): each B panel would serve
    // one or two row tiles, so the kernel reads row-major B where it lies. Small N (ResNet's
    // last convolutions at 32x32 images have 32 to 128 columns, a classifier 10): the same for
    // row-major A, whose packing is a transpose.
    let packed_b = part.tables.packed_b;
    let b_in_place = K::READS_B_IN_PLACE
        && packed_b.is_none()
        && part.tables.b.is_none()
        && rows.len() <= MAX_ROW_TILES_FOR_B_IN_PLACE * K::MR
        && b_layout.columns == ColumnLayout::strided(1);
    let a_in_place = K::READS_A_IN_PLACE
        && part.tables.a.is_none()
        && columns.len() <= MAX_COLUMN_TILES_FOR_A_IN_PLACE * K::NR
        && a_layout.columns == ColumnLayout::strided(1);
    for jc in columns.clone().step_by(nc_max) {
        let nc = nc_max.min(columns.end - jc);
        for (k_block_index, pc) in (0..problem.k).step_by(kc_max).enumerate() {
            let kc = kc_max.min(problem.k - pc);
            let b_panels = if let Some(packed) = packed_b {
                // Panels packed before the call (`prepacked.rs`): the same bytes this loop would
                // have packed, found at the block's and the column's offsets.
                debug_assert!(jc % K::NR == 0 && packed.depth == kc_max);
                BPanels {
                    first: unsafe { packed.panels.add(pc * packed.padded_n + jc * kc) },
                    panel_stride: K::NR * kc,
                    step: K::NR,
                    in_place: false,
                }
            } else if b_in_place {
                BPanels {
                    first: unsafe { problem.b.add(b_layout.offset(pc, jc)) },
                    panel_stride: K::NR,
                    step: b_layout.row_stride,
                    in_place: true,
                }
            } else {
                match part.tables.b {
                    Some(tables) => unsafe {
                        K::pack_b_from_offsets(problem.b, tables, (pc, kc), (jc, nc), part.packed_b)
                    },
                    None => unsafe {
                        K::pack_b(problem.b, b_layout, (pc, kc), (jc, nc), part.packed_b)
                    },
                }
                BPanels {
                    first: part.packed_b,
                    panel_stride: K::NR * kc,
                    step: K::NR,
                    in_place: false,
                }
            };
            for ic in rows.clone().step_by(mc_max) {
                let mc = mc_max.min(rows.end - ic);
                let a_panels = if a_in_place {
                    APanels {
                        first: unsafe { problem.a.add(a_layout.offset(ic, pc)) },
                        panel_stride: K::MR * a_layout.row_stride,
                        row_stride: a_layout.row_stride,
                        in_place: true,
                    }
                } else {
                    match part.tables.a {
                        Some(tables) => unsafe {
                            K::pack_a_from_offsets(
                                problem.a,
                                tables,
                                (ic, mc),
                                (pc, kc),
                                part.packed_a,
                            )
                        },
                        None => unsafe {
                            K::pack_a(
                                problem.a,
                                a_layout.row_stride,
                                a_layout.columns.stride,
                                (ic, mc),
                                (pc, kc),
                                part.packed_a,
                            )
                        },
                    }
                    APanels {
                        first: part.packed_a,
                        panel_stride: K::MR * kc,
                        row_stride: 1,
                        in_place: false,
                    }
                };
                unsafe {
                    macro_kernel::<K>(
                        problem,
                        (ic, mc),
                        (jc, nc),
                        kc,
                        a_panels,
                        b_panels,
                        (k_block_index, pc + kc == problem.k),
                    )
                };
            }
        }
    }
}

/// The A micro-panels of one block: panel `i` starts at `first + i * panel_stride`, rows
/// `row_stride` apart (packed panels, or A in place).
#[derive(Clone, Copy)]
struct APanels {
    first: *const f32,
    panel_stride: usize,
    row_stride: usize,
    in_place: bool,
}

/// The B micro-panels of one block: panel `j` starts at `first + j * panel_stride` and steps
/// of k are `step` apart (packed panels, or B in place).
#[derive(Clone, Copy)]
struct BPanels {
    first: *const f32,
    panel_stride: usize,
    step: usize,
    in_place: bool,
}

/// All micro-tiles of one packed A block times one packed B block.
#[inline(always)]
unsafe fn macro_kernel<K: MicroKernel>(
    problem: &GemmProblem,
    (first_row, mc): (usize, usize),
    (first_col, nc): (usize, usize),
    kc: usize,
    a_panels: APanels,
    b_panels: BPanels,
    (k_block_index, last_k_block): (usize, bool),
) {
    let c_layout = problem.c_layout;
    let post = if last_k_block {
        problem.post
    } else {
        TilePost::NONE
    };
    let vectors = K::NR / K::LANES;
    let mut edge_tile = [0.0f32; MAX_MR * MAX_NR];
    let mut edge_offsets = [0usize; MAX_NR];
    for (vector, offset) in edge_offsets.iter_mut().enumerate().take(vectors) {
        *offset = vector * K::LANES;
    }
    for panel_col in 0..nc.div_ceil(K::NR) {
        let tile_first_col = first_col + panel_col * K::NR;
        let cols_here = K::NR.min(first_col + nc - tile_first_col);
        let b_panel = BPanel {
            start: unsafe { b_panels.first.add(panel_col * b_panels.panel_stride) },
            step: b_panels.step,
            in_place: b_panels.in_place,
        };
        // The tile is stored directly when each vector's columns are contiguous in C (a
        // convolution's output is contiguous within an image, so 16-column vectors of 16-pixel
        // images still are).
        let mut vector_offsets = [0usize; MAX_NR];
        let mut direct = K::WRITES_PARTIAL_TILES || cols_here == K::NR;
        let used_vectors = cols_here.div_ceil(K::LANES);
        for (vector, offset) in vector_offsets.iter_mut().enumerate().take(used_vectors) {
            let first = tile_first_col + vector * K::LANES;
            *offset = c_layout.columns.offset(first);
            let count = K::LANES.min(tile_first_col + cols_here - first);
            direct &= c_layout.columns.contiguous(first, count);
        }
        // Tiles that are not stored directly are scattered with each column's offset, computed
        // once per panel: `offset` divides, which per element would dominate the write-back (a
        // convolution's output with one pixel per image).
        let short_rows = !K::WRITES_PARTIAL_TILES && mc % K::MR != 0;
        let mut column_offsets = [0usize; MAX_NR];
        if !direct || short_rows {
            for (column, offset) in column_offsets.iter_mut().enumerate().take(cols_here) {
                *offset = c_layout.columns.offset(tile_first_col + column);
            }
        }
        for panel_row in 0..mc.div_ceil(K::MR) {
            let tile_first_row = first_row + panel_row * K::MR;
            let rows_here = K::MR.min(first_row + mc - tile_first_row);
            let a_panel = APanel {
                start: unsafe { a_panels.first.add(panel_row * a_panels.panel_stride) },
                row_stride: a_panels.row_stride,
                in_place: a_panels.in_place,
            };
            let c_rows = unsafe { problem.c.add(tile_first_row * c_layout.row_stride) };
            let tile_post = post.offset_rows(tile_first_row * c_layout.row_stride);
            // SAFETY: a bias holds a value per row and per column of C (the caller's contract).
            let write = unsafe {
                problem
                    .start
                    .tile_write(k_block_index, tile_first_row, tile_first_col)
            };
            if direct && (K::WRITES_PARTIAL_TILES || rows_here == K::MR) {
                let target = TileTarget {
                    c: c_rows,
                    row_stride: c_layout.row_stride,
                    vector_offsets: &vector_offsets[..vectors],
                    rows: rows_here,
                    cols: cols_here,
                    post: tile_post,
                };
                unsafe { K::run(kc, a_panel, b_panel, target, write) };
                continue;
            }
            // An edge or scattered tile: compute it into a local tile, then write the valid part
            // element by element with the same single store or add.
            let (local_rows, local_cols) = if K::WRITES_PARTIAL_TILES {
                (rows_here, cols_here)
            } else {
                (K::MR, K::NR)
            };
            let target = TileTarget {
                c: edge_tile.as_mut_ptr(),
                row_stride: K::NR,
                vector_offsets: &edge_offsets[..vectors],
                rows: local_rows,
                cols: local_cols,
                post: TilePost::NONE,
            };
            unsafe { K::run(kc, a_panel, b_panel, target, TileWrite::Overwrite) };
            for row in 0..rows_here {
                for column in 0..cols_here {
                    let value = edge_tile[row * K::NR + column];
                    let offset = row * c_layout.row_stride + column_offsets[column];
                    let element = unsafe { c_rows.add(offset) };
                    unsafe { write.finish_element(element, value, row, column) };
                    if !tile_post.is_none() {
                        let residual = tile_post.residual.wrapping_add(offset);
                        unsafe { *element = tile_post.apply(*element, residual) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ColumnLayout;
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|index| ((index * 7919 + seed * 104_729) % 23) as f32 / 11.0 - 1.0)
            .collect()
    }

    /// Every kernel family this CPU supports against a plain f64 loop, with the grouped column
    /// layouts that convolutions use (C's columns are images of `group_len` pixels, `group_stride`
    /// apart; the same for B in a 1x1 convolution), which the public API cannot express: group
    /// lengths below, at and across the vector widths, so tiles are stored directly, by vectors,
    /// or scattered. One and two threads must agree bit for bit.
    #[test]
    fn every_kernel_matches_a_triple_loop_with_grouped_columns() {
        let cases = [
            // (m, n, k, group_len, b_grouped, b_transposed)
            (1usize, 1usize, 1usize, 1usize, false, false),
            (7, 17, 3, 4, false, true),
            (13, 40, 300, 16, false, false),
            (30, 64, 20, 16, true, false),
            (16, 300, 150, 100, false, false),
            (6, 98, 25, 49, true, false),
            (150, 5, 20, 1, false, true),
            (29, 96, 70, 32, false, false),
        ];
        for (m, n, k, group_len, b_grouped, b_transposed) in cases {
            let groups = n.div_ceil(group_len);
            // Each group padded by 3 columns, so groups are not adjacent.
            let group_stride = group_len + 3;
            let a = values(m * k, 1);
            let (b, b_layout) = if b_grouped {
                let row_stride = groups * group_stride;
                let layout = MatrixLayout {
                    row_stride,
                    columns: ColumnLayout::grouped(group_len, group_stride),
                };
                (values(k * row_stride, 2), layout)
            } else if b_transposed {
                (values(k * n, 2), MatrixLayout::strided(1, k))
            } else {
                (values(k * n, 2), MatrixLayout::strided(n, 1))
            };
            let c_layout = MatrixLayout {
                row_stride: group_len,
                columns: ColumnLayout::grouped(group_len, m * group_stride),
            };
            let c_len = groups * m * group_stride;
            for kernel in GemmKernel::supported() {
                let mut results = Vec::new();
                for threads in [1, 2] {
                    let mut c = vec![f32::NAN; c_len];
                    let problem = GemmProblem {
                        m,
                        n,
                        k,
                        a: a.as_ptr(),
                        a_layout: MatrixLayout::strided(k, 1),
                        b: b.as_ptr(),
                        b_layout,
                        c: c.as_mut_ptr(),
                        c_layout,
                        start: OutputStart::Zero,
                        post: TilePost::NONE,
                    };
                    unsafe { run_gemm_with(&problem, threads, kernel) };
                    results.push(c);
                }
                let c = &results[0];
                let same = c.iter().zip(&results[1]);
                assert!(
                    same.into_iter().all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{} ({m}, {n}, {k}): 2 threads differ from 1",
                    kernel.name()
                );
                for i in 0..m {
                    for j in 0..n {
                        let terms =
                            (0..k).map(|p| a[i * k + p] as f64 * b[b_layout.offset(p, j)] as f64);
                        let (sum, scale) = terms.fold((0.0, 0.0), |(sum, scale), term| {
                            (sum + term, scale + term.abs())
                        });
                        let got = c[c_layout.offset(i, j)];
                        assert!(
                            (got as f64 - sum).abs() <= 1e-5 * scale.max(1e-30),
                            "{} ({m}, {n}, {k}) element ({i}, {j}): {got} vs {sum}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    /// Every kernel family with A and B given by offset tables (as convolutions use them):
    /// random row and column offsets, so panels mix contiguous runs and scattered columns, at
    /// sizes spanning several k, row and column blocks; one and two threads agree bit for bit.
    #[test]
    fn every_kernel_matches_a_triple_loop_with_offset_tables() {
        for (m, n, k) in [(5usize, 37usize, 19usize), (30, 70, 300), (16, 200, 600)] {
            let random_offsets = |count: usize, seed: usize, spread: usize| -> Vec<usize> {
                // Runs of consecutive offsets broken by jumps, like output rows of images.
                let mut offsets = Vec::with_capacity(count);
                let mut next = seed % 7;
                for index in 0..count {
                    if (index * 7919 + seed).is_multiple_of(5) {
                        next += (index * 104_729 + seed) % spread;
                    }
                    offsets.push(next);
                    next += 1;
                }
                offsets
            };
            let a_rows = random_offsets(m, 1, 50);
            let a_columns = random_offsets(k, 2, 40);
            let b_rows = random_offsets(k, 3, 30);
            let b_columns = random_offsets(n, 4, 60);
            let a_len = a_rows.iter().max().unwrap() + a_columns.iter().max().unwrap() + 1;
            let b_len = b_rows.iter().max().unwrap() + b_columns.iter().max().unwrap() + 1;
            let (a, b) = (values(a_len, 5), values(b_len, 6));
            let tables = OperandTables {
                a: Some(OffsetTables {
                    rows: a_rows.as_ptr(),
                    columns: a_columns.as_ptr(),
                }),
                b: Some(OffsetTables {
                    rows: b_rows.as_ptr(),
                    columns: b_columns.as_ptr(),
                }),
                packed_b: None,
            };
            for kernel in GemmKernel::supported() {
                let mut results = Vec::new();
                for threads in [1, 2] {
                    let mut c = vec![f32::NAN; m * n];
                    let problem = GemmProblem {
                        m,
                        n,
                        k,
                        a: a.as_ptr(),
                        a_layout: MatrixLayout::strided(0, 0),
                        b: b.as_ptr(),
                        b_layout: MatrixLayout::strided(0, 0),
                        c: c.as_mut_ptr(),
                        c_layout: MatrixLayout::strided(n, 1),
                        start: OutputStart::Zero,
                        post: TilePost::NONE,
                    };
                    unsafe { run_gemm_dispatch(&problem, tables, threads, kernel) };
                    results.push(c);
                }
                assert!(
                    results[0]
                        .iter()
                        .zip(&results[1])
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{} ({m}, {n}, {k}): 2 threads differ from 1",
                    kernel.name()
                );
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|p| {
                            a[a_rows[i] + a_columns[p]] as f64 * b[b_rows[p] + b_columns[j]] as f64
                        });
                        let (sum, scale) = terms.fold((0.0, 0.0), |(sum, scale), term| {
                            (sum + term, scale + term.abs())
                        });
                        let got = results[0][i * n + j];
                        assert!(
                            (got as f64 - sum).abs() <= 1e-5 * scale.max(1e-30),
                            "{} ({m}, {n}, {k}) element ({i}, {j}): {got} vs {sum}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}
