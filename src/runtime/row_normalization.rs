//! Runs a softmax or layer-norm kernel (`fuse/row_normalizations.rs`) with the row kernels of
//! `kernels/row_normalization.rs`, after checking the buffers against the compiled shapes.

use super::RuntimeError;
use crate::fuse::{RowNormalization, RowNormalizationKind};
use crate::kernels::row_normalization::{layer_norm_rows, softmax_rows};

/// `output = row_normalization(input)`; `scale` and `shift` are the layer norm's affine values
/// (given exactly when the kernel names them).
pub(super) fn run_row_normalization(
    row: &RowNormalization,
    input: &[f32],
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
    output: &mut [f32],
    threads: usize,
) -> Result<(), RuntimeError> {
    if input.len() != output.len() || row.cols == 0 || !input.len().is_multiple_of(row.cols) {
        return Err(RuntimeError::internal(
            "a row normalization's buffers do not hold whole rows of its output's size",
        ));
    }
    match &row.kind {
        RowNormalizationKind::Softmax => softmax_rows(input, output, row.cols, threads)?,
        RowNormalizationKind::LayerNorm { epsilon, .. } => layer_norm_rows(
            input,
            output,
            row.cols,
            *epsilon as f32,
            scale,
            shift,
            threads,
        )?,
    }
    Ok(())
}
