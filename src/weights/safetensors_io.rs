//! safetensors files of a [`ParamStore`], with PyTorch's names accepted on load and offered on
//! save. Loading checks the whole file against the spec and reports every problem at once.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use safetensors::tensor::{Dtype, TensorView, View};
use safetensors::SafeTensors;

use super::error::{suggest, ShapeMismatch, StateDictMismatch, UnexpectedName};
use super::{NameStyle, ParamEntry, ParamStore, WeightsError};
use crate::tensor::Tensor;

/// PyTorch's BatchNorm keeps an int64 counter of the batches it has seen (it matters only for
/// `momentum=None`, which the language cannot express); files from `model.state_dict()` carry
/// one per batch norm. Loading keeps those of the spec's batch norms and skips others.
const COUNTER_SUFFIX: &str = "num_batches_tracked";

/// Unexpected names beyond this many get no did-you-mean (their messages are not shown).
const SUGGESTED_NAMES: usize = 20;

/// Builds a store for `layout` from safetensors bytes; `origin` names them in messages.
pub(super) fn load(
    bytes: &[u8],
    origin: &str,
    layout: &[ParamEntry],
) -> Result<ParamStore, WeightsError> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|error| WeightsError::InvalidSafetensors {
            origin: origin.to_string(),
            message: error.to_string(),
        })?;
    // Each expected tensor answers to its nnc name and to its PyTorch name.
    let mut by_file_name: HashMap<&str, &ParamEntry> = HashMap::new();
    for entry in layout {
        by_file_name.insert(&entry.name, entry);
        by_file_name.insert(&entry.pytorch_name, entry);
    }
    let mut report = StateDictMismatch {
        origin: origin.to_string(),
        ..StateDictMismatch::default()
    };
    let mut tensors: BTreeMap<String, Tensor<f32>> = BTreeMap::new();
    // nnc names the file has given a tensor for, loadable or not.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut unexpected_names = Vec::new();
    let mut file_tensors = file.tensors();
    // Sorted, so that messages list names in a stable order.
    file_tensors.sort_by(|(left, _), (right, _)| left.cmp(right));
    let mut counters = Vec::new();
    for (file_name, view) in file_tensors {
        if file_name == COUNTER_SUFFIX || file_name.ends_with(&format!(".{COUNTER_SUFFIX}")) {
            if let Some(count) = integer_scalar(&view) {
                counters.push((file_name, count));
            }
            continue;
        }
        let Some(entry) = by_file_name.get(file_name.as_str()) else {
            unexpected_names.push(file_name);
            continue;
        };
        if !seen.insert(&entry.name) {
            report.duplicates.push(entry.name.clone());
        } else if view.shape() != entry.shape.as_slice() {
            report.shape_mismatches.push(ShapeMismatch {
                name: file_name,
                expected: entry.shape.clone(),
                found: view.shape().to_vec(),
            });
        } else if let Some(data) = to_f32(&view) {
            let tensor = Tensor {
                shape: entry.shape.clone(),
                data,
            };
            tensors.insert(entry.name.clone(), tensor);
        } else {
            let dtype = view.dtype().to_string();
            report.unsupported_dtypes.push((file_name, dtype));
        }
    }
    report.missing = layout
        .iter()
        .filter(|entry| !seen.contains(entry.name.as_str()))
        .map(|entry| entry.name.clone())
        .collect();
    // Suggestions cost an edit distance per missing name; messages show the first few only.
    report.unexpected = unexpected_names
        .into_iter()
        .enumerate()
        .map(|(index, name)| {
            let did_you_mean = (index < SUGGESTED_NAMES)
                .then(|| suggest(&name, report.missing.iter().map(String::as_str)))
                .flatten();
            UnexpectedName { name, did_you_mean }
        })
        .collect();
    if !report.is_empty() {
        return Err(WeightsError::StateDictMismatch(Box::new(report)));
    }
    let mut store = ParamStore::with_names(tensors, layout);
    for (name, count) in counters {
        store.set_batches_tracked(&name, count);
    }
    Ok(store)
}

/// The value of a one-element integer tensor (PyTorch saves `num_batches_tracked` as an int64
/// of shape `[]`).
fn integer_scalar(view: &TensorView<'_>) -> Option<i64> {
    if view.shape().iter().product::<usize>() != 1 {
        return None;
    }
    let bytes = view.data();
    match view.dtype() {
        Dtype::I64 => Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)),
        Dtype::I32 => Some(i32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as i64),
        _ => None,
    }
}

/// The safetensors bytes of a store, every tensor F32, with `format: pt` metadata as
/// `safetensors.torch.save_file` writes.
pub(super) fn save(store: &ParamStore, names: NameStyle) -> Result<Vec<u8>, WeightsError> {
    let mut views = Vec::with_capacity(store.len());
    for (name, tensor) in store.iter() {
        let expected: usize = tensor.shape.iter().product();
        if expected != tensor.data.len() {
            return Err(WeightsError::TensorLength {
                name: name.to_string(),
                shape: tensor.shape.clone(),
                expected,
                found: tensor.data.len(),
            });
        }
        let file_name = match names {
            NameStyle::Nnc => name,
            NameStyle::PyTorch => store.pytorch_name(name),
        };
        views.push((file_name.to_string(), SavedView::Floats(tensor)));
    }
    for (name, count) in store.batch_counters() {
        views.push((name, SavedView::Counter(count.to_le_bytes())));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|error| {
        WeightsError::InvalidSafetensors {
            origin: "the tensors to save".to_string(),
            message: error.to_string(),
        }
    })
}

/// The tensor's elements as f32, or `None` for a dtype nnc does not read. safetensors data is
/// little-endian, and the crate has checked that its length matches the shape and dtype.
fn to_f32(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let bytes = view.data();
    let values = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                f64::from_le_bytes(word) as f32
            })
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|chunk| half::f16::from_le_bytes([chunk[0], chunk[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|chunk| half::bf16::from_le_bytes([chunk[0], chunk[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(values)
}

/// A saved tensor as a safetensors `View`: a store tensor, or a batch norm's int64 counter.
enum SavedView<'a> {
    Floats(&'a Tensor<f32>),
    Counter([u8; 8]),
}

impl View for SavedView<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            SavedView::Floats(_) => Dtype::F32,
            SavedView::Counter(_) => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            SavedView::Floats(tensor) => &tensor.shape,
            SavedView::Counter(_) => &[],
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            SavedView::Floats(tensor) => Cow::Owned(
                tensor
                    .data
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect(),
            ),
            SavedView::Counter(bytes) => Cow::Borrowed(bytes),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            SavedView::Floats(tensor) => tensor.data.len() * 4,
            SavedView::Counter(bytes) => bytes.len(),
        }
    }
}
