//! NumPy `.npy` files of single arrays (`numpy.save`), for a network's inputs and outputs.
//!
//! The format (numpy's `lib/format.py`): the magic `\x93NUMPY`, a version (1.0, 2.0 or 3.0), the
//! header length (2 bytes little-endian in 1.0, 4 bytes after), a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces to a
//! multiple of 64 bytes, then the raw elements.
//!
//! Why hand-written rather than a crate: the format is this small, nnc needs four dtypes of it,
//! and the user-input rule (never panic on a file) is easier to keep in 200 lines we own. npyz,
//! the maintained crate, multiplies the header's dims without overflow checks (a panic in a
//! debug build on a crafted header) and brings num-bigint and a Python-literal parser with it.
//!
//! Reading accepts float32, float64, int32 and int64 in either byte order, C order only (a
//! Fortran-order file is an error, not a silent transpose). Writing uses version 1.0 and C order.

mod header;

use std::path::Path;

use super::WeightsError;
use crate::shape::MAX_ELEMENTS;
use crate::tensor::Tensor;

/// An array read from an npy file, in the element type it was stored in (int32 widened).
#[derive(Clone, Debug, PartialEq)]
pub enum NpyArray {
    Float32(Tensor<f32>),
    Float64(Tensor<f64>),
    /// Token ids and class indices (int64, or int32 widened).
    Int64(Tensor<i64>),
}

impl NpyArray {
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::Float32(tensor) => &tensor.shape,
            NpyArray::Float64(tensor) => &tensor.shape,
            NpyArray::Int64(tensor) => &tensor.shape,
        }
    }

    /// As f32: float64 rounds to nearest; int64 must be exactly representable (|v| <= 2^24).
    pub fn into_f32(self) -> Result<Tensor<f32>, WeightsError> {
        match self {
            NpyArray::Float32(tensor) => Ok(tensor),
            NpyArray::Float64(tensor) => Ok(tensor.to_f32()),
            NpyArray::Int64(tensor) => convert(tensor, "f32", |value| {
                (value.unsigned_abs() <= 1 << 24).then_some(value as f32)
            }),
        }
    }

    /// As f64 (the reference interpreter's type): float32 widens exactly; int64 must have |v| <= 2^53.
    pub fn into_f64(self) -> Result<Tensor<f64>, WeightsError> {
        match self {
            NpyArray::Float32(tensor) => Ok(tensor.to_f64()),
            NpyArray::Float64(tensor) => Ok(tensor),
            NpyArray::Int64(tensor) => convert(tensor, "f64", |value| {
                (value.unsigned_abs() <= 1 << 53).then_some(value as f64)
            }),
        }
    }

    /// As int64 token ids: floats must hold integers in int64's range.
    pub fn into_i64(self) -> Result<Tensor<i64>, WeightsError> {
        let from_float = |value: f64| {
            // Below 2^63 in magnitude, so `as` neither saturates nor wraps.
            let in_range = value.fract() == 0.0 && value.abs() < 9.2e18;
            in_range.then_some(value as i64)
        };
        match self {
            NpyArray::Int64(tensor) => Ok(tensor),
            NpyArray::Float32(tensor) => {
                convert(tensor, "i64", |value| from_float(f64::from(value)))
            }
            NpyArray::Float64(tensor) => convert(tensor, "i64", from_float),
        }
    }
}

/// Reads an npy file.
pub fn read_npy(path: &Path) -> Result<NpyArray, WeightsError> {
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes, &format!("`{}`", path.display()))
}

/// Reads npy bytes; `origin` names them in error messages.
pub fn parse_npy(bytes: &[u8], origin: &str) -> Result<NpyArray, WeightsError> {
    let invalid = |message: String| WeightsError::InvalidNpy {
        origin: origin.to_string(),
        message,
    };
    let (header, data) = split_header(bytes).map_err(invalid)?;
    let fields =
        header::parse_dict(header).map_err(|message| invalid(format!("its header {message}")))?;
    if fields.fortran_order {
        return Err(WeightsError::NpyFortranOrder {
            origin: origin.to_string(),
        });
    }
    let dtype = Dtype::parse(&fields.descr).ok_or_else(|| WeightsError::UnsupportedNpyDtype {
        origin: origin.to_string(),
        descr: fields.descr.clone(),
    })?;
    let count = element_count(&fields.shape).map_err(invalid)?;
    let expected_bytes = count * dtype.size;
    if data.len() != expected_bytes {
        return Err(invalid(format!(
            "shape {:?} of {} needs {expected_bytes} bytes of data, found {}",
            fields.shape,
            fields.descr,
            data.len()
        )));
    }
    let shape = fields.shape;
    let words = data.chunks_exact(dtype.size);
    Ok(match (dtype.kind, dtype.size) {
        (Kind::Float, 4) => NpyArray::Float32(Tensor {
            shape,
            data: words
                .map(|word| f32::from_bits(dtype.read_u64(word) as u32))
                .collect(),
        }),
        (Kind::Float, _) => NpyArray::Float64(Tensor {
            shape,
            data: words
                .map(|word| f64::from_bits(dtype.read_u64(word)))
                .collect(),
        }),
        (Kind::Int, 4) => NpyArray::Int64(Tensor {
            shape,
            data: words
                .map(|word| i64::from(dtype.read_u64(word) as u32 as i32))
                .collect(),
        }),
        (Kind::Int, _) => NpyArray::Int64(Tensor {
            shape,
            data: words.map(|word| dtype.read_u64(word) as i64).collect(),
        }),
    })
}

/// Writes an f32 array (`<f4`, C order).
pub fn write_npy(path: &Path, tensor: &Tensor<f32>) -> Result<(), WeightsError> {
    write_bytes(path, npy_bytes(tensor)?)
}

/// Writes an int64 array (`<i8`, C order), for token ids.
pub fn write_npy_i64(path: &Path, tensor: &Tensor<i64>) -> Result<(), WeightsError> {
    write_bytes(path, npy_bytes_i64(tensor)?)
}

/// The bytes of [`write_npy`].
pub fn npy_bytes(tensor: &Tensor<f32>) -> Result<Vec<u8>, WeightsError> {
    encode(
        &tensor.shape,
        "<f4",
        tensor.data.iter().map(|value| value.to_le_bytes()),
    )
}

/// The bytes of [`write_npy_i64`].
pub fn npy_bytes_i64(tensor: &Tensor<i64>) -> Result<Vec<u8>, WeightsError> {
    encode(
        &tensor.shape,
        "<i8",
        tensor.data.iter().map(|value| value.to_le_bytes()),
    )
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn write_bytes(path: &Path, bytes: Vec<u8>) -> Result<(), WeightsError> {
    std::fs::write(path, bytes).map_err(|source| WeightsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A version 1.0 file (2.0 if the header outgrows 1.0's 16-bit length).
fn encode<const N: usize>(
    shape: &[usize],
    descr: &str,
    elements: impl ExactSizeIterator<Item = [u8; N]>,
) -> Result<Vec<u8>, WeightsError> {
    let expected: usize = shape.iter().product();
    if expected != elements.len() {
        return Err(WeightsError::TensorLength {
            name: "the array to save".to_string(),
            shape: shape.to_vec(),
            expected,
            found: elements.len(),
        });
    }
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    let long = header.len() + 11 > usize::from(u16::MAX);
    let prefix_len = MAGIC.len() + 2 + if long { 4 } else { 2 };
    // Pad with spaces so that the data starts at a multiple of 64 bytes, then end with '\n'.
    let padding = (64 - (prefix_len + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(padding));
    header.push('\n');
    let mut bytes = Vec::with_capacity(prefix_len + header.len() + expected * N);
    bytes.extend_from_slice(MAGIC);
    if long {
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
    } else {
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    }
    bytes.extend_from_slice(header.as_bytes());
    for element in elements {
        bytes.extend_from_slice(&element);
    }
    Ok(bytes)
}

/// The header text and the data after it.
fn split_header(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| "it does not start with the npy magic `\\x93NUMPY`".to_string())?;
    let (length, rest) = match rest {
        [1, _, a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        [2 | 3, _, a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest),
        [major, ..] => return Err(format!("unknown format version {major}")),
        [] => return Err("it ends after the magic".to_string()),
    };
    if rest.len() < length {
        return Err(format!(
            "its header of {length} bytes runs past the end of the file"
        ));
    }
    let (header, data) = rest.split_at(length);
    let header =
        std::str::from_utf8(header).map_err(|_| "its header is not UTF-8 text".to_string())?;
    Ok((header, data))
}

/// The element count of `shape`, checked against nnc's size limit before anything is allocated.
fn element_count(shape: &[usize]) -> Result<usize, String> {
    let count = shape
        .iter()
        .try_fold(1u64, |product, size| product.checked_mul(*size as u64));
    match count {
        Some(count) if count <= MAX_ELEMENTS => Ok(count as usize),
        _ => Err(format!("shape {shape:?} has more than 2^48 elements")),
    }
}

/// Converts every element, or reports the first that does not convert exactly.
fn convert<From: Copy + std::fmt::Display, To>(
    tensor: Tensor<From>,
    target: &'static str,
    convert_one: impl Fn(From) -> Option<To>,
) -> Result<Tensor<To>, WeightsError> {
    let mut data = Vec::with_capacity(tensor.data.len());
    for (index, &value) in tensor.data.iter().enumerate() {
        let Some(converted) = convert_one(value) else {
            return Err(WeightsError::NotRepresentable {
                origin: "the npy array".to_string(),
                index,
                value: value.to_string(),
                target,
            });
        };
        data.push(converted);
    }
    Ok(Tensor {
        shape: tensor.shape,
        data,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Float,
    Int,
}

/// An element type nnc reads: `<f4`, `>f8`, `<i8`, ...
#[derive(Clone, Copy, Debug)]
struct Dtype {
    kind: Kind,
    size: usize,
    big_endian: bool,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        let (big_endian, code) = match descr.as_bytes() {
            [b'<' | b'=', code @ ..] => (false, code),
            [b'>', code @ ..] => (true, code),
            code => (false, code),
        };
        let (kind, size) = match code {
            b"f4" => (Kind::Float, 4),
            b"f8" => (Kind::Float, 8),
            b"i4" => (Kind::Int, 4),
            b"i8" => (Kind::Int, 8),
            _ => return None,
        };
        Some(Dtype {
            kind,
            size,
            big_endian,
        })
    }

    /// The element's bits, zero-extended, from `size` bytes in the file's byte order.
    fn read_u64(&self, word: &[u8]) -> u64 {
        let fold = |value: u64, byte: &u8| (value << 8) | u64::from(*byte);
        if self.big_endian {
            word.iter().fold(0, fold)
        } else {
            word.iter().rev().fold(0, fold)
        }
    }
}
