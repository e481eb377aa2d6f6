//! In-place parameter updates: outputs of a graph declared as the new values of parameters
//! ([`ParameterUpdate`]), which a run writes straight into the parameters' own buffers.
//!
//! A training step computes every weight's new value; returning those values and copying them
//! back would move all the weights twice per step and keep a second copy alive in the arena. So
//! the kernel that computes an update writes it where the parameter lives:
//! - an elementwise kernel (the SGD update `p - lr * g`, fused with whatever chain computes `g`)
//!   writes the parameter's buffer directly. It may read the parameter itself: generated code
//!   reads element `i` of every full-size input before writing element `i` (the contract the
//!   GEMM epilogues already use), and any input of the parameter's size is read at `i`;
//! - a GEMM or convolution with the update as its epilogue computes its product into scratch
//!   (which the memory plan sizes for it), then the epilogue writes the parameter;
//! - any other kernel computes into scratch, and the result is copied over the parameter.
//!
//! Writing early is only correct once nothing else needs the old value, so the steps are
//! rescheduled: each update step runs after every other step that reads its parameter (or a
//! reshape of it, or runs a scan over it), keeping the fusion's order otherwise (a list
//! schedule by original position). Updates whose value no step computes (a value that folded
//! away, or the parameter itself when its gradient simplified to zero) are copied after the last
//! step instead. Values folded at bind time are recomputed on every in-place run, from the
//! parameters as they are before the run; a training step's graph folds nothing from the
//! parameters it updates (`fuse::parameter_only`), since that would only add a copy per step.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::marker::PhantomData;

use super::bind::ParameterLookup;
use super::RuntimeError;
use crate::prim::{PrimGraph, PrimNodeId, PrimOp};
use crate::tensor::Tensor;

/// An output whose value replaces a parameter's data on every run (a training step's new
/// weights, batch norm's running statistics, an optimizer's momentum buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterUpdate {
    /// The graph output holding the new value.
    pub output: String,
    /// The parameter (by name, as `Parameter` nodes and the bound tensors name it) it replaces.
    pub parameter: String,
}

/// Checks `updates` against `graph` (each names an output, no parameter is updated twice, the
/// value has the parameter's shape) and returns each update's output position with its
/// parameter. A parameter the graph does not read is added to `user_parameters`, so a run
/// still binds the buffer it writes.
pub(super) fn resolve_updates(
    graph: &PrimGraph,
    updates: &[ParameterUpdate],
    user_parameters: &mut Vec<(String, Vec<usize>)>,
) -> Result<Vec<(usize, String)>, RuntimeError> {
    let mut update_positions = Vec::with_capacity(updates.len());
    for (index, update) in updates.iter().enumerate() {
        let position = graph
            .outputs
            .iter()
            .position(|(name, _)| *name == update.output)
            .ok_or_else(|| {
                RuntimeError::Internal(format!(
                    "update output `{}` is not an output",
                    update.output
                ))
            })?;
        if updates[..index]
            .iter()
            .any(|other| other.parameter == update.parameter)
        {
            return Err(RuntimeError::Internal(format!(
                "parameter `{}` is updated twice",
                update.parameter
            )));
        }
        let shape = graph.node(graph.outputs[position].1).ty.shape.clone();
        match user_parameters
            .iter()
            .find(|(name, _)| *name == update.parameter)
        {
            Some((_, expected)) if *expected != shape => {
                return Err(RuntimeError::Internal(format!(
                    "update `{}` has shape {shape:?}, but parameter `{}` has {expected:?}",
                    update.output, update.parameter
                )))
            }
            Some(_) => {}
            None => user_parameters.push((update.parameter.clone(), shape)),
        }
        update_positions.push((position, update.parameter.clone()));
    }
    Ok(update_positions)
}

/// The tensors of an in-place run by name: their shapes and raw buffers. Built from exclusive
/// borrows of the caller's tensors, held for the whole run (`'t`), so nothing else reads or
/// writes them meanwhile; kernels read them through shared slices made per step and the update
/// steps write them through the raw pointers.
pub(super) struct ParameterBuffers<'t> {
    buffers: HashMap<String, Buffer>,
    _borrow: PhantomData<&'t mut Tensor<f32>>,
}

struct Buffer {
    shape: Vec<usize>,
    data: *mut f32,
    len: usize,
}

impl<'t> ParameterBuffers<'t> {
    pub fn new(tensors: impl IntoIterator<Item = (&'t str, &'t mut Tensor<f32>)>) -> Self {
        let buffers = tensors
            .into_iter()
            .map(|(name, tensor)| {
                let buffer = Buffer {
                    shape: tensor.shape.clone(),
                    data: tensor.data.as_mut_ptr(),
                    len: tensor.data.len(),
                };
                (name.to_string(), buffer)
            })
            .collect();
        ParameterBuffers {
            buffers,
            _borrow: PhantomData,
        }
    }

    /// Checks that every parameter the program reads or writes is here, with its shape and as
    /// many elements.
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<(), RuntimeError> {
        for (name, shape) in expected {
            let buffer = self
                .buffers
                .get(name)
                .ok_or_else(|| RuntimeError::MissingParameter { name: name.clone() })?;
            if buffer.shape != *shape {
                return Err(RuntimeError::ParameterShape {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: buffer.shape.clone(),
                });
            }
            let expected_len: usize = shape.iter().product();
            if buffer.len != expected_len {
                return Err(RuntimeError::ParameterData {
                    name: name.clone(),
                    shape: shape.clone(),
                    expected_len,
                    found_len: buffer.len,
                });
            }
        }
        Ok(())
    }
}

impl ParameterLookup for ParameterBuffers<'_> {
    fn lookup(&self, name: &str) -> Option<&[f32]> {
        let buffer = self.buffers.get(name)?;
        // SAFETY: the pointer and length come from a `Vec<f32>` borrowed exclusively for `'t`,
        // which outlives `self`; see the type's doc for who writes it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(buffer.data, buffer.len) })
    }

    fn writable(&self, name: &str) -> Option<(*mut f32, usize)> {
        let buffer = self.buffers.get(name)?;
        Some((buffer.data, buffer.len))
    }
}

/// How a program writes its updates, decided when it is compiled.
#[derive(Debug, Default)]
pub(super) struct UpdatePlan {
    /// Steps whose output is written straight into a parameter: output node -> index into
    /// the plan's parameters.
    pub in_place: HashMap<PrimNodeId, usize>,
    /// Values copied over parameters after the last step: (value, parameter index).
    pub copied: Vec<(PrimNodeId, usize)>,
    /// Positions (in the graph's outputs) of update outputs, which a run does not return.
    pub update_outputs: HashSet<usize>,
}

/// The order and placement [`schedule_updates`] chose.
pub(super) struct UpdateSchedule {
    /// Step indices in execution order.
    pub order: Vec<usize>,
    /// (step index, parameter name) of each update written in place.
    pub in_place: Vec<(usize, String)>,
    /// (value, parameter name) of each update copied at the end.
    pub copied: Vec<(PrimNodeId, String)>,
}

/// Chooses which updates are written in place and reorders the steps so that each runs after
/// every other reader of its parameter. `step_outputs[i]` and `step_reads[i]` describe step `i`
/// (in the fusion's order), `writes_in_place[i]` whether it is an elementwise or GEMM/convolution
/// kernel, the kinds that can write a parameter; `aliases` are `(reshape, operand)` pairs
/// sharing memory.
pub(super) fn schedule_updates(
    graph: &PrimGraph,
    step_outputs: &[PrimNodeId],
    step_reads: &[Vec<PrimNodeId>],
    writes_in_place: &[bool],
    aliases: &[(PrimNodeId, PrimNodeId)],
    updates: &[(PrimNodeId, String)],
) -> UpdateSchedule {
    let mut root_of: HashMap<PrimNodeId, PrimNodeId> = HashMap::new();
    for (alias, operand) in aliases {
        let root = root_of.get(operand).copied().unwrap_or(*operand);
        root_of.insert(*alias, root);
    }
    let root = |id: PrimNodeId| root_of.get(&id).copied().unwrap_or(id);
    let step_of: HashMap<PrimNodeId, usize> = step_outputs
        .iter()
        .enumerate()
        .map(|(step, output)| (*output, step))
        .collect();
    let parameter_read = |read: PrimNodeId| match &graph.node(root(read)).op {
        PrimOp::Parameter { name, .. } => Some(name.clone()),
        _ => None,
    };
    let mut in_place = Vec::new();
    let mut copied = Vec::new();
    let mut targets_seen: HashSet<PrimNodeId> = HashSet::new();
    for (value, parameter) in updates {
        let shared = updates.iter().filter(|(other, _)| other == value).count() > 1;
        match step_of.get(value) {
            Some(step) if writes_in_place[*step] && !shared && targets_seen.insert(*value) => {
                in_place.push((*step, parameter.clone()))
            }
            _ => copied.push((*value, parameter.clone())),
        }
    }
    // Edges: data dependencies, then write-after-read for each in-place update.
    let count = step_outputs.len();
    let mut successors: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (step, reads) in step_reads.iter().enumerate() {
        for read in reads {
            if let Some(producer) = step_of.get(&root(*read)) {
                if *producer != step {
                    successors[*producer].push(step);
                }
            }
        }
    }
    for (writer, parameter) in &in_place {
        for (step, reads) in step_reads.iter().enumerate() {
            let reads_old_value = reads
                .iter()
                .any(|read| parameter_read(*read).as_deref() == Some(parameter.as_str()));
            if step != *writer && reads_old_value {
                successors[step].push(*writer);
            }
        }
    }
    let mut urgent = vec![false; count];
    for (step, _) in &in_place {
        urgent[*step] = true;
    }
    match list_schedule(&successors, &urgent) {
        Some(order) => UpdateSchedule {
            order,
            in_place,
            copied,
        },
        // A step that reads both a parameter's old and new value: keep the fusion's order and
        // copy every update at the end, which is always correct.
        None => {
            let steps_copied = in_place
                .into_iter()
                .map(|(step, parameter)| (step_outputs[step], parameter));
            UpdateSchedule {
                order: (0..count).collect(),
                in_place: Vec::new(),
                copied: steps_copied.chain(copied).collect(),
            }
        }
    }
}

/// A topological order of the steps that takes, at each point, an `urgent` ready step if there
/// is one, else the ready step that came first in the original order; `None` when the edges
/// have a cycle. Updates are urgent: run as soon as their parameter's last reader is done, they
/// free their gradient's memory early instead of keeping every gradient alive to the end.
fn list_schedule(successors: &[Vec<usize>], urgent: &[bool]) -> Option<Vec<usize>> {
    let mut pending = vec![0usize; successors.len()];
    for targets in successors {
        for target in targets {
            pending[*target] += 1;
        }
    }
    let key = |step: usize| Reverse((!urgent[step], step));
    let mut ready: BinaryHeap<Reverse<(bool, usize)>> = (0..successors.len())
        .filter(|step| pending[*step] == 0)
        .map(key)
        .collect();
    let mut order = Vec::with_capacity(successors.len());
    while let Some(Reverse((_, step))) = ready.pop() {
        order.push(step);
        for target in &successors[step] {
            pending[*target] -= 1;
            if pending[*target] == 0 {
                ready.push(key(*target));
            }
        }
    }
    (order.len() == successors.len()).then_some(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::InstancePath;
    use crate::prim::{BinaryFn, Origin, TensorType};

    /// `g = x * x`, `u = p - g` (the update of `p`), `r = p * x`: steps in that order.
    fn graph() -> (PrimGraph, [PrimNodeId; 5]) {
        let origin = Origin {
            path: InstancePath(vec!["test".into()]),
            span: crate::syntax::Span::new(crate::syntax::SourceId::Spec, 0, 0),
        };
        let mut graph = PrimGraph::default();
        let x = graph.add_input("x", TensorType::float(vec![4]), origin.clone());
        let parameter = PrimOp::Parameter {
            name: "p".into(),
            shape: vec![4],
        };
        let p = graph.add(parameter, &[], origin.clone()).unwrap();
        let mul = PrimOp::Binary(BinaryFn::Mul);
        let g = graph.add(mul.clone(), &[x, x], origin.clone()).unwrap();
        let u = graph
            .add(PrimOp::Binary(BinaryFn::Sub), &[p, g], origin.clone())
            .unwrap();
        let r = graph.add(mul, &[p, x], origin).unwrap();
        (graph, [x, p, g, u, r])
    }

    #[test]
    fn an_update_runs_after_every_other_reader_of_its_parameter() {
        let (graph, [x, p, g, u, r]) = graph();
        let schedule = schedule_updates(
            &graph,
            &[g, u, r],
            &[vec![x, x], vec![p, g], vec![p, x]],
            &[true, true, true],
            &[],
            &[(u, "p".to_string())],
        );
        assert_eq!(schedule.order, vec![0, 2, 1]);
        assert_eq!(schedule.in_place, vec![(1, "p".to_string())]);
        assert!(schedule.copied.is_empty());
    }

    #[test]
    fn a_step_reading_old_and_new_values_falls_back_to_copying() {
        let (graph, [x, p, g, u, r]) = graph();
        // The third step reads `p` and the update `u`: it must run both before and after it.
        let schedule = schedule_updates(
            &graph,
            &[g, u, r],
            &[vec![x, x], vec![p, g], vec![p, u]],
            &[true, true, true],
            &[],
            &[(u, "p".to_string())],
        );
        assert_eq!(schedule.order, vec![0, 1, 2]);
        assert!(schedule.in_place.is_empty());
        assert_eq!(schedule.copied, vec![(u, "p".to_string())]);
    }

    #[test]
    fn kernels_that_cannot_write_a_parameter_copy_their_update() {
        let (graph, [x, p, g, u, r]) = graph();
        let schedule = schedule_updates(
            &graph,
            &[g, u, r],
            &[vec![x, x], vec![p, g], vec![p, x]],
            &[true, false, true],
            &[],
            &[(u, "p".to_string())],
        );
        assert!(schedule.in_place.is_empty());
        assert_eq!(schedule.copied, vec![(u, "p".to_string())]);
    }
}
