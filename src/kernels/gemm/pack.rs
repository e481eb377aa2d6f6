//! Packing: copying a block of A into micro-panels of `MR` rows and a block of B into
//! micro-panels of `NR` columns, each laid out step of k by step of k, so the micro-kernel reads
//! both with unit stride. Panels at the edge of a block are padded with zeros: the padded lanes
//! compute values that are never written to C, and the real lanes compute exactly what they
//! would in a full tile.

use super::microkernel::{MAX_MR, MAX_NR};

/// Where column `j` of a matrix lives relative to column 0. Plain strided matrices have one group
/// spanning all columns; the convolutions use several groups to treat a batch of images as one
/// wide matrix (column `image * pixels + pixel` lives at `image * group_stride + pixel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ColumnLayout {
    pub stride: usize,
    pub group_len: usize,
    pub group_stride: usize,
}

impl ColumnLayout {
    pub(crate) fn strided(stride: usize) -> ColumnLayout {
        ColumnLayout {
            stride,
            group_len: usize::MAX,
            group_stride: 0,
        }
    }

    /// Columns of `group_len` with unit stride, consecutive groups `group_stride` apart.
    pub(crate) fn grouped(group_len: usize, group_stride: usize) -> ColumnLayout {
        ColumnLayout {
            stride: 1,
            group_len: group_len.max(1),
            group_stride,
        }
    }

    #[inline]
    pub(crate) fn offset(&self, column: usize) -> usize {
        // Plain strided layouts skip the divisions, which cost more than a small tile's FMAs.
        if self.group_len == usize::MAX {
            return column * self.stride;
        }
        (column / self.group_len) * self.group_stride + (column % self.group_len) * self.stride
    }

    /// Whether columns `first..first + count` sit next to each other in memory.
    #[inline]
    pub(crate) fn contiguous(&self, first: usize, count: usize) -> bool {
        self.stride == 1
            && (self.group_len == usize::MAX
                || first / self.group_len == (first + count - 1) / self.group_len)
    }
}

/// Element `(i, j)` of a matrix lives at `i * row_stride + columns.offset(j)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatrixLayout {
    pub row_stride: usize,
    pub columns: ColumnLayout,
}

impl MatrixLayout {
    pub(crate) fn strided(row_stride: usize, col_stride: usize) -> MatrixLayout {
        MatrixLayout {
            row_stride,
            columns: ColumnLayout::strided(col_stride),
        }
    }

    #[inline]
    pub(crate) fn offset(&self, row: usize, column: usize) -> usize {
        row * self.row_stride + self.columns.offset(column)
    }
}

/// Packs rows `first_row..first_row + rows` and columns `first_col..first_col + kc` of a strided
/// A into `ceil(rows / mr)` panels of `mr * kc` floats at `packed` (`mr` is a constant of the
/// calling kernel, at most `MAX_MR`; this inlines into each kernel's driver).
///
/// # Safety
/// Every addressed element of `a` is readable and `packed` holds the panels.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexes select registers in these hot loops
pub(crate) unsafe fn pack_a_block(
    mr: usize,
    a: *const f32,
    row_stride: usize,
    col_stride: usize,
    (first_row, rows): (usize, usize),
    (first_col, kc): (usize, usize),
    packed: *mut f32,
) {
    for panel_index in 0..rows.div_ceil(mr) {
        let panel_first_row = first_row + panel_index * mr;
        let rows_here = mr.min(first_row + rows - panel_first_row);
        let panel = unsafe { packed.add(panel_index * mr * kc) };
        let mut row_starts = [a; MAX_MR];
        for (row, start) in row_starts.iter_mut().enumerate().take(rows_here) {
            *start =
                unsafe { a.add((panel_first_row + row) * row_stride + first_col * col_stride) };
        }
        if rows_here == mr && col_stride == 1 {
            for step in 0..kc {
                for row in 0..mr {
                    unsafe { *panel.add(step * mr + row) = *row_starts[row].add(step) };
                }
            }
        } else {
            for step in 0..kc {
                for row in 0..mr {
                    let value = if row < rows_here {
                        unsafe { *row_starts[row].add(step * col_stride) }
                    } else {
                        0.0
                    };
                    unsafe { *panel.add(step * mr + row) = value };
                }
            }
        }
    }
}

/// Packs rows `first_row..first_row + kc` and columns `first_col..first_col + cols` of B into
/// `ceil(cols / nr)` panels of `nr * kc` floats at `packed` (`nr` at most `MAX_NR`).
///
/// # Safety
/// Every addressed element of `b` is readable and `packed` holds the panels.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexes select registers in these hot loops
pub(crate) unsafe fn pack_b_block(
    nr: usize,
    b: *const f32,
    layout: MatrixLayout,
    (first_row, kc): (usize, usize),
    (first_col, cols): (usize, usize),
    packed: *mut f32,
) {
    let row_stride = layout.row_stride;
    for panel_index in 0..cols.div_ceil(nr) {
        let panel_first_col = first_col + panel_index * nr;
        let cols_here = nr.min(first_col + cols - panel_first_col);
        let panel = unsafe { packed.add(panel_index * nr * kc) };
        let rows_start = unsafe { b.add(first_row * row_stride) };
        if layout.columns.contiguous(panel_first_col, cols_here) {
            let source = unsafe { rows_start.add(layout.columns.offset(panel_first_col)) };
            if cols_here == nr {
                for step in 0..kc {
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            source.add(step * row_stride),
                            panel.add(step * nr),
                            nr,
                        )
                    };
                }
            } else {
                for step in 0..kc {
                    for column in 0..nr {
                        let value = if column < cols_here {
                            unsafe { *source.add(step * row_stride + column) }
                        } else {
                            0.0
                        };
                        unsafe { *panel.add(step * nr + column) = value };
                    }
                }
            }
            continue;
        }
        let mut column_starts = [rows_start; MAX_NR];
        for (column, start) in column_starts.iter_mut().enumerate().take(cols_here) {
            *start = unsafe { rows_start.add(layout.columns.offset(panel_first_col + column)) };
        }
        if row_stride == 1 {
            // B is stored transposed: walk each column's contiguous run.
            for column in 0..nr {
                for step in 0..kc {
                    let value = if column < cols_here {
                        unsafe { *column_starts[column].add(step) }
                    } else {
                        0.0
                    };
                    unsafe { *panel.add(step * nr + column) = value };
                }
            }
        } else {
            for step in 0..kc {
                for column in 0..nr {
                    let value = if column < cols_here {
                        unsafe { *column_starts[column].add(step * row_stride) }
                    } else {
                        0.0
                    };
                    unsafe { *panel.add(step * nr + column) = value };
                }
            }
        }
    }
}

/// Panels whose contiguous column runs average at least this many columns are packed run by
/// run; others element by element.
const MIN_AVERAGE_RUN: usize = 6;

/// A B operand addressed through two offset tables: element `(i, j)` lives at
/// `rows[i] + columns[j]`. A convolution's column matrix is such a matrix over its (padded)
/// input: row `(channel, tap row, tap column)` and column `(image, out row, out column)` each
/// contribute an offset, so the GEMM packs B straight from the input and no im2col copy is
/// ever written (`conv.rs`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OffsetTables {
    pub rows: *const usize,
    pub columns: *const usize,
}

/// Packs rows `first_row..first_row + kc` and columns `first_col..first_col + cols` of a B given
/// by offset tables into `ceil(cols / nr)` panels of `nr * kc` floats at `packed`. A panel whose
/// columns are contiguous in memory (a stride-1 convolution's output row) copies whole rows;
/// other panels gather element by element, which the compiler turns into vector gathers where
/// the target has them.
///
/// # Safety
/// Every addressed element `b[rows[i] + columns[j]]` is readable, the tables hold the rows and
/// columns named, and `packed` holds the panels.
#[inline(always)]
pub(crate) unsafe fn pack_b_block_from_offsets(
    nr: usize,
    b: *const f32,
    tables: OffsetTables,
    (first_row, kc): (usize, usize),
    (first_col, cols): (usize, usize),
    packed: *mut f32,
) {
    let row_offsets = unsafe { std::slice::from_raw_parts(tables.rows.add(first_row), kc) };
    for panel_index in 0..cols.div_ceil(nr) {
        let panel_first_col = first_col + panel_index * nr;
        let cols_here = nr.min(first_col + cols - panel_first_col);
        let panel = unsafe { packed.add(panel_index * nr * kc) };
        let (column_offsets, contiguous) =
            unsafe { panel_column_offsets(tables, panel_first_col, cols_here) };
        let first_offset = column_offsets[0];
        if contiguous && cols_here == nr {
            for (step, &row_offset) in row_offsets.iter().enumerate() {
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        b.add(row_offset + first_offset),
                        panel.add(step * nr),
                        nr,
                    )
                };
            }
            continue;
        }
        // Runs of columns that are contiguous in memory (an output row of a stride-1
        // convolution that does not fill the panel): copied as runs when they are long enough,
        // since a run copy vectorizes and a gather does not.
        let mut runs = [(0usize, 0usize); MAX_NR];
        let mut run_count = 0;
        for (column, &offset) in column_offsets.iter().enumerate() {
            let extends = run_count > 0 && {
                let (start, len) = runs[run_count - 1];
                column_offsets[start] + len == offset
            };
            if extends {
                runs[run_count - 1].1 += 1;
            } else {
                runs[run_count] = (column, 1);
                run_count += 1;
            }
        }
        let runs = &runs[..run_count];
        if run_count * MIN_AVERAGE_RUN <= cols_here {
            for (step, &row_offset) in row_offsets.iter().enumerate() {
                let source = unsafe { b.add(row_offset) };
                let target = unsafe { std::slice::from_raw_parts_mut(panel.add(step * nr), nr) };
                for &(start, len) in runs {
                    let run_source = unsafe {
                        std::slice::from_raw_parts(source.add(column_offsets[start]), len)
                    };
                    for (value, &source_value) in
                        target[start..start + len].iter_mut().zip(run_source)
                    {
                        *value = source_value;
                    }
                }
                target[cols_here..].fill(0.0);
            }
            continue;
        }
        let mut offsets = [0usize; MAX_NR];
        offsets[..cols_here].copy_from_slice(column_offsets);
        for (step, &row_offset) in row_offsets.iter().enumerate() {
            let source = unsafe { b.add(row_offset) };
            let target = unsafe { std::slice::from_raw_parts_mut(panel.add(step * nr), nr) };
            for (value, &offset) in target[..cols_here].iter_mut().zip(&offsets[..cols_here]) {
                *value = unsafe { *source.add(offset) };
            }
            target[cols_here..].fill(0.0);
        }
    }
}

/// The column offsets of one B panel, and whether those columns are contiguous in memory.
///
/// # Safety
/// The table holds `first_col + cols_here` column offsets, and `cols_here` is at least 1.
#[inline(always)]
pub(crate) unsafe fn panel_column_offsets<'tables>(
    tables: OffsetTables,
    first_col: usize,
    cols_here: usize,
) -> (&'tables [usize], bool) {
    // SAFETY: the caller's tables outlive the packing call that uses the slice.
    let offsets = unsafe { std::slice::from_raw_parts(tables.columns.add(first_col), cols_here) };
    let first = offsets[0];
    let contiguous = offsets
        .iter()
        .enumerate()
        .all(|(column, &offset)| offset == first + column);
    (offsets, contiguous)
}

/// Packs rows `first_row..first_row + rows` and columns `first_col..first_col + kc` of an A given
/// by offset tables (element `(i, p)` at `rows[i] + columns[p]`) into `ceil(rows / mr)` panels of
/// `mr * kc` floats at `packed`. A stride-1 transposed convolution reads its weight this way,
/// flipped and with its channel axes swapped, without copying it first
/// (`conv_transpose_stride_one.rs`).
///
/// # Safety
/// Every addressed element `a[rows[i] + columns[p]]` is readable, the tables hold the rows and
/// columns named, and `packed` holds the panels.
#[inline(always)]
pub(crate) unsafe fn pack_a_block_from_offsets(
    mr: usize,
    a: *const f32,
    tables: OffsetTables,
    (first_row, rows): (usize, usize),
    (first_col, kc): (usize, usize),
    packed: *mut f32,
) {
    let column_offsets = unsafe { std::slice::from_raw_parts(tables.columns.add(first_col), kc) };
    for panel_index in 0..rows.div_ceil(mr) {
        let panel_first_row = first_row + panel_index * mr;
        let rows_here = mr.min(first_row + rows - panel_first_row);
        let panel = unsafe { packed.add(panel_index * mr * kc) };
        let mut row_offsets = [0usize; MAX_MR];
        row_offsets[..rows_here].copy_from_slice(unsafe {
            std::slice::from_raw_parts(tables.rows.add(panel_first_row), rows_here)
        });
        for (step, &column_offset) in column_offsets.iter().enumerate() {
            let source = unsafe { a.add(column_offset) };
            let target = unsafe { std::slice::from_raw_parts_mut(panel.add(step * mr), mr) };
            for (value, &offset) in target[..rows_here]
                .iter_mut()
                .zip(&row_offsets[..rows_here])
            {
                *value = unsafe { *source.add(offset) };
            }
            target[rows_here..].fill(0.0);
        }
    }
}
