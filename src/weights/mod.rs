//! Parameters as data: the values of a compiled spec's weights and buffers, their seeded
//! initialization, safetensors files of them, and npy files of inputs and outputs.
//!
//! The central type is [`ParamStore`]: every tensor of a spec's state_dict, by its state_dict
//! name (`layer1.0.conv1.weight`), as an `f32` [`Tensor`] in PyTorch's layout. What holds true
//! of a `ParamStore`: its names and shapes are exactly those of the spec it was built for
//! ([`param_layout`]), a shared layer's tensors appear once, and every tensor's data length
//! matches its shape (unless a caller changed it through [`ParamStore::get_mut`]; saving checks).
//!
//! - [`ParamStore::initialize`] draws PyTorch's default initialization from a seed, the same
//!   values on every machine (see `random.rs` for why);
//! - [`ParamStore::load_safetensors`] reads a file saved by nnc or by PyTorch's
//!   `safetensors.torch.save_file(model.state_dict(), ...)`, checking every name and shape;
//! - [`ParamStore::save_safetensors`] writes nnc's names, or PyTorch's with [`NameStyle::PyTorch`];
//! - [`npy`] reads and writes single arrays (`numpy.save`), for inputs and expected outputs.

mod error;
mod layout;
pub mod npy;
mod random;
mod safetensors_io;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use error::{ShapeMismatch, StateDictMismatch, UnexpectedName, WeightsError};
pub use layout::{fan_in, fan_out, param_layout, Init, ParamEntry};

use crate::tensor::Tensor;
use crate::Compilation;
use random::TensorRng;

/// Which names a saved file uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NameStyle {
    /// nnc's state_dict names (`self_attn.in_proj.weight`).
    #[default]
    Nnc,
    /// PyTorch's (`self_attn.in_proj_weight`), so `model.load_state_dict` accepts the file.
    PyTorch,
}

/// Every parameter and buffer of a spec, by state_dict name.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamStore {
    tensors: BTreeMap<String, Tensor<f32>>,
    /// nnc name -> PyTorch name, for the tensors whose names differ.
    pytorch_names: BTreeMap<String, String>,
    /// Names of the buffers (batch norm's running statistics), which training leaves alone.
    buffers: BTreeSet<String>,
    /// PyTorch's `num_batches_tracked` counters by their state_dict name (`bn1.num_batches_tracked`),
    /// for batch norms whose count is not zero: read from files, advanced by training steps,
    /// written on save so that PyTorch's strict `load_state_dict` finds every key it expects.
    batches_tracked: BTreeMap<String, i64>,
}

/// The suffix of a batch norm's running mean, whose module gets a `num_batches_tracked`.
const RUNNING_MEAN_SUFFIX: &str = "running_mean";

/// The name of the `num_batches_tracked` counter next to the running mean `running_mean`
/// (`layer1.0.bn1.running_mean` -> `layer1.0.bn1.num_batches_tracked`).
pub fn batch_counter_name(running_mean: &str) -> Option<String> {
    let module = running_mean.strip_suffix(RUNNING_MEAN_SUFFIX)?;
    (module.is_empty() || module.ends_with('.')).then(|| format!("{module}num_batches_tracked"))
}

impl ParamStore {
    /// PyTorch's default initialization of every tensor (see [`Init`]), drawn from `seed`: the
    /// same spec and seed give bit-identical values on any machine, and a tensor's values depend
    /// only on the seed and its own name, shape and initializer.
    pub fn initialize(compilation: &Compilation, seed: u64) -> ParamStore {
        ParamStore::from_layout(&param_layout(compilation), |entry| {
            initial_values(entry, seed)
        })
    }

    /// Every tensor zero (a gradient accumulator, or a store to fill in).
    pub fn zeros(compilation: &Compilation) -> ParamStore {
        ParamStore::from_layout(&param_layout(compilation), |entry| {
            Tensor::zeros(&entry.shape)
        })
    }

    /// Reads a safetensors file into a store for the spec; see [`ParamStore::from_safetensors_bytes`].
    pub fn load_safetensors(
        path: &Path,
        compilation: &Compilation,
    ) -> Result<ParamStore, WeightsError> {
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = format!("`{}`", path.display());
        safetensors_io::load(&bytes, &origin, &param_layout(compilation))
    }

    /// Reads safetensors data into a store for the spec. Every tensor of the spec must be
    /// present with its exact shape, and the file may hold no other tensor, except that
    /// `*.num_batches_tracked` counters are kept when they belong to a batch norm of the spec
    /// (an int64 scalar, see [`ParamStore::batches_tracked`]) and skipped otherwise, and
    /// PyTorch's `in_proj_weight`/`in_proj_bias`
    /// name the attention's `in_proj.weight`/`in_proj.bias`. F32 is read as is; F64, F16 and BF16
    /// are converted to f32 (F64 rounds to nearest). All problems come back in one
    /// [`WeightsError::StateDictMismatch`].
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        compilation: &Compilation,
    ) -> Result<ParamStore, WeightsError> {
        safetensors_io::load(bytes, "the safetensors data", &param_layout(compilation))
    }

    /// Writes every tensor as F32 with the chosen names, each batch norm's
    /// `num_batches_tracked` as an int64 scalar (as `model.state_dict()` has it), and the
    /// metadata `format: pt` that `safetensors.torch` writes.
    pub fn save_safetensors(&self, path: &Path, names: NameStyle) -> Result<(), WeightsError> {
        let bytes = self.to_safetensors_bytes(names)?;
        std::fs::write(path, bytes).map_err(|source| WeightsError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The bytes of [`ParamStore::save_safetensors`].
    pub fn to_safetensors_bytes(&self, names: NameStyle) -> Result<Vec<u8>, WeightsError> {
        safetensors_io::save(self, names)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor<f32>> {
        self.tensors.get(name)
    }

    /// Mutable access for training and tests; keep the tensor's shape and length.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor<f32>> {
        self.tensors.get_mut(name)
    }

    /// `(name, tensor)` in state_dict (name) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<f32>)> {
        self.tensors
            .iter()
            .map(|(name, tensor)| (name.as_str(), tensor))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor<f32>)> {
        self.tensors
            .iter_mut()
            .map(|(name, tensor)| (name.as_str(), tensor))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The name PyTorch gives the tensor (`in_proj_weight` for the attention's `in_proj.weight`).
    pub fn pytorch_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.pytorch_names.get(name).map_or(name, String::as_str)
    }

    /// `false` for buffers (batch norm's running statistics) and for names not in the store.
    pub fn is_trainable(&self, name: &str) -> bool {
        self.tensors.contains_key(name) && !self.buffers.contains(name)
    }

    /// How many tensors (not elements).
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The total number of elements of all tensors.
    pub fn element_count(&self) -> usize {
        self.tensors.values().map(Tensor::element_count).sum()
    }

    /// A store with one tensor per layout entry, made by `make`.
    fn from_layout(
        layout: &[ParamEntry],
        mut make: impl FnMut(&ParamEntry) -> Tensor<f32>,
    ) -> ParamStore {
        let tensors = layout
            .iter()
            .map(|entry| (entry.name.clone(), make(entry)))
            .collect();
        ParamStore::with_names(tensors, layout)
    }

    /// A store of `tensors`, which hold exactly the layout's names and shapes.
    fn with_names(tensors: BTreeMap<String, Tensor<f32>>, layout: &[ParamEntry]) -> ParamStore {
        let pytorch_names = layout
            .iter()
            .filter(|entry| entry.pytorch_name != entry.name)
            .map(|entry| (entry.name.clone(), entry.pytorch_name.clone()))
            .collect();
        let buffers = layout
            .iter()
            .filter(|entry| !entry.trainable)
            .map(|entry| entry.name.clone())
            .collect();
        ParamStore {
            tensors,
            pytorch_names,
            buffers,
            batches_tracked: BTreeMap::new(),
        }
    }

    /// The batch norms' counters, every one (zero unless loaded or trained), by name.
    pub fn batch_counters(&self) -> Vec<(String, i64)> {
        self.buffers
            .iter()
            .filter_map(|buffer| batch_counter_name(buffer))
            .map(|counter| {
                let count = self.batches_tracked.get(&counter).copied().unwrap_or(0);
                (counter, count)
            })
            .collect()
    }

    /// The value of the counter `counter` (`bn1.num_batches_tracked`); 0 when never set.
    pub fn batches_tracked(&self, counter: &str) -> i64 {
        self.batches_tracked.get(counter).copied().unwrap_or(0)
    }

    /// Sets a counter of a batch norm of this store (others are ignored, as loading does).
    pub fn set_batches_tracked(&mut self, counter: &str, count: i64) {
        let known = self
            .buffers
            .iter()
            .any(|buffer| batch_counter_name(buffer).as_deref() == Some(counter));
        // Zero is kept as no entry, so that equal counts make equal stores.
        if known && count != 0 {
            self.batches_tracked.insert(counter.to_string(), count);
        } else {
            self.batches_tracked.remove(counter);
        }
    }

    /// Counts one batch for the batch norm whose running mean `running_mean` a training step
    /// updated, as PyTorch does on every forward pass in training mode.
    pub fn track_batch(&mut self, running_mean: &str) {
        if let Some(counter) = batch_counter_name(running_mean) {
            let count = self.batches_tracked(&counter);
            self.set_batches_tracked(&counter, count.saturating_add(1));
        }
    }
}

/// One tensor's initial values, drawn from its own stream.
fn initial_values(entry: &ParamEntry, seed: u64) -> Tensor<f32> {
    let count: usize = entry.shape.iter().product();
    let data = match entry.init {
        Init::Constant(value) => vec![value; count],
        Init::Uniform { bound } => {
            let mut rng = TensorRng::new(seed, &entry.name);
            (0..count).map(|_| rng.uniform(bound)).collect()
        }
        Init::Normal { std } => {
            let mut rng = TensorRng::new(seed, &entry.name);
            (0..count).map(|_| rng.normal(std)).collect()
        }
    };
    Tensor {
        shape: entry.shape.clone(),
        data,
    }
}
