//! What `nnc build` adds for a spec that declares a loss: the training step's cost and memory,
//! and `--emit grad` / `--emit recompute`.
//!
//! The training step here is the gradient graph (training-mode lowering with the loss,
//! `autodiff::training_gradient`: differentiated and simplified) after the keep-or-recompute
//! pass (`autodiff::rematerialize`). Its lines follow the forward pass's:
//! - backward MACs and FLOPs, counted node by node on the backward part of that graph
//!   (`prim::cost`, the report's conventions) at the report sizes (batch 1), like the forward
//!   MACs above them: not "2x forward";
//! - the planned peak of one step at `--batch` (default 1), from the memory plan of the
//!   compiled step, split into parameters, gradients, saved activations and workspace
//!   (`runtime::peak_memory`);
//! - the JIT compile time of the step's forward kernels and of its backward kernels.
//!
//! JSON gains a last key `training` (`null` without a loss).

use std::time::Duration;

use nnc::api::Model;
use nnc::autodiff::{forward_nodes, rematerialize, training_gradient, TrainingGraphError};
use nnc::lower::SymbolValues;
use nnc::prim::cost::{nodes_cost, Cost};
use nnc::prim::PrimGraph;
use nnc::report::table::group_digits;
use nnc::runtime::peak_memory::{training_peak, PeakMemory};
use nnc::runtime::Executable;

use super::{describe_symbols, human_bytes, milliseconds, symbols_from_flags};
use crate::Failure;

/// What was measured of the training step, or why it could not be.
pub struct TrainingFacts {
    backward: Result<(Cost, Cost), String>,
    step: Result<StepFacts, String>,
    symbols: String,
}

struct StepFacts {
    peak: PeakMemory,
    forward_jit: Duration,
    backward_jit: Duration,
}

/// `--emit grad`: the simplified gradient graph at the report sizes (batch 1).
pub fn gradient_listing(
    compilation: &nnc::Compilation,
    spec: &SpecText,
) -> Result<String, Failure> {
    let symbols = SymbolValues::report_values(&compilation.network);
    let training = training_gradient(compilation, &symbols).map_err(|error| spec.failure(error))?;
    Ok(nnc::prim::print::print_graph(&training.graph))
}

/// `--emit recompute`: which forward values the backward pass keeps or recomputes, at the
/// report sizes.
pub fn recompute_listing(
    compilation: &nnc::Compilation,
    spec: &SpecText,
) -> Result<String, Failure> {
    let symbols = SymbolValues::report_values(&compilation.network);
    let training = training_gradient(compilation, &symbols).map_err(|error| spec.failure(error))?;
    Ok(rematerialize(&training.graph).1.table())
}

/// The spec's file name and text, for diagnostics.
pub struct SpecText<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl SpecText<'_> {
    /// A spec without a loss points at the end of the file, where the statement would go; a
    /// lowering or differentiation failure is a bug in nnc or a size problem, said plainly.
    fn failure(&self, error: TrainingGraphError) -> Failure {
        match error {
            TrainingGraphError::NoLoss => {
                let end = self.text.trim_end().len();
                let span = nnc::syntax::Span::new(nnc::syntax::SourceId::Spec, end, end);
                let diagnostic = nnc::diagnostic::Diagnostic::error(
                    "the spec declares no loss; add `loss ...`",
                )
                .with_primary(span, "a `loss` statement would go here")
                .with_note(
                    "hint: for example `loss cross_entropy(logits, label)` (see docs/language.md)",
                );
                Failure::Spec(nnc::render_diagnostics(&[diagnostic], self.name, self.text))
            }
            error => Failure::Spec(format!("error: {error}\n")),
        }
    }
}

/// Measures the training step at `--batch`/`--dim`; `None` when the spec declares no loss.
pub fn measure(
    model: &Model,
    batch: Option<usize>,
    dims: &[String],
) -> Result<Option<TrainingFacts>, Failure> {
    let compilation = model.compilation();
    let symbols = symbols_from_flags(model, batch, dims)?;
    let graph = match caught(|| Ok(training_step_graph(compilation, &symbols))) {
        Ok(None) => return Ok(None),
        Ok(Some(graph)) => graph,
        Err(reason) => Err(reason),
    };
    let (backward, step) = match graph {
        Ok(graph) => {
            let costs = forward_and_backward_cost(&graph);
            (Ok(costs), caught(|| step_facts(graph, model.threads())))
        }
        Err(reason) => (Err(reason.clone()), Err(reason)),
    };
    Ok(Some(TrainingFacts {
        backward,
        step,
        symbols: describe_symbols(model, &symbols),
    }))
}

/// Runs `work`, turning a panic (a bug in nnc) into an error, so the report still prints.
fn caught<T>(work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Err("internal error (a bug in nnc) while building the training step".to_string())
    })
}

/// The step's graph (gradient graph after keep-or-recompute), `None` without a loss, or why
/// it cannot be built at these sizes.
fn training_step_graph(
    compilation: &nnc::Compilation,
    symbols: &SymbolValues,
) -> Option<Result<PrimGraph, String>> {
    match training_gradient(compilation, symbols) {
        Ok(training) => Some(Ok(rematerialize(&training.graph).0)),
        Err(TrainingGraphError::NoLoss) => None,
        Err(error) => Some(Err(error.to_string())),
    }
}

/// The cost of the forward part and of the backward part (recomputation included).
fn forward_and_backward_cost(graph: &PrimGraph) -> (Cost, Cost) {
    let forward = forward_nodes(graph);
    let backward = graph.node_ids().filter(|id| !forward.contains(id));
    (
        nodes_cost(graph, forward.iter().copied()),
        nodes_cost(graph, backward),
    )
}

fn step_facts(graph: PrimGraph, threads: usize) -> Result<StepFacts, String> {
    let executable = Executable::new(graph, threads).map_err(|error| error.to_string())?;
    let forward = forward_nodes(&executable.fused().state.graph);
    let (mut forward_jit, mut backward_jit) = (Duration::ZERO, Duration::ZERO);
    for (output, time) in executable.kernel_compile_times() {
        match forward.contains(&output) {
            true => forward_jit += time,
            false => backward_jit += time,
        }
    }
    Ok(StepFacts {
        peak: training_peak(&executable),
        forward_jit,
        backward_jit,
    })
}

impl TrainingFacts {
    /// Lines in the style of the table's totals.
    pub fn table_lines(&self) -> String {
        let mut lines = match &self.backward {
            Ok((forward, backward)) => format!(
                "Backward MACs:     {:>16}  ({:.2}x the forward pass's {} at {}, counted on the gradient graph)\n\
                 Backward FLOPs:    {:>16}  (1 MAC = 2 FLOPs, plus {} elementwise and reductions)\n",
                group_digits(backward.macs),
                backward.macs as f64 / forward.macs.max(1) as f64,
                group_digits(forward.macs),
                self.symbols,
                group_digits(backward.flops()),
                group_digits(backward.other_flops),
            ),
            Err(reason) => format!("Backward MACs:     {:>16}  ({})\n", "unavailable", first_line(reason)),
        };
        lines.push_str(&match &self.step {
            Ok(step) => format!(
                "Training peak:     {:>16}  bytes ({} for one step at {}, f32: parameters {}, gradients {}, saved activations {}, workspace {})\n\
                 Training compile:  {:>16}  (JIT of the step at {}: forward kernels {}, backward kernels {})\n",
                group_digits(step.peak.total()),
                human_bytes(step.peak.total()),
                self.symbols,
                human_bytes(step.peak.parameters),
                human_bytes(step.peak.gradients),
                human_bytes(step.peak.saved_activations),
                human_bytes(step.peak.workspace),
                milliseconds(step.forward_jit + step.backward_jit),
                self.symbols,
                milliseconds(step.forward_jit),
                milliseconds(step.backward_jit),
            ),
            Err(reason) => format!(
                "Training peak:     {:>16}  (the training step at {} does not compile: {})\n",
                "unavailable",
                self.symbols,
                first_line(reason)
            ),
        });
        lines
    }

    /// The `training` object of the JSON report.
    fn json_value(&self) -> serde_json::Value {
        let (backward_macs, backward_flops) = match &self.backward {
            Ok((_, backward)) => (backward.macs.into(), backward.flops().into()),
            Err(_) => (serde_json::Value::Null, serde_json::Value::Null),
        };
        let (peak, forward_ms, backward_ms) = match &self.step {
            Ok(step) => (
                serde_json::json!({
                    "parameters": step.peak.parameters,
                    "gradients": step.peak.gradients,
                    "saved_activations": step.peak.saved_activations,
                    "workspace": step.peak.workspace,
                    "total": step.peak.total(),
                }),
                round_ms(step.forward_jit),
                round_ms(step.backward_jit),
            ),
            Err(_) => Default::default(),
        };
        serde_json::json!({
            "backward_macs": backward_macs,
            "backward_flops": backward_flops,
            "peak_bytes": peak,
            "forward_compile_ms": forward_ms,
            "backward_compile_ms": backward_ms,
        })
    }
}

/// Adds `"training"` as the last key of the JSON report: the facts, or `null` without a loss.
pub fn add_to_json(json: &str, facts: Option<&TrainingFacts>) -> String {
    let value = facts.map_or(serde_json::Value::Null, TrainingFacts::json_value);
    let rendered = serde_json::to_string_pretty(&value).unwrap_or_else(|_| "null".into());
    let rendered = rendered.replace('\n', "\n  ");
    let body = json.trim_end();
    match body.strip_suffix('}') {
        Some(open) => format!("{},\n  \"training\": {rendered}\n}}", open.trim_end()),
        None => json.to_string(),
    }
}

/// Milliseconds with three decimals, as `compile_ms`.
fn round_ms(duration: Duration) -> serde_json::Value {
    let ms = (duration.as_secs_f64() * 1e6).round() / 1e3;
    serde_json::json!(ms)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
