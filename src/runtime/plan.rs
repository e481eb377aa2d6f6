//! The static memory plan: every intermediate value of a primitive graph gets a range of one
//! arena, and values whose lifetimes do not overlap share memory. Lifetimes follow the schedule
//! (the graph's topological order): a value lives from the step that writes it to the last step
//! that reads it. Offsets are assigned greedily, largest value first, at the lowest offset that
//! does not overlap a value alive at the same time (the "greedy by size" heuristic of TFLite's
//! arena planner), and aligned to 16 floats (64 bytes, a cache line).

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

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Nodes in execution order.
    pub schedule: Vec<PrimNodeId>,
    pub locations: HashMap<PrimNodeId, Location>,
    /// Parameter names in index order.
    pub parameters: Vec<String>,
    pub constants: Vec<PrimNodeId>,
    /// Floats of arena the run needs: the planned peak of intermediate values.
    pub arena_len: usize,
    /// Floats all intermediate values would need without reuse, for the report.
    pub unshared_len: usize,
}

/// Plans memory for `graph`. Nodes that produce nothing at run time (inputs, parameters,
/// constants) get their own locations outside the arena.
pub fn plan_memory(graph: &PrimGraph) -> MemoryPlan {
    let schedule = graph.topological_order();
    let position: HashMap<PrimNodeId, usize> = schedule.iter().enumerate().map(|(step, id)| (*id, step)).collect();
    let mut locations = HashMap::new();
    let mut parameters = Vec::new();
    let mut constants = Vec::new();
    let mut intervals = Vec::new();
    let output_ids: Vec<PrimNodeId> = graph.outputs.iter().map(|(_, id)| *id).collect();
    for (step, id) in schedule.iter().enumerate() {
        let node = graph.node(*id);
        match &node.op {
            PrimOp::Input { index, .. } => {
                locations.insert(*id, Location::Input(*index));
            }
            PrimOp::Parameter { name, .. } => {
                locations.insert(*id, Location::Parameter(parameters.len()));
                parameters.push(name.clone());
            }
            PrimOp::Constant(_) => {
                locations.insert(*id, Location::Constant(constants.len()));
                constants.push(*id);
            }
            _ => {
                let last_use = graph.users(*id).iter().map(|user| position[user]).max().unwrap_or(step);
                // Outputs stay alive to the end so the caller can read them.
                let end = if output_ids.contains(id) { schedule.len() } else { last_use };
                intervals.push(Interval { node: *id, start: step, end, len: node.ty.element_count() });
            }
        }
    }
    let unshared_len = intervals.iter().map(|interval| round_up(interval.len)).sum();
    let arena_len = assign_offsets(&mut intervals, &mut locations);
    MemoryPlan { schedule, locations, parameters, constants, arena_len, unshared_len }
}

struct Interval {
    node: PrimNodeId,
    start: usize,
    end: usize,
    len: usize,
}

fn round_up(len: usize) -> usize {
    len.div_ceil(ALIGN).max(1) * ALIGN
}

/// Greedy by size: place the largest values first, each at the lowest aligned offset that
/// overlaps no already placed value whose lifetime intersects its own.
fn assign_offsets(intervals: &mut [Interval], locations: &mut HashMap<PrimNodeId, Location>) -> usize {
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
        locations.insert(interval.node, Location::Arena { offset, len: interval.len });
    }
    arena_len
}
