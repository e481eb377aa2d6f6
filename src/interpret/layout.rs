//! Ops that move elements without arithmetic: reshape, transpose, slice, concat, gather, its
//! adjoint scatter-add (which sums), and the select/stack pair the scan uses to cut and rebuild
//! sequences.

use super::elementwise::{ravel, unravel};
use crate::tensor::Tensor;

/// Row-major order is unchanged; only the shape is new.
pub(super) fn reshape(x: &Tensor<f64>, shape: &[usize]) -> Tensor<f64> {
    Tensor {
        shape: shape.to_vec(),
        data: x.data.clone(),
    }
}

/// Output dim `i` is input dim `perm[i]`.
pub(super) fn transpose(x: &Tensor<f64>, perm: &[usize]) -> Tensor<f64> {
    let shape: Vec<usize> = perm.iter().map(|axis| x.shape[*axis]).collect();
    let mut out = Tensor::zeros(&shape);
    for flat in 0..out.data.len() {
        let out_index = unravel(flat, &shape);
        let mut in_index = vec![0; perm.len()];
        for (position, axis) in perm.iter().enumerate() {
            in_index[*axis] = out_index[position];
        }
        out.data[flat] = x.data[ravel(&in_index, &x.shape)];
    }
    out
}

pub(super) fn slice(x: &Tensor<f64>, axis: usize, start: usize, end: usize) -> Tensor<f64> {
    let mut shape = x.shape.clone();
    shape[axis] = end - start;
    let mut out = Tensor::zeros(&shape);
    for flat in 0..out.data.len() {
        let mut index = unravel(flat, &shape);
        index[axis] += start;
        out.data[flat] = x.data[ravel(&index, &x.shape)];
    }
    out
}

pub(super) fn concat(parts: &[&Tensor<f64>], axis: usize) -> Tensor<f64> {
    let mut shape = parts[0].shape.clone();
    shape[axis] = parts.iter().map(|part| part.shape[axis]).sum();
    let mut out = Tensor::zeros(&shape);
    for flat in 0..out.data.len() {
        let mut index = unravel(flat, &shape);
        let mut part = 0;
        while index[axis] >= parts[part].shape[axis] {
            index[axis] -= parts[part].shape[axis];
            part += 1;
        }
        out.data[flat] = parts[part].data[ravel(&index, &parts[part].shape)];
    }
    out
}

/// Rows of `table` `[V, D...]` at `indices` `[I...]`: `[I..., D...]`. An index outside `0..V`
/// fails with `(index, V)`.
pub(super) fn gather(
    table: &Tensor<f64>,
    indices: &Tensor<f64>,
) -> Result<Tensor<f64>, (f64, usize)> {
    let rows = table.shape[0];
    let row_size: usize = table.shape[1..].iter().product();
    let mut shape = indices.shape.clone();
    shape.extend_from_slice(&table.shape[1..]);
    let mut data = Vec::with_capacity(indices.data.len() * row_size);
    for index in &indices.data {
        if !(index.fract() == 0.0 && *index >= 0.0 && *index < rows as f64) {
            return Err((*index, rows));
        }
        let row = *index as usize;
        data.extend_from_slice(&table.data[row * row_size..(row + 1) * row_size]);
    }
    Ok(Tensor { shape, data })
}

/// `[rows, D...]` zeros plus row `u` of `updates` (`[I..., D...]`) added at row `indices[u]`
/// (`[I...]`), in index order. An index outside `0..rows` fails with `(index, rows)`.
pub(super) fn scatter_add(
    updates: &Tensor<f64>,
    indices: &Tensor<f64>,
    rows: usize,
) -> Result<Tensor<f64>, (f64, usize)> {
    let mut shape = vec![rows];
    shape.extend_from_slice(&updates.shape[indices.shape.len()..]);
    let row_size: usize = shape[1..].iter().product();
    let mut out = Tensor::zeros(&shape);
    for (position, index) in indices.data.iter().enumerate() {
        if !(index.fract() == 0.0 && *index >= 0.0 && *index < rows as f64) {
            return Err((*index, rows));
        }
        let row = *index as usize;
        let update = &updates.data[position * row_size..(position + 1) * row_size];
        for (target, value) in out.data[row * row_size..(row + 1) * row_size]
            .iter_mut()
            .zip(update)
        {
            *target += value;
        }
    }
    Ok(out)
}

/// Position `step` of `axis`, with that axis removed.
pub(super) fn select(x: &Tensor<f64>, axis: usize, step: usize) -> Tensor<f64> {
    let mut sliced = slice(x, axis, step, step + 1);
    sliced.shape.remove(axis);
    sliced
}

/// The inverse of `select` over every step: `steps[t]` lands at position `t` of a new `axis`.
pub(super) fn stack(steps: &[Tensor<f64>], axis: usize) -> Tensor<f64> {
    let mut shape = steps[0].shape.clone();
    shape.insert(axis, steps.len());
    let mut out = Tensor::zeros(&shape);
    for flat in 0..out.data.len() {
        let mut index = unravel(flat, &shape);
        let step = index.remove(axis);
        out.data[flat] = steps[step].data[ravel(&index, &steps[step].shape)];
    }
    out
}
