//! Binding parameters: checking the user's tensors against the compiled shapes, and computing
//! the folded values (the bind graph of `src/fuse`) from them.
//!
//! [`Executable::bind`](super::Executable::bind) computes the folded values once for a borrowed
//! parameter store, which cannot change while it is bound. [`Executable::run`](super::Executable::run)
//! takes the store anew on every call, so it keeps the last folded values together with a copy
//! of the tensors they came from, and reuses them only when those tensors are bit-for-bit the
//! same; a store updated in place (training) gets fresh values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::program::Program;
use super::RuntimeError;
use crate::prim::{PrimGraph, PrimOp};
use crate::weights::ParamStore;

/// The folded parameters' values by name.
#[derive(Debug, Default)]
pub(super) struct FoldedValues {
    values: HashMap<String, Vec<f32>>,
}

/// Where a run finds the user's parameters by name: a [`ParamStore`] for ordinary runs, the
/// writable buffers of an in-place run (`in_place.rs`).
pub(super) trait ParameterLookup {
    fn lookup(&self, name: &str) -> Option<&[f32]>;

    /// The buffer an in-place update writes; `None` where parameters are read-only.
    fn writable(&self, _name: &str) -> Option<(*mut f32, usize)> {
        None
    }
}

impl ParameterLookup for ParamStore {
    fn lookup(&self, name: &str) -> Option<&[f32]> {
        self.get(name).map(|tensor| tensor.data.as_slice())
    }
}

/// Parameter values for one run, by name: folded values first, then the user's tensors.
pub(super) struct ParameterValues<'a> {
    pub user: &'a dyn ParameterLookup,
    pub folded: &'a FoldedValues,
}

impl<'a> ParameterValues<'a> {
    pub fn get(&self, name: &str) -> Result<&'a [f32], RuntimeError> {
        if let Some(value) = self.folded.values.get(name) {
            return Ok(value);
        }
        self.user
            .lookup(name)
            .ok_or_else(|| RuntimeError::MissingParameter {
                name: name.to_string(),
            })
    }
}

/// The last folded values `run` computed and the user tensors they came from.
#[derive(Default)]
pub(super) struct FoldCache {
    entry: Mutex<Option<CacheEntry>>,
}

struct CacheEntry {
    sources: Vec<(String, Vec<f32>)>,
    folded: Arc<FoldedValues>,
}

impl FoldCache {
    /// The folded values for `params`: the cached ones when their sources are unchanged.
    pub fn get_or_compute(
        &self,
        bind: &Program,
        params: &ParamStore,
    ) -> Result<Arc<FoldedValues>, RuntimeError> {
        let mut entry = self
            .entry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = entry.as_ref() {
            let unchanged = cached.sources.iter().all(|(name, data)| {
                params
                    .get(name)
                    .is_some_and(|tensor| same_bits(&tensor.data, data))
            });
            if unchanged {
                return Ok(Arc::clone(&cached.folded));
            }
        }
        let folded = Arc::new(evaluate(bind, params)?);
        let sources = bind
            .plan
            .parameters
            .iter()
            .filter_map(|name| {
                params
                    .get(name)
                    .map(|tensor| (name.clone(), tensor.data.clone()))
            })
            .collect();
        *entry = Some(CacheEntry {
            sources,
            folded: Arc::clone(&folded),
        });
        Ok(folded)
    }
}

/// Runs the bind program on the user's parameters; its outputs are the folded values.
pub(super) fn evaluate(
    bind: &Program,
    params: &dyn ParameterLookup,
) -> Result<FoldedValues, RuntimeError> {
    let no_folded = FoldedValues::default();
    let parameters = ParameterValues {
        user: params,
        folded: &no_folded,
    };
    // Run key 0: random ops never depend on parameters only, so the bind graph has none.
    let outputs = bind.run(&parameters, &[], 1, 0)?;
    let values = bind
        .graph
        .outputs
        .iter()
        .zip(outputs)
        .map(|((name, _), tensor)| (name.clone(), tensor.data))
        .collect();
    Ok(FoldedValues { values })
}

/// Every parameter the user must bind, with its shape: the `Parameter` nodes of the graph and
/// of its scan bodies, once per name.
pub(super) fn user_parameters(graph: &PrimGraph) -> Vec<(String, Vec<usize>)> {
    let mut found: Vec<(String, Vec<usize>)> = Vec::new();
    collect_parameters(graph, &mut found);
    found
}

fn collect_parameters(graph: &PrimGraph, found: &mut Vec<(String, Vec<usize>)>) {
    let mut ids: Vec<_> = graph.node_ids().collect();
    ids.sort();
    for id in ids {
        match &graph.node(id).op {
            PrimOp::Parameter { name, shape } if !found.iter().any(|(known, _)| known == name) => {
                found.push((name.clone(), shape.clone()));
            }
            PrimOp::Scan { body, .. } => collect_parameters(&body.graph, found),
            _ => {}
        }
    }
}

/// Checks that `params` has every parameter, with the right shape and as many elements.
pub(super) fn check_parameters(
    expected: &[(String, Vec<usize>)],
    params: &ParamStore,
) -> Result<(), RuntimeError> {
    for (name, shape) in expected {
        let tensor = params
            .get(name)
            .ok_or_else(|| RuntimeError::MissingParameter { name: name.clone() })?;
        if tensor.shape != *shape {
            return Err(RuntimeError::ParameterShape {
                name: name.clone(),
                expected: shape.clone(),
                found: tensor.shape.clone(),
            });
        }
        let expected_len: usize = shape.iter().product();
        if tensor.data.len() != expected_len {
            return Err(RuntimeError::ParameterData {
                name: name.clone(),
                shape: shape.clone(),
                expected_len,
                found_len: tensor.data.len(),
            });
        }
    }
    Ok(())
}

/// Bit-for-bit equality (so a NaN equals itself), as one `memcmp`.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    // SAFETY: `u32` has the size and alignment of `f32`, and every bit pattern is a valid `u32`.
    let as_bits = |values: &[f32]| unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u32>(), values.len())
    };
    as_bits(a) == as_bits(b)
}
