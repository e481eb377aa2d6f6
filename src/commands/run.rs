//! `nnc run SPEC --input NAME=x.npy ... --output y.npy`: one forward pass on npy inputs, with
//! seeded PyTorch-default weights or a safetensors file, written as npy outputs. The batch size
//! and other symbolic dims come from the input shapes.

use std::path::{Path, PathBuf};

use nnc::api::{InputSignature, Model, ParamSource};
use nnc::tensor::Tensor;
use nnc::weights::npy::{read_npy, write_npy};
use nnc::weights::WeightsError;

use super::{compile_model, failure};
use crate::{Failure, SpecArgs};

/// The flags of `nnc run`.
pub struct RunArgs {
    pub spec: SpecArgs,
    pub inputs: Vec<String>,
    pub weights: Option<PathBuf>,
    pub seed: Option<u64>,
    pub output: PathBuf,
    pub threads: usize,
    pub check_nan: bool,
}

pub fn run(args: &RunArgs) -> Result<u8, Failure> {
    let model = compile_model(&args.spec, args.threads, args.check_nan)?;
    let signatures = model.inputs();
    let files = input_files(&signatures, &args.inputs)?;
    let mut tensors = Vec::with_capacity(files.len());
    for (signature, path) in signatures.iter().zip(&files) {
        tensors.push(read_input(signature, path)?);
    }
    let params = match &args.weights {
        Some(path) => model.params(&ParamSource::Safetensors(path)),
        None => model.params(&ParamSource::Seed(args.seed.unwrap_or(0))),
    }
    .map_err(failure)?;
    let outputs = model.forward(&params, &tensors).map_err(failure)?;
    let destinations = output_paths(&model, &args.output)?;
    for ((name, tensor), path) in outputs.iter().zip(&destinations) {
        write_npy(path, tensor).map_err(|error| Failure::Usage(error.to_string()))?;
        println!("{name}: {:?} -> {}", tensor.shape, path.display());
    }
    Ok(0)
}

/// The npy file of each input, in input order, from `--input NAME=FILE` or, for a network with
/// one input, `--input FILE`.
pub fn input_files(
    signatures: &[InputSignature],
    flags: &[String],
) -> Result<Vec<PathBuf>, Failure> {
    let names: Vec<&str> = signatures.iter().map(|input| input.name.as_str()).collect();
    let listing = signatures
        .iter()
        .map(|input| input.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let mut files: Vec<Option<PathBuf>> = vec![None; signatures.len()];
    for flag in flags {
        let named = flag
            .split_once('=')
            .and_then(|(name, path)| Some((names.iter().position(|known| *known == name)?, path)));
        let (position, path) = match named {
            Some(found) => found,
            None if signatures.len() == 1 && !names_unknown_input(flag) => (0, flag.as_str()),
            None => {
                return Err(Failure::Usage(format!(
                    "--input `{flag}` names no input; use --input NAME=FILE.npy with one of the inputs ({listing})"
                )))
            }
        };
        if files[position].replace(PathBuf::from(path)).is_some() {
            return Err(Failure::Usage(format!(
                "input `{}` is given twice",
                names[position]
            )));
        }
    }
    let missing: Vec<&str> = names
        .iter()
        .zip(&files)
        .filter(|(_, file)| file.is_none())
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(Failure::Usage(format!(
            "no --input for {} (the network's inputs: {listing})",
            missing.join(", ")
        )));
    }
    Ok(files.into_iter().flatten().collect())
}

/// `x=data.npy` where `x` looks like an input name and no file is called `x=data.npy`.
fn names_unknown_input(flag: &str) -> bool {
    let Some((name, _)) = flag.split_once('=') else {
        return false;
    };
    let identifier =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    identifier && !Path::new(flag).exists()
}

/// Reads one npy input as f32: id inputs accept int64, int32 or float arrays of exact integers.
pub fn read_input(signature: &InputSignature, path: &Path) -> Result<Tensor<f32>, Failure> {
    let array = read_npy(path).map_err(weights_failure)?;
    let origin = format!("input `{}` (`{}`)", signature.name, path.display());
    if !signature.integer {
        return array.into_f32().map_err(weights_failure);
    }
    let ids = array.into_i64().map_err(|error| match error {
        WeightsError::NotRepresentable { index, value, .. } => Failure::Runtime(format!(
            "{origin} holds ids, which must be whole numbers, but element {index} is {value}"
        )),
        other => Failure::Runtime(other.to_string()),
    })?;
    // Every integer up to 2^24 is exactly an f32; ids beyond would index no real table.
    let mut data = Vec::with_capacity(ids.data.len());
    for (index, id) in ids.data.iter().enumerate() {
        if id.unsigned_abs() > 1 << 24 {
            return Err(Failure::Runtime(format!(
                "{origin}: id {id} at element {index} is larger than 2^24"
            )));
        }
        data.push(*id as f32);
    }
    Ok(Tensor {
        shape: ids.shape,
        data,
    })
}

/// An unreadable file is a usage error; a file that is not a valid array is a runtime error.
fn weights_failure(error: WeightsError) -> Failure {
    match error {
        WeightsError::Read { .. } => Failure::Usage(error.to_string()),
        _ => Failure::Runtime(error.to_string()),
    }
}

/// Where each output goes: the file `--output` names for one output (or `DIR/NAME.npy` when it
/// is an existing directory or ends in `/`), and `DIR/NAME.npy` in the directory `--output`
/// (created if needed) for several.
fn output_paths(model: &Model, output: &Path) -> Result<Vec<PathBuf>, Failure> {
    let names = model.output_names();
    let names_directory = output.is_dir() || output.to_string_lossy().ends_with(['/', '\\']);
    if names.len() == 1 && !names_directory {
        return Ok(vec![output.to_path_buf()]);
    }
    if names.len() > 1
        && output
            .extension()
            .is_some_and(|extension| extension == "npy")
    {
        return Err(Failure::Usage(format!(
            "the network has {} outputs ({}): --output must be a directory, not `{}`",
            names.len(),
            names.join(", "),
            output.display()
        )));
    }
    std::fs::create_dir_all(output).map_err(|error| {
        Failure::Usage(format!(
            "cannot create the output directory `{}`: {error}",
            output.display()
        ))
    })?;
    Ok(names
        .iter()
        .map(|name| output.join(format!("{name}.npy")))
        .collect())
}
