//! The static memory plan: every value a kernel leaves in memory gets a range of one arena,
//! and values whose lifetimes do not overlap share memory. Lifetimes follow the kernel steps: a
//! value lives from the step that writes it to the last step that reads it (graph outputs to
//! the end). Offsets are assigned greedily, largest value first, at the lowest offset that does
//! not overlap a value alive at the same time (the "greedy by size" heuristic of TFLite's arena
//! planner), and aligned to 16 floats (64 bytes, a cache line).
//!
//! Values inside a fused kernel never reach memory, so they get no range. A reshape *aliases*
//! its operand: it gets the operand's location, and the operand lives as long as any alias is
//! read. That is always safe, because no kernel writes a value in place of one still alive
//! (the epilogue that runs in place over a GEMM's output owns that buffer alone). A kernel's
//! scratch (a convolution's column matrix) is one more range, alive during its step only.

use std::collections::HashMap;

use crate::prim::{PrimGraph, PrimNodeId, PrimOp};

/// Floats per alignment unit: 64 bytes.
const ALIGN: usize = 16;

/// Where a value lives during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Graph input number `index`, read from the caller's buffer.
    Input(usize),
    /// A bound parameter, by its index in [`MemoryPlan::parameters`].
    Parameter(usize),
    /// A constant, by its index in [`MemoryPlan::constants`].
    Constant(usize),
    /// `arena[offset..offset + len]`.
    Arena { offset: usize, len: usize },
}

/// What the planner needs to know of one kernel step.
#[derive(Clone, Debug)]
pub struct PlanStep {
    /// The value the step writes (`None` for a step that writes nothing).
    pub output: Option<PrimNodeId>,
    /// The values it reads from memory.
    pub reads: Vec<PrimNodeId>,
    /// Floats of scratch it needs during the step.
    pub scratch_len: usize,
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub locations: HashMap<PrimNodeId, Location>,
    /// Each step's scratch range `(offset, len)`, if it has one.
    pub scratch: Vec<Option<(usize, usize)>>,
    /// Parameter names in index order.
    pub parameters: Vec<String>,
    pub constants: Vec<PrimNodeId>,
    /// Floats of arena the run needs: the planned peak of intermediate values and scratch.
    pub arena_len: usize,
    /// Floats all intermediate values would need without reusing memory.
    pub unshared_len: usize,
    /// The steps during which each arena value is alive: `(first, last)`, where graph outputs
    /// last to `steps.len()` (reports find what is alive at the peak from these).
    pub lifetimes: HashMap<PrimNodeId, (usize, usize)>,
}

impl MemoryPlan {
    /// The arena range of a value, if it lives in the arena.
    pub fn arena_range(&self, id: PrimNodeId) -> Option<(usize, usize)> {
        match self.locations.get(&id) {
            Some(Location::Arena { offset, len }) => Some((*offset, *len)),
            _ => None,
        }
    }
}

/// Plans memory for `steps` (in execution order) over `graph`, where each `(alias, operand)`
/// of `aliases` (in schedule order) shares its operand's memory. Inputs, parameters and
/// constants get their own locations outside the arena.
pub fn plan_memory(
    graph: &PrimGraph,
    steps: &[PlanStep],
    aliases: &[(PrimNodeId, PrimNodeId)],
) -> MemoryPlan {
    let mut locations = HashMap::new();
    let mut parameters = Vec::new();
    let mut constants = Vec::new();
    let mut ids: Vec<PrimNodeId> = graph.node_ids().collect();
    ids.sort();
    for id in ids {
        match &graph.node(id).op {
            PrimOp::Input { index, .. } => {
                locations.insert(id, Location::Input(*index));
            }
            PrimOp::Parameter { name, .. } => {
                locations.insert(id, Location::Parameter(parameters.len()));
                parameters.push(name.clone());
            }
            PrimOp::Constant(_) => {
                locations.insert(id, Location::Constant(constants.len()));
                constants.push(id);
            }
            _ => {}
        }
    }
    let mut root_of: HashMap<PrimNodeId, PrimNodeId> = HashMap::new();
    for (alias, operand) in aliases {
        let root = root_of.get(operand).copied().unwrap_or(*operand);
        root_of.insert(*alias, root);
    }
    let root = |id: PrimNodeId| root_of.get(&id).copied().unwrap_or(id);
    let mut intervals: Vec<Interval> = Vec::new();
    let mut interval_of: HashMap<PrimNodeId, usize> = HashMap::new();
    for (step, plan_step) in steps.iter().enumerate() {
        if let Some(output) = plan_step.output {
            interval_of.insert(output, intervals.len());
            let len = graph.node(output).ty.element_count();
            intervals.push(Interval {
                owner: Owner::Value(output),
                start: step,
                end: step,
                len,
            });
        }
        for read in &plan_step.reads {
            if let Some(index) = interval_of.get(&root(*read)) {
                intervals[*index].end = intervals[*index].end.max(step);
            }
        }
    }
    // Outputs stay alive to the end so the caller can read them.
    for (_, output) in &graph.outputs {
        if let Some(index) = interval_of.get(&root(*output)) {
            intervals[*index].end = steps.len();
        }
    }
    let unshared_len = intervals
        .iter()
        .map(|interval| round_up(interval.len))
        .sum();
    let lifetimes = intervals
        .iter()
        .filter_map(|interval| match interval.owner {
            Owner::Value(id) => Some((id, (interval.start, interval.end))),
            Owner::Scratch(_) => None,
        })
        .collect();
    for (step, plan_step) in steps.iter().enumerate() {
        if plan_step.scratch_len > 0 {
            intervals.push(Interval {
                owner: Owner::Scratch(step),
                start: step,
                end: step,
                len: plan_step.scratch_len,
            });
        }
    }
    let mut scratch = vec![None; steps.len()];
    let arena_len = assign_offsets(&mut intervals, &mut locations, &mut scratch);
    for (alias, _) in aliases {
        if let Some(location) = locations.get(&root(*alias)).copied() {
            locations.insert(*alias, location);
        }
    }
    MemoryPlan {
        locations,
        scratch,
        parameters,
        constants,
        arena_len,
        unshared_len,
        lifetimes,
    }
}

#[derive(Clone, Copy)]
enum Owner {
    Value(PrimNodeId),
    Scratch(usize),
}

struct Interval {
    owner: Owner,
    start: usize,
    end: usize,
    len: usize,
}

fn round_up(len: usize) -> usize {
    len.div_ceil(ALIGN).max(1) * ALIGN
}

/// Greedy by size: place the largest values first, each at the lowest aligned offset that
/// overlaps no already placed value whose lifetime intersects its own.
fn assign_offsets(
    intervals: &mut [Interval],
    locations: &mut HashMap<PrimNodeId, Location>,
    scratch: &mut [Option<(usize, usize)>],
) -> usize {
    intervals.sort_by(|a, b| b.len.cmp(&a.len).then(a.start.cmp(&b.start)));
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (offset, len, start, end)
    let mut arena_len = 0;
    for interval in intervals.iter() {
        let len = round_up(interval.len);
        let mut conflicts: Vec<(usize, usize)> = placed
            .iter()
            .filter(|(_, _, start, end)| interval.start <= *end && *start <= interval.end)
            .map(|(offset, len, _, _)| (*offset, *len))
            .collect();
        conflicts.sort();
        let mut offset = 0;
        for (other_offset, other_len) in conflicts {
            if offset + len <= other_offset {
                break;
            }
            offset = offset.max(other_offset + other_len);
        }
        placed.push((offset, len, interval.start, interval.end));
        arena_len = arena_len.max(offset + len);
        match interval.owner {
            Owner::Value(node) => {
                locations.insert(
                    node,
                    Location::Arena {
                        offset,
                        len: interval.len,
                    },
                );
            }
            Owner::Scratch(step) => scratch[step] = Some((offset, interval.len)),
        }
    }
    arena_len
}
