//! Grouping elementwise chains into JIT kernels: the first half of building the [`KernelPlan`].
//!
//! A node can be computed by a JIT elementwise kernel when codegen has its op and each operand
//! is readable with an [`InputLayout`](crate::codegen::InputLayout) at the node's shape. Walking
//! the schedule backwards, such a node joins the group of its users when all of its users are
//! in one group, it is not a graph output, and it has the group's shape (so element `i` of the
//! node feeds element `i` of the group's result); otherwise it starts a new group. Every member
//! but the result then has all its users inside the group, so a path that leaves a group leaves
//! from its result, and running groups in the order of their results is a valid schedule.
//!
//! A group that only other groups read, that reads a single value of its own size computed
//! elsewhere, and whose ops are a few cheap ones (a dropout mask `(u >= p) / (1 - p)` of a
//! random draw `u`, read by the forward product and by its gradient) is computed inside each
//! of its readers instead: they read `u` where they would have read the mask, as many bytes,
//! and the mask's own pass over memory and its buffer go away.
//!
//! Everything else becomes a primitive kernel, except reshapes, which alias their operand's
//! memory, and slices that only such groups read, which they read where they lie (strided).
//! Splat constants are compiled into the code rather than read.

use std::collections::{HashMap, HashSet};

use super::graph_edit::schedule;
use super::kernel_plan::{
    build_group, elementwise_op, input_layout, is_source, slice_read_in_place, splat_value,
};
use super::{FuseError, Kernel, KernelKind, KernelPlan};
use crate::prim::{PrimGraph, PrimNodeId, PrimOp, UnaryFn};

pub fn run(graph: &PrimGraph) -> Result<KernelPlan, FuseError> {
    let order = schedule(graph);
    let outputs: HashSet<PrimNodeId> = graph.outputs.iter().map(|(_, id)| *id).collect();
    // Group members by group, the result first, then members in reverse schedule order.
    let mut groups: Vec<Vec<PrimNodeId>> = Vec::new();
    let mut group_of: HashMap<PrimNodeId, usize> = HashMap::new();
    for id in order.iter().rev() {
        if !is_jit_elementwise(graph, *id) {
            continue;
        }
        let joined = if outputs.contains(id) {
            None
        } else {
            shared_user_group(graph, *id, &group_of, &groups)
        };
        let group = joined.unwrap_or_else(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(*id);
        group_of.insert(*id, group);
    }
    inline_recomputed_groups(graph, &order, &outputs, &mut groups, &mut group_of);
    let mut kernels = Vec::new();
    for id in order {
        let op = &graph.node(id).op;
        if is_source(op) {
            continue;
        }
        let kind = match (op, group_of.get(&id)) {
            (_, Some(group)) if groups[*group][0] != id => continue,
            (_, Some(group)) => {
                let members: Vec<PrimNodeId> = groups[*group].iter().rev().copied().collect();
                let group = build_group(graph, members).ok_or_else(|| {
                    FuseError::Internal(format!(
                        "group ending at %{} has an operand without a layout",
                        id.index()
                    ))
                })?;
                let mut covers = group.slices_read_in_place.clone();
                covers.extend(&group.nodes);
                kernels.push(Kernel {
                    output: id,
                    covers,
                    kind: KernelKind::Elementwise(group),
                });
                continue;
            }
            // Its readers read it where it lies (in the group of each).
            (PrimOp::Slice { .. }, None) if slice_read_in_place(graph, id).is_some() => continue,
            (PrimOp::Reshape { .. }, None) => KernelKind::Alias,
            (_, None) => KernelKind::Primitive,
        };
        kernels.push(Kernel {
            kind,
            output: id,
            covers: vec![id],
        });
    }
    Ok(KernelPlan { kernels })
}

/// Whether codegen can compute the node: an op it has, a non-empty result, and operands that
/// are splat constants or readable with a layout.
pub(super) fn is_jit_elementwise(graph: &PrimGraph, id: PrimNodeId) -> bool {
    let node = graph.node(id);
    if elementwise_op(&node.op).is_none() || node.ty.element_count() == 0 {
        return false;
    }
    graph.operands(id).iter().all(|operand| {
        let operand = graph.node(*operand);
        splat_value(&operand.op).is_some()
            || input_layout(&operand.ty.shape, &node.ty.shape).is_some()
    })
}

/// The group that every user of `id` belongs to, if there is one and it has `id`'s shape.
fn shared_user_group(
    graph: &PrimGraph,
    id: PrimNodeId,
    group_of: &HashMap<PrimNodeId, usize>,
    groups: &[Vec<PrimNodeId>],
) -> Option<usize> {
    let users = graph.users(id);
    let group = *group_of.get(users.first()?)?;
    let all_in_group = users.iter().all(|user| group_of.get(user) == Some(&group));
    let result = groups[group][0];
    (all_in_group && graph.node(result).ty.shape == graph.node(id).ty.shape).then_some(group)
}

/// Most members a group may have to be computed again in each reader.
const MAX_RECOMPUTED_MEMBERS: usize = 4;

/// Moves each group that qualifies for recomputation (see the module doc) into every group
/// that reads its result, leaving it empty. Its members then belong to several groups;
/// `group_of` keeps one of them, where none is the result.
fn inline_recomputed_groups(
    graph: &PrimGraph,
    order: &[PrimNodeId],
    outputs: &HashSet<PrimNodeId>,
    groups: &mut [Vec<PrimNodeId>],
    group_of: &mut HashMap<PrimNodeId, usize>,
) {
    let position: HashMap<PrimNodeId, usize> = order
        .iter()
        .enumerate()
        .map(|(index, id)| (*id, index))
        .collect();
    for group in 0..groups.len() {
        let Some(readers) = recomputing_readers(graph, outputs, groups, group_of, group) else {
            continue;
        };
        let members = std::mem::take(&mut groups[group]);
        for reader in readers {
            groups[reader].extend(&members);
            // The result first, then the members in reverse schedule order, as built.
            groups[reader].sort_by_key(|id| std::cmp::Reverse(position[id]));
            for member in &members {
                group_of.insert(*member, reader);
            }
        }
    }
}

/// The groups that would compute group `group` themselves, when it qualifies: none of its
/// members is an output, every reader of its result is in another group of the same shape, its
/// members are cheap, and it reads exactly one value from memory, of its own shape, which no
/// group computes (so no group is recomputed twice over) and no GEMM (whose epilogue it could
/// otherwise become in one reader while another reads it from memory).
fn recomputing_readers(
    graph: &PrimGraph,
    outputs: &HashSet<PrimNodeId>,
    groups: &[Vec<PrimNodeId>],
    group_of: &HashMap<PrimNodeId, usize>,
    group: usize,
) -> Option<Vec<usize>> {
    let members = &groups[group];
    let result = *members.first()?;
    let shape = &graph.node(result).ty.shape;
    let cheap = |id: &PrimNodeId| match graph.node(*id).op {
        PrimOp::Binary(_) => true,
        PrimOp::Unary(function) => matches!(
            function,
            UnaryFn::Neg | UnaryFn::Abs | UnaryFn::Relu | UnaryFn::LeakyRelu { .. }
        ),
        _ => false,
    };
    if members.len() > MAX_RECOMPUTED_MEMBERS
        || !members.iter().all(cheap)
        || members.iter().any(|id| outputs.contains(id))
    {
        return None;
    }
    let mut read: Vec<PrimNodeId> = members
        .iter()
        .flat_map(|id| graph.operands(*id))
        .filter(|operand| !members.contains(operand))
        .filter(|operand| splat_value(&graph.node(*operand).op).is_none())
        .collect();
    read.sort();
    read.dedup();
    let [value] = read[..] else {
        return None;
    };
    let computed_by_gemm = super::attach_epilogues::is_gemm_node(&graph.node(value).op);
    if graph.node(value).ty.shape != *shape || group_of.contains_key(&value) || computed_by_gemm {
        return None;
    }
    let users = graph.users(result);
    let mut readers: Vec<usize> = Vec::with_capacity(users.len());
    for user in users {
        let reader = *group_of.get(&user)?;
        let reader_shape = &graph.node(*groups[reader].first()?).ty.shape;
        if reader == group || reader_shape != shape {
            return None;
        }
        readers.push(reader);
    }
    readers.sort();
    readers.dedup();
    (!readers.is_empty()).then_some(readers)
}
