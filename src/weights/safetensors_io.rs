//! safetensors files of a [`ParamStore`], with PyTorch's names accepted on load and offered on
//! save. Loading checks the whole file against the spec and reports every problem at once.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use safetensors::tensor::{Dtype, TensorView, View};
use safetensors::SafeTensors;

use super::error::{suggest, ShapeMismatch, StateDictMismatch, UnexpectedName};
use super::{NameStyle, ParamEntry, ParamStore, WeightsError};
use crate::tensor::Tensor;

/// PyTorch's BatchNorm keeps an int64 step counter that nnc does not model; files from
/// `model.state_dict()` carry one per batch norm, and loading skips them.
const IGNORED_SUFFIX: &str = "num_batches_tracked";

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
    for (file_name, view) in file_tensors {
        if file_name == IGNORED_SUFFIX || file_name.ends_with(&format!(".{IGNORED_SUFFIX}")) {
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
    Ok(ParamStore::with_names(tensors, layout))
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
        views.push((file_name.to_string(), F32View(tensor)));
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

/// A store tensor as a safetensors `View`.
struct F32View<'a>(&'a Tensor<f32>);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(
            self.0
                .data
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect(),
        )
    }

    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}
