//! What a network takes as input, with its symbolic dims, and the symbol values that concrete
//! input shapes imply (`image: [N, 784]` given `[64, 784]` means `N = 64`).

use std::collections::BTreeMap;
use std::fmt;

use super::ApiError;
use crate::ir::{Dim, ElementType, Op};
use crate::lower::SymbolValues;
use crate::Compilation;

/// One input of a network, in the order the forward pass takes inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSignature {
    pub name: String,
    pub dims: Vec<SignatureDim>,
    /// Token or class ids (an `int` input): values must be whole numbers.
    pub integer: bool,
}

/// A dim of an input: a fixed size, or a symbol (`N`, `T`) fixed when the network is specialized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureDim {
    Fixed(usize),
    Symbol(String),
}

impl InputSignature {
    /// The concrete shape at the given symbol values (`None` if a symbol has no value).
    pub fn shape(&self, symbols: &SymbolValues) -> Option<Vec<usize>> {
        self.dims
            .iter()
            .map(|dim| match dim {
                SignatureDim::Fixed(size) => Some(*size),
                SignatureDim::Symbol(name) => symbols.get(name),
            })
            .collect()
    }

    /// `[N, 784]`, the dims as the spec writes them.
    pub fn dims_text(&self) -> String {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|dim| match dim {
                SignatureDim::Fixed(size) => size.to_string(),
                SignatureDim::Symbol(name) => name.clone(),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

impl fmt::Display for InputSignature {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.name, self.dims_text())?;
        if self.integer {
            write!(formatter, " int")?;
        }
        Ok(())
    }
}

/// The inputs of a checked spec's forward pass, with the sizes that overrides gave them. Inputs
/// that only the loss reads (labels) are not among them, as in the graph lowered without losses.
pub(crate) fn input_signatures(compilation: &Compilation) -> Vec<InputSignature> {
    let network = &compilation.network;
    let mut signatures = Vec::new();
    for id in network.forward_inputs() {
        let Op::Input { name, .. } = &network.graph.node(id).op else {
            continue;
        };
        let info = compilation.shapes.table.info(id);
        let dims = info
            .shape
            .iter()
            .map(|dim| match dim {
                Dim::Known(size) => SignatureDim::Fixed(*size as usize),
                Dim::Symbolic(symbol) => SignatureDim::Symbol(network.symbol(*symbol).name.clone()),
            })
            .collect();
        signatures.push(InputSignature {
            name: name.clone(),
            dims,
            integer: info.element_type == ElementType::Int64,
        });
    }
    signatures
}

/// Binds every symbol that appears in an input to the size found there; fixed dims and the
/// rank must match, and a symbol must have one size across all inputs. Symbols that no input
/// mentions keep their values in `defaults`.
pub(crate) fn bind_symbols(
    signatures: &[InputSignature],
    shapes: &[&[usize]],
    defaults: SymbolValues,
) -> Result<SymbolValues, ApiError> {
    check_count(signatures, shapes.len())?;
    let mut symbols = defaults;
    // Where each symbol got its value, for the message when another input disagrees.
    let mut bound_by: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (signature, shape) in signatures.iter().zip(shapes) {
        let shape_error = || ApiError::InputShape {
            name: signature.name.clone(),
            expected: signature.dims_text(),
            found: shape.to_vec(),
        };
        if signature.dims.len() != shape.len() {
            return Err(shape_error());
        }
        for (dim, &size) in signature.dims.iter().zip(shape.iter()) {
            match dim {
                SignatureDim::Fixed(fixed) if *fixed != size => return Err(shape_error()),
                SignatureDim::Fixed(_) => {}
                SignatureDim::Symbol(_) if size == 0 => return Err(shape_error()),
                SignatureDim::Symbol(symbol) => match bound_by.get(symbol.as_str()) {
                    Some(&(first, first_input)) if first != size => {
                        return Err(ApiError::InconsistentSymbol {
                            symbol: symbol.clone(),
                            first,
                            first_input: first_input.to_string(),
                            second: size,
                            second_input: signature.name.clone(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        bound_by.insert(symbol, (size, &signature.name));
                        symbols.set(symbol, size);
                    }
                },
            }
        }
    }
    Ok(symbols)
}

/// The number of inputs given matches the network's.
pub(crate) fn check_count(signatures: &[InputSignature], found: usize) -> Result<(), ApiError> {
    if signatures.len() == found {
        return Ok(());
    }
    let names: Vec<&str> = signatures.iter().map(|input| input.name.as_str()).collect();
    Err(ApiError::InputCount {
        expected: signatures.len(),
        found,
        names: names.join(", "),
    })
}
