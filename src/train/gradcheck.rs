//! Gradient checks: the runtime's (f32, fused, JIT-compiled) gradients against two references
//! computed in f64 by the reference interpreter (`src/interpret`):
//! - the interpreter running the same gradient graph: whole tensors, compared norm-wise
//!   (`|jit - interpreter|_2 / |interpreter|_2`), which checks the runtime's kernels;
//! - central finite differences of the loss, `(L(p + h) - L(p - h)) / 2h` per element, which
//!   checks the gradient graph itself (autodiff's rules). Each finite difference costs two
//!   forward passes, so a parameter with more elements than `samples` has a seeded random
//!   sample of them checked. The error is the worst `|jit - fd|` over the checked elements,
//!   relative to the parameter's largest gradient element (or to a thousandth of the largest
//!   gradient element of any parameter, whichever is larger, so a parameter whose gradient is
//!   zero in exact arithmetic, such as a bias before batch norm, is judged against the
//!   gradient's scale rather than against rounding noise).
//!
//! Both run the graph lowered in training mode with the loss, on the same data, with run key 0
//! (so dropout draws the same mask in every evaluation).

use std::collections::BTreeMap;

use super::graph::{gradient_graph, lower_for_training};
use super::inputs::SplitMix;
use super::TrainError;
use crate::interpret::interpret;
use crate::lower::SymbolValues;
use crate::runtime::Executable;
use crate::tensor::Tensor;
use crate::weights::ParamStore;
use crate::Compilation;

/// How [`gradcheck`] samples and steps.
#[derive(Clone, Debug)]
pub struct GradcheckOptions {
    /// At most this many elements of each parameter get a finite difference.
    pub samples: usize,
    /// The finite-difference step `h` (absolute).
    pub step: f64,
    /// Seeds the choice of sampled elements.
    pub seed: u64,
    /// Kernel threads of the runtime.
    pub threads: usize,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            samples: 8,
            step: 1e-5,
            seed: 0,
            threads: 1,
        }
    }
}

/// The check of one trainable parameter.
#[derive(Clone, Debug)]
pub struct ParameterCheck {
    pub name: String,
    pub shape: Vec<usize>,
    /// How many elements got a finite difference (all of them when `checked == elements`).
    pub checked: usize,
    pub elements: usize,
    /// Worst error against finite differences (see the module doc).
    pub finite_difference_error: f64,
    /// `|jit - interpreter|_2 / |interpreter|_2` over the whole gradient.
    pub interpreter_error: f64,
    /// `|interpreter gradient|_2`, for context.
    pub gradient_norm: f64,
}

#[derive(Clone, Debug)]
pub struct GradcheckReport {
    /// The loss name and its value by the interpreter.
    pub loss_name: String,
    pub loss: f64,
    pub parameters: Vec<ParameterCheck>,
}

impl GradcheckReport {
    /// The largest error of either kind over every parameter.
    pub fn worst_error(&self) -> f64 {
        self.parameters
            .iter()
            .map(|check| check.finite_difference_error.max(check.interpreter_error))
            .fold(0.0, f64::max)
    }
}

/// Checks the gradient of the spec's loss with respect to every trainable parameter at `params`
/// on `data` (the data inputs of the graph lowered with the loss, in order).
pub fn gradcheck(
    compilation: &Compilation,
    symbols: &SymbolValues,
    params: &ParamStore,
    data: &[Tensor<f32>],
    options: &GradcheckOptions,
) -> Result<GradcheckReport, TrainError> {
    let (forward, loss_name) = lower_for_training(compilation, symbols)?;
    let trainable = crate::autodiff::trainable_parameters(compilation);
    let mut graph = gradient_graph(&forward, &loss_name, &|name| trainable.contains(name))?;
    // Only the loss and the trainable parameters' gradients, so neither the runtime nor the
    // interpreter returns more than the check reads.
    let loss_node = graph
        .outputs
        .iter()
        .find(|(name, _)| *name == loss_name)
        .map(|(_, id)| *id)
        .ok_or_else(|| TrainError::Internal("the gradient graph lost its loss".into()))?;
    let mut outputs = vec![(loss_name.clone(), loss_node)];
    for name in &trainable {
        let gradient = format!("grad.{name}");
        if let Some(output) = graph.outputs.iter().find(|(known, _)| *known == gradient) {
            outputs.push(output.clone());
        }
    }
    graph.outputs = outputs;
    let data_f64: Vec<Tensor<f64>> = data.iter().map(Tensor::to_f64).collect();
    let mut params_f64: BTreeMap<String, Tensor<f64>> = params
        .iter()
        .map(|(name, tensor)| (name.to_string(), tensor.to_f64()))
        .collect();
    let reference = interpret(&graph, &data_f64, &params_f64)?;
    let executable = Executable::new(graph.clone(), options.threads)?;
    let jit = executable.run(params, data)?;
    let largest_gradient = reference[1..]
        .iter()
        .flat_map(|tensor| tensor.data.iter())
        .fold(0.0f64, |max, value| max.max(value.abs()));
    let mut loss_only = forward.clone();
    loss_only.outputs.retain(|(name, _)| *name == loss_name);
    let mut numbers = SplitMix(options.seed ^ 0x6772_6164_6368_6563);
    let mut checks = Vec::new();
    for (position, (output_name, _)) in graph.outputs.iter().enumerate().skip(1) {
        let name = output_name.trim_start_matches("grad.").to_string();
        let (exact, ours) = (&reference[position], &jit[position]);
        let elements = exact.data.len();
        let indices = sampled_indices(elements, options.samples, &mut numbers);
        let scale = exact
            .data
            .iter()
            .fold(0.0f64, |max, value| max.max(value.abs()))
            .max(1e-3 * largest_gradient)
            .max(f64::MIN_POSITIVE);
        let mut finite_difference_error = 0.0f64;
        for index in &indices {
            let difference = central_difference(
                &loss_only,
                &data_f64,
                &mut params_f64,
                &name,
                *index,
                options.step,
            )?;
            let deviation = (ours.data[*index] as f64 - difference).abs();
            finite_difference_error = finite_difference_error.max(deviation / scale);
        }
        let (interpreter_error, gradient_norm) = norm_error(&ours.data, &exact.data);
        checks.push(ParameterCheck {
            name,
            shape: exact.shape.clone(),
            checked: indices.len(),
            elements,
            finite_difference_error,
            interpreter_error,
            gradient_norm,
        });
    }
    Ok(GradcheckReport {
        loss_name,
        loss: reference[0].data.first().copied().unwrap_or(f64::NAN),
        parameters: checks,
    })
}

/// `|ours - exact|_2 / |exact|_2` (the absolute norm when `exact` is zero) and `|exact|_2`.
pub fn norm_error(ours: &[f32], exact: &[f64]) -> (f64, f64) {
    let exact_norm = exact.iter().map(|value| value * value).sum::<f64>().sqrt();
    let deviation = ours
        .iter()
        .zip(exact)
        .map(|(a, b)| (*a as f64 - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let error = if exact_norm > 0.0 {
        deviation / exact_norm
    } else {
        deviation
    };
    (error, exact_norm)
}

/// Every index when there are at most `samples`, else `samples` distinct ones drawn at random
/// (in increasing order).
fn sampled_indices(elements: usize, samples: usize, numbers: &mut SplitMix) -> Vec<usize> {
    if elements <= samples {
        return (0..elements).collect();
    }
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < samples {
        chosen.insert(numbers.below(elements));
    }
    chosen.into_iter().collect()
}

/// `(L(p + h e_i) - L(p - h e_i)) / 2h` for element `index` of parameter `name`, through the
/// interpreter; leaves the parameter as it was.
fn central_difference(
    loss_only: &crate::prim::PrimGraph,
    data: &[Tensor<f64>],
    params: &mut BTreeMap<String, Tensor<f64>>,
    name: &str,
    index: usize,
    step: f64,
) -> Result<f64, TrainError> {
    let original = params
        .get(name)
        .and_then(|tensor| tensor.data.get(index).copied())
        .ok_or_else(|| TrainError::Internal(format!("no element {index} of `{name}`")))?;
    let mut loss_at = |value: f64| -> Result<f64, TrainError> {
        if let Some(tensor) = params.get_mut(name) {
            tensor.data[index] = value;
        }
        let outputs = interpret(loss_only, data, params)?;
        Ok(outputs[0].data[0])
    };
    let above = loss_at(original + step);
    let below = loss_at(original - step);
    if let Some(tensor) = params.get_mut(name) {
        tensor.data[index] = original;
    }
    Ok((above? - below?) / (2.0 * step))
}
