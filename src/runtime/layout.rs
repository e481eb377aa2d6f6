//! Data-movement ops in f32: slice, concat, gather, scatter-add (transposes are in
//! `transpose.rs`, reductions in `reduce.rs`).

use super::RuntimeError;

/// `outer x size x inner` view of a shape around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

pub fn slice(
    input: &[f32],
    shape: &[usize],
    axis: usize,
    start: usize,
    end: usize,
    output: &mut [f32],
) {
    let (outer, size, inner) = around(shape, axis);
    let block = (end - start) * inner;
    for row in 0..outer {
        let from = row * size * inner + start * inner;
        output[row * block..(row + 1) * block].copy_from_slice(&input[from..from + block]);
    }
}

pub fn concat(
    parts: &[(&[f32], &[usize])],
    axis: usize,
    output: &mut [f32],
    output_shape: &[usize],
) {
    let (outer, total, inner) = around(output_shape, axis);
    let mut start = 0;
    for (data, shape) in parts {
        let size = shape[axis];
        let block = size * inner;
        for row in 0..outer {
            let to = row * total * inner + start * inner;
            output[to..to + block].copy_from_slice(&data[row * block..(row + 1) * block]);
        }
        start += size;
    }
}

/// Rows of `table` (`[V, row...]`) by the indices in `indices` (float-coded integers).
pub fn gather(
    table: &[f32],
    rows: usize,
    indices: &[f32],
    output: &mut [f32],
) -> Result<(), RuntimeError> {
    let row_len = table.len().checked_div(rows).unwrap_or(0);
    for (position, &index) in indices.iter().enumerate() {
        if index.fract() != 0.0 || index < 0.0 || index as usize >= rows {
            return Err(RuntimeError::IndexOutOfRange {
                index: index as f64,
                rows,
            });
        }
        let row = index as usize;
        output[position * row_len..(position + 1) * row_len]
            .copy_from_slice(&table[row * row_len..(row + 1) * row_len]);
    }
    Ok(())
}

/// `output` (`[rows, row...]`) = zeros plus row `u` of `updates` added at row `indices[u]`
/// (float-coded integers). One thread adds the rows in index order, so every sum is formed in
/// the same order whatever the thread count, and equals the interpreter's order.
pub fn scatter_add(
    updates: &[f32],
    indices: &[f32],
    rows: usize,
    output: &mut [f32],
) -> Result<(), RuntimeError> {
    output.fill(0.0);
    let row_len = output.len().checked_div(rows).unwrap_or(0);
    for (position, &index) in indices.iter().enumerate() {
        if index.fract() != 0.0 || index < 0.0 || index as usize >= rows {
            return Err(RuntimeError::IndexOutOfRange {
                index: index as f64,
                rows,
            });
        }
        let row = index as usize;
        let update = &updates[position * row_len..(position + 1) * row_len];
        for (target, value) in output[row * row_len..(row + 1) * row_len]
            .iter_mut()
            .zip(update)
        {
            *target += value;
        }
    }
    Ok(())
}
