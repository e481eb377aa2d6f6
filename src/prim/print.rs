//! The text form of the primitive graph (`nnc build --emit lowered`): one line per node in
//! topological order, `%id = op[attributes](operands) : type  # path`, where the type is the
//! concrete shape (`[2, 784]`, prefixed `i64` for integer tensors). Scan bodies are indented
//! below their scan, their ids prefixed by the scan's (`%7.3` is node 3 of the body of `%7`),
//! and end with the body's outputs (next states, then the step output).

use std::fmt::Write;

use super::*;

/// Prints the graph and its named outputs.
pub fn print_graph(graph: &PrimGraph) -> String {
    let mut out = String::new();
    print_nodes(graph, "", &mut out);
    for (name, id) in &graph.outputs {
        let _ = writeln!(out, "output {name} = %{}", id.index());
    }
    out
}

fn print_nodes(graph: &PrimGraph, prefix: &str, out: &mut String) {
    let pad = "    ".repeat(prefix.matches('.').count());
    for id in graph.topological_order() {
        let node = graph.node(id);
        write_node_line(graph, id, prefix, &pad, out);
        if let PrimOp::Scan { body, .. } = &node.op {
            let body_prefix = format!("{prefix}{}.", id.index());
            print_nodes(&body.graph, &body_prefix, out);
            for (name, output) in &body.graph.outputs {
                let _ = writeln!(
                    out,
                    "{pad}    output {name} = %{body_prefix}{}",
                    output.index()
                );
            }
        }
    }
}

/// `[2, 3]` for a float tensor, `i64[2, 3]` for an integer one.
/// One node as `{indent}%{prefix}id = op[attributes](operands) : type  # path`.
pub fn write_node_line(
    graph: &PrimGraph,
    id: PrimNodeId,
    prefix: &str,
    indent: &str,
    out: &mut String,
) {
    let node = graph.node(id);
    let operands: Vec<String> = graph
        .operands(id)
        .iter()
        .map(|operand| format!("%{prefix}{}", operand.index()))
        .collect();
    let attributes = attributes(graph, &node.op);
    let attributes = if attributes.is_empty() {
        String::new()
    } else {
        format!("[{attributes}]")
    };
    let _ = writeln!(
        out,
        "{indent}%{prefix}{} = {}{attributes}({}) : {}  # {}",
        id.index(),
        node.op.name(),
        operands.join(", "),
        format_type(&node.ty),
        node.origin.path
    );
}

pub fn format_type(ty: &TensorType) -> String {
    let dims: Vec<String> = ty.shape.iter().map(usize::to_string).collect();
    let element = match ty.element_type {
        ElementType::Float32 => "",
        ElementType::Int64 => "i64",
    };
    format!("{element}[{}]", dims.join(", "))
}

fn pair(values: [usize; 2]) -> String {
    if values[0] == values[1] {
        values[0].to_string()
    } else {
        format!("{}x{}", values[0], values[1])
    }
}

fn format_value(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The op's attributes as `key=value` pairs; shapes are left to the type.
pub fn attributes(graph: &PrimGraph, op: &PrimOp) -> String {
    let parts: Vec<String> = match op {
        PrimOp::Input { index, .. } => {
            let name = graph
                .inputs
                .get(*index)
                .map_or("?", |(name, _)| name.as_str());
            vec![format!("{index}"), format!("name={name}")]
        }
        PrimOp::Parameter { name, .. } => vec![name.clone()],
        PrimOp::Constant(Constant::Splat { value, .. }) => vec![format_value(*value)],
        PrimOp::Constant(Constant::Dense(tensor)) => {
            let mut values: Vec<String> = tensor
                .data
                .iter()
                .take(6)
                .map(|value| format_value(*value))
                .collect();
            if tensor.data.len() > 6 {
                values.push("...".into());
            }
            vec![format!("values=({})", values.join(", "))]
        }
        PrimOp::RandomNormal { seed, .. } | PrimOp::RandomUniform { seed, .. } => {
            vec![format!("seed={seed:#x}")]
        }
        PrimOp::Unary(UnaryFn::LeakyRelu { negative_slope }) => {
            vec![format!("slope={negative_slope}")]
        }
        PrimOp::Unary(_) | PrimOp::Binary(_) | PrimOp::MatMul | PrimOp::Gather => vec![],
        PrimOp::Reshape { .. } => vec![],
        PrimOp::Conv2d(params) => conv2d_parts(params),
        PrimOp::Conv2dWeightGradient(params) => {
            let mut parts = conv2d_parts(&params.conv);
            parts.insert(0, format!("kernel={}", pair(params.kernel)));
            parts
        }
        PrimOp::ConvTranspose2d(params) => {
            let mut parts = window_parts(params.stride, params.dilation, params.groups);
            if params.padding != [0, 0] {
                parts.insert(0, format!("pad={}", pair(params.padding)));
            }
            parts
        }
        PrimOp::Pool2d(params) | PrimOp::MaxPool2dArgmax(params) => {
            let mut parts = vec![
                format!("kernel={}", pair(params.kernel)),
                format!("stride={}", pair(params.stride)),
            ];
            if params.padding != [0, 0] {
                parts.push(format!("pad={}", pair(params.padding)));
            }
            if params.dilation != [1, 1] {
                parts.push(format!("dilation={}", pair(params.dilation)));
            }
            if params.ceil_mode {
                parts.push("ceil=true".into());
            }
            if let PoolKind::Average {
                count_include_pad: false,
            } = params.kind
            {
                parts.push("count_pad=false".into());
            }
            parts
        }
        PrimOp::Reduce { axes, keepdim, .. } => {
            vec![format!("axes={axes:?}"), format!("keepdim={keepdim}")]
        }
        PrimOp::Transpose { perm } => vec![format!("perm={perm:?}")],
        PrimOp::Slice { axis, start, end } => {
            vec![format!("axis={axis}"), format!("range={start}..{end}")]
        }
        PrimOp::Concat { axis } => vec![format!("axis={axis}")],
        PrimOp::ScatterAdd { rows } => vec![format!("rows={rows}")],
        PrimOp::Scan {
            body,
            axis,
            reverse,
        } => vec![
            format!("axis={axis}"),
            format!("sequences={}", body.sequence_count),
            format!("states={}", body.state_count),
            format!("reverse={reverse}"),
        ],
    };
    parts.join(", ")
}

fn window_parts(stride: [usize; 2], dilation: [usize; 2], groups: usize) -> Vec<String> {
    let mut parts = Vec::new();
    if stride != [1, 1] {
        parts.push(format!("stride={}", pair(stride)));
    }
    if dilation != [1, 1] {
        parts.push(format!("dilation={}", pair(dilation)));
    }
    if groups != 1 {
        parts.push(format!("groups={groups}"));
    }
    parts
}

/// A convolution's padding (omitted when zero; four numbers when uneven), stride, dilation and
/// groups.
fn conv2d_parts(params: &Conv2dParams) -> Vec<String> {
    let mut parts = window_parts(params.stride, params.dilation, params.groups);
    let [[top, bottom], [left, right]] = params.padding;
    if top == bottom && left == right {
        if [top, left] != [0, 0] {
            parts.insert(0, format!("pad={}", pair([top, left])));
        }
    } else {
        parts.insert(0, format!("pad=({top}, {bottom}, {left}, {right})"));
    }
    parts
}
