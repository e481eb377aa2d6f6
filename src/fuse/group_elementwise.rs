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
//! Everything else becomes a primitive kernel, except reshapes, which alias their operand's
//! memory, and slices that only such groups read, which they read where they lie (strided).
//! Splat constants are compiled into the code rather than read.

use std::collections::{HashMap, HashSet};

use super::graph_edit::schedule;
use super::kernel_plan::{
    build_group, elementwise_op, input_layout, is_source, slice_read_in_place, splat_value,
};
use super::{FuseError, Kernel, KernelKind, KernelPlan};
use crate::prim::{PrimGraph, PrimNodeId, PrimOp};

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
