//! Errors of reading and writing parameter and array files. Every mistake in a file (a name the
//! spec does not have, a wrong shape, an unsupported element type, a damaged header) is an error
//! here, never a panic.

use std::fmt;
use std::path::PathBuf;

/// An error of loading or saving weights (safetensors) or arrays (npy).
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The file is not a readable safetensors file (bad header, offsets out of range, ...).
    #[error("{origin} is not a valid safetensors file: {message}")]
    InvalidSafetensors { origin: String, message: String },

    /// The file's tensors do not match the spec's parameters; lists every problem at once.
    #[error("{0}")]
    StateDictMismatch(Box<StateDictMismatch>),

    /// A tensor's data length disagrees with its shape (possible only for a store whose
    /// tensors were edited through `get_mut`).
    #[error("tensor `{name}` has {found} elements, but its shape {shape:?} needs {expected}")]
    TensorLength {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },

    #[error("{origin} is not a valid npy file: {message}")]
    InvalidNpy { origin: String, message: String },

    #[error("{origin} stores its array in Fortran (column-major) order; nnc reads C order only (save it with numpy.ascontiguousarray)")]
    NpyFortranOrder { origin: String },

    #[error("{origin} has dtype `{descr}`; nnc reads float32, float64, int32 and int64 arrays")]
    UnsupportedNpyDtype { origin: String, descr: String },

    /// A value cannot be converted exactly to the requested element type (a token id that is
    /// not an integer, an integer too large for f32, ...).
    #[error("{origin}: element {index} ({value}) cannot be converted exactly to {target}")]
    NotRepresentable {
        origin: String,
        index: usize,
        value: String,
        target: &'static str,
    },
}

/// Everything that keeps a safetensors file from matching a spec's state_dict.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDictMismatch {
    /// Where the tensors came from, for the message (a quoted path, or "the safetensors data").
    pub origin: String,
    /// Names the spec has and the file lacks.
    pub missing: Vec<String>,
    /// Names the file has and the spec lacks, each with the closest missing name if any.
    pub unexpected: Vec<UnexpectedName>,
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// `(name, dtype)` of tensors whose element type nnc does not read.
    pub unsupported_dtypes: Vec<(String, String)>,
    /// File names that name the same parameter twice (`in_proj_weight` and `in_proj.weight`).
    pub duplicates: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UnexpectedName {
    pub name: String,
    pub did_you_mean: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

impl StateDictMismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.shape_mismatches.is_empty()
            && self.unsupported_dtypes.is_empty()
            && self.duplicates.is_empty()
    }
}

/// At most this many items of each kind are listed; the rest are counted.
const LISTED_PER_KIND: usize = 20;

impl fmt::Display for StateDictMismatch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} does not match the spec's parameters",
            self.origin
        )?;
        let missing = self.missing.iter().map(|name| format!("`{name}`"));
        write_list(formatter, "missing", missing)?;
        let unexpected = self.unexpected.iter().map(|item| match &item.did_you_mean {
            Some(suggestion) => format!("`{}` (did you mean `{suggestion}`?)", item.name),
            None => format!("`{}`", item.name),
        });
        write_list(formatter, "unexpected", unexpected)?;
        let shapes = self.shape_mismatches.iter().map(|item| {
            format!(
                "`{}`: expected {:?}, found {:?}",
                item.name, item.expected, item.found
            )
        });
        write_list(formatter, "shape mismatch", shapes)?;
        let dtypes = self.unsupported_dtypes.iter().map(|(name, dtype)| {
            format!("`{name}` is {dtype} (nnc reads F32, and converts F64, F16 and BF16)")
        });
        write_list(formatter, "unsupported dtype", dtypes)?;
        let duplicates = self
            .duplicates
            .iter()
            .map(|name| format!("`{name}` appears twice"));
        write_list(formatter, "duplicate", duplicates)
    }
}

/// Writes one `\n  kind: item` line per item, up to [`LISTED_PER_KIND`].
fn write_list(
    formatter: &mut fmt::Formatter<'_>,
    kind: &str,
    items: impl ExactSizeIterator<Item = String>,
) -> fmt::Result {
    let total = items.len();
    for item in items.take(LISTED_PER_KIND) {
        write!(formatter, "\n  {kind}: {item}")?;
    }
    if total > LISTED_PER_KIND {
        write!(
            formatter,
            "\n  {kind}: ... and {} more",
            total - LISTED_PER_KIND
        )?;
    }
    Ok(())
}

/// The closest candidate by edit distance, if close enough to be a likely typo, or a candidate
/// that the name ends with (a wrapper's prefix such as `module.` in front of the real name).
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if let Some(wrapped) = candidates
        .iter()
        .find(|candidate| name.ends_with(&format!(".{candidate}")))
    {
        return Some(wrapped.to_string());
    }
    crate::suggest::closest(name, candidates, 4)
}
