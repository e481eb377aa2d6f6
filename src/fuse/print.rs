//! Text forms of fusion, as `nnc build --emit fused|kernels` prints them and the snapshot
//! tests record them.
//!
//! - [`print_state`]: the bind graph (computed once per parameter set; its outputs name the
//!   folded parameters) and the run graph, one node per line in schedule order, in the format
//!   of `--emit lowered`.
//! - [`print_fused`]: the same with the run graph grouped into kernels `k0`, `k1`, ...: each
//!   kernel's header line names its kind, then its nodes follow, indented.
//! - [`print_kernels`]: one line per kernel: kind, the nodes it covers, its result's shape,
//!   what it reads, the epilogue or elementwise formula, and, when given, the compile time of
//!   its JIT function.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::Duration;

use super::{ElementwiseGroup, FuseState, Fused, Kernel, KernelKind, RowNormalizationKind};
use crate::codegen::{BinaryOp, ElementwiseNode, InputLayout, NodeId};
use crate::prim::print::{format_type, write_node_line};
use crate::prim::{PrimGraph, PrimNodeId};

/// Compile times of JIT functions, per kernel index, with those of scan bodies by scan node.
#[derive(Clone, Debug, Default)]
pub struct KernelTimes {
    pub per_kernel: Vec<Option<JitCompile>>,
    pub bodies: BTreeMap<PrimNodeId, KernelTimes>,
}

/// How a kernel got its JIT function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitCompile {
    Compiled(Duration),
    /// An earlier kernel compiled the same expression.
    Reused,
}

/// The bind graph, then the run graph.
pub fn print_state(state: &FuseState) -> String {
    let mut out = String::new();
    print_bind(&state.bind, &mut out);
    if !state.bind.outputs.is_empty() {
        out.push_str("run:\n");
    }
    for id in super::schedule(&state.graph) {
        node_line(&state.graph, id, "", &mut out);
    }
    print_outputs(&state.graph, &mut out);
    out
}

/// The bind graph, then the run graph grouped into kernels (scan bodies nested).
pub fn print_fused(fused: &Fused) -> String {
    let mut out = String::new();
    print_bind(&fused.state.bind, &mut out);
    if !fused.state.bind.outputs.is_empty() {
        out.push_str("run:\n");
    }
    print_kernel_groups(fused, "", &mut out);
    print_outputs(&fused.state.graph, &mut out);
    out
}

/// One line per kernel; `times` adds compile times.
pub fn print_kernels(fused: &Fused, times: Option<&KernelTimes>) -> String {
    let mut out = String::new();
    print_kernel_lines(fused, times, "", &mut out);
    out
}

fn print_bind(bind: &PrimGraph, out: &mut String) {
    if bind.outputs.is_empty() {
        return;
    }
    out.push_str("bind:\n");
    for id in super::schedule(bind) {
        node_line(bind, id, "    ", out);
    }
    for (name, id) in &bind.outputs {
        let _ = writeln!(out, "    {name} = %{}", id.index());
    }
}

fn print_outputs(graph: &PrimGraph, out: &mut String) {
    for (name, id) in &graph.outputs {
        let _ = writeln!(out, "output {name} = %{}", id.index());
    }
}

fn node_line(graph: &PrimGraph, id: PrimNodeId, indent: &str, out: &mut String) {
    write_node_line(graph, id, "", indent, out);
}

/// Kernel labels: `k0`, `k1`, ... over kernels that run (aliases are not numbered).
fn labels(fused: &Fused, prefix: &str) -> Vec<Option<String>> {
    let mut next = 0;
    fused
        .kernels
        .kernels
        .iter()
        .map(|kernel| {
            if matches!(kernel.kind, KernelKind::Alias) {
                return None;
            }
            next += 1;
            Some(format!("{prefix}k{}", next - 1))
        })
        .collect()
}

fn print_kernel_groups(fused: &Fused, indent: &str, out: &mut String) {
    let graph = &fused.state.graph;
    let mut sources: Vec<PrimNodeId> = graph
        .node_ids()
        .filter(|id| super::kernel_plan::is_source(&graph.node(*id).op))
        .collect();
    sources.sort();
    for id in sources {
        node_line(graph, id, indent, out);
    }
    let labels = labels(fused, "");
    for (kernel, label) in fused.kernels.kernels.iter().zip(labels) {
        let Some(label) = label else {
            node_line(graph, kernel.output, indent, out);
            continue;
        };
        let _ = writeln!(
            out,
            "{indent}{label} {}",
            kernel.kind.name(graph, kernel.output)
        );
        let inner = format!("{indent}    ");
        for id in &kernel.covers {
            node_line(graph, *id, &inner, out);
            if let Some(body) = fused.bodies.get(id) {
                let body_indent = format!("{inner}    ");
                print_kernel_groups(body, &body_indent, out);
                for (name, output) in &body.state.graph.outputs {
                    let _ = writeln!(out, "{body_indent}output {name} = %{}", output.index());
                }
            }
        }
    }
}

fn print_kernel_lines(fused: &Fused, times: Option<&KernelTimes>, prefix: &str, out: &mut String) {
    let graph = &fused.state.graph;
    let labels = labels(fused, prefix);
    for (index, (kernel, label)) in fused.kernels.kernels.iter().zip(labels).enumerate() {
        let Some(label) = label else { continue };
        let mut line = format!("{label} {}", kernel_summary(graph, kernel));
        match times.and_then(|times| times.per_kernel.get(index).copied().flatten()) {
            Some(JitCompile::Compiled(time)) => {
                let _ = write!(line, "; compile {:.3} ms", time.as_secs_f64() * 1e3);
            }
            Some(JitCompile::Reused) => line.push_str("; compile reused"),
            None => {}
        }
        let _ = writeln!(out, "{line}");
        if let Some(body) = fused.bodies.get(&kernel.output) {
            let body_times = times.and_then(|times| times.bodies.get(&kernel.output));
            print_kernel_lines(body, body_times, &format!("{label}."), out);
        }
    }
}

/// `kind covers %a %b -> [shape]; what it computes`.
fn kernel_summary(graph: &PrimGraph, kernel: &Kernel) -> String {
    let covers: Vec<String> = kernel
        .covers
        .iter()
        .map(|id| format!("%{}", id.index()))
        .collect();
    let mut line = format!(
        "{} covers {} -> {}",
        kernel.kind.name(graph, kernel.output),
        covers.join(" "),
        format_type(&graph.node(kernel.output).ty)
    );
    match &kernel.kind {
        KernelKind::Primitive | KernelKind::Alias => {
            let _ = write!(
                line,
                "; reads {}",
                operand_list(graph, &graph.operands(kernel.output))
            );
        }
        KernelKind::Elementwise(group) => {
            let _ = write!(line, "; {}", formula(group));
        }
        KernelKind::RowNormalization(row) => {
            let _ = write!(
                line,
                "; rows of {} values of %{}",
                row.cols,
                row.input.index()
            );
            if let RowNormalizationKind::LayerNorm {
                epsilon,
                scale,
                shift,
            } = &row.kind
            {
                let _ = write!(line, ", eps {epsilon}");
                if let Some(scale) = scale {
                    let _ = write!(line, ", scale %{}", scale.index());
                }
                if let Some(shift) = shift {
                    let _ = write!(line, ", shift %{}", shift.index());
                }
            }
        }
        KernelKind::Producer(producer) => {
            let operands = graph.operands(producer.producer);
            let _ = write!(
                line,
                "; {}({})",
                graph.node(producer.producer).op.name(),
                operand_list(graph, &operands)
            );
            if let Some((_, bias)) = producer.bias {
                let _ = write!(line, " + bias %{}", bias.index());
            }
            if let Some(residual) = producer.post.residual {
                let _ = write!(line, " + residual %{}", residual.index());
            }
            if producer.post.relu {
                let _ = write!(line, ", then relu");
            }
            for (operand, view) in operands.iter().zip(&producer.operand_views) {
                if let Some(view) = view {
                    let _ = write!(
                        line,
                        "; %{} read from %{} at offset {} strides {:?}",
                        operand.index(),
                        view.source.index(),
                        view.offset,
                        view.strides
                    );
                }
            }
            if let Some(epilogue) = &producer.epilogue {
                let _ = write!(line, "; epilogue {}", formula(epilogue));
            }
        }
    }
    line
}

fn operand_list(graph: &PrimGraph, operands: &[PrimNodeId]) -> String {
    let parts: Vec<String> = operands
        .iter()
        .map(|id| format!("%{} {}", id.index(), format_type(&graph.node(*id).ty)))
        .collect();
    parts.join(", ")
}

/// The group's expression as a formula over prim node ids, broadcast inputs marked with their
/// layout, and values used more than once named `t<n>` first: `t0 = %3 - %5; t0 * t0`.
pub fn formula(group: &ElementwiseGroup) -> String {
    let nodes = group.expr.nodes();
    let mut uses = vec![0usize; nodes.len()];
    for node in nodes {
        for operand in crate::codegen::elementwise::operands(node) {
            uses[operand.0] += 1;
        }
    }
    let mut names: HashMap<usize, String> = HashMap::new();
    let mut definitions = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let text = node_text(group, node, &names);
        let shared = uses[index] > 1
            && !matches!(
                node,
                ElementwiseNode::Input(_) | ElementwiseNode::Constant(_)
            );
        if shared {
            let name = format!("t{}", definitions.len());
            definitions.push(format!("{name} = {}", strip_parens(&text)));
            names.insert(index, name);
        } else {
            names.insert(index, text);
        }
    }
    let output = group.expr.output().map_or(0, |output| output.0);
    let result = strip_parens(&names[&output]).to_string();
    definitions.push(result);
    definitions.join("; ")
}

fn node_text(
    group: &ElementwiseGroup,
    node: &ElementwiseNode,
    names: &HashMap<usize, String>,
) -> String {
    let name = |id: &NodeId| names[&id.0].clone();
    match node {
        ElementwiseNode::Input(input) => {
            let id = group.inputs[*input].index();
            match group.expr.input_layouts()[*input] {
                InputLayout::Contiguous => format!("%{id}"),
                layout => format!("%{id}{{{layout}}}"),
            }
        }
        ElementwiseNode::Constant(value) => format!("{value:?}"),
        ElementwiseNode::Unary(op, x) => format!("{}({})", unary_name(op), strip_parens(&name(x))),
        ElementwiseNode::Binary(op, a, b) => match op {
            BinaryOp::Max | BinaryOp::Min => {
                format!("{op:?}({}, {})", name(a), name(b)).to_lowercase()
            }
            BinaryOp::Greater | BinaryOp::GreaterEqual | BinaryOp::Equal => {
                format!("{}({}, {})", binary_symbol(*op), name(a), name(b))
            }
            _ => format!("({} {} {})", name(a), binary_symbol(*op), name(b)),
        },
        ElementwiseNode::Fma(a, b, c) => format!("fma({}, {}, {})", name(a), name(b), name(c)),
    }
}

fn unary_name(op: &crate::codegen::UnaryOp) -> String {
    match op {
        crate::codegen::UnaryOp::LeakyRelu { slope } => format!("leaky_relu[{slope}]"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn binary_symbol(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "+",
        BinaryOp::Sub => "-",
        BinaryOp::Mul => "*",
        BinaryOp::Div => "/",
        BinaryOp::Max => "max",
        BinaryOp::Min => "min",
        BinaryOp::Greater => "greater",
        BinaryOp::GreaterEqual => "greater_equal",
        BinaryOp::Equal => "equal",
    }
}

fn strip_parens(text: &str) -> &str {
    let inner = text
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'));
    match inner {
        // Only when the outer parentheses match each other: "(a) + (b)" keeps its own.
        Some(inner) if balanced(inner) => inner,
        _ => text,
    }
}

fn balanced(text: &str) -> bool {
    let mut depth = 0i32;
    for character in text.chars() {
        match character {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}
