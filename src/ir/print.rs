//! The text form of the layer graph (`nnc build --emit ir`): one line per node in creation
//! (topological) order, `%id = op[attributes](operands) : shape  # path`, with cell bodies
//! indented below their scan node and their ids prefixed by it (`%2.4` is node 4 of the body of
//! scan `%2`).

use std::fmt::Write;

use super::*;
use crate::shape::ShapeTable;

/// Prints `network`'s graph with the shapes from `shapes`.
pub fn print_network(network: &Network, shapes: &ShapeTable) -> String {
    let mut out = String::new();
    print_graph(network, &network.graph, shapes, "", &mut out);
    for (name, node) in &network.outputs {
        let _ = writeln!(out, "output {name} = %{}", node.index());
    }
    if let Some((name, node)) = &network.loss {
        let _ = writeln!(out, "loss {name} = %{}", node.index());
    }
    out
}

fn print_graph(
    network: &Network,
    graph: &Graph,
    shapes: &ShapeTable,
    prefix: &str,
    out: &mut String,
) {
    let pad = "    ".repeat(prefix.matches('.').count());
    for id in graph.creation_order() {
        let node = graph.node(id);
        let operands: Vec<String> = graph
            .inputs(id)
            .iter()
            .map(|input| format!("%{prefix}{}", input.index()))
            .collect();
        let attributes = attributes(network, &node.op);
        let attributes = if attributes.is_empty() {
            String::new()
        } else {
            format!("[{attributes}]")
        };
        let shape = network.format_shape(shapes.shape(id));
        let _ = writeln!(
            out,
            "{pad}%{prefix}{} = {}{}({}) : {}  # {}",
            id.index(),
            node.op.name(),
            attributes,
            operands.join(", "),
            shape,
            node.path
        );
        if let Op::Scan { body, .. } = &node.op {
            let body_shapes = shapes
                .scan_bodies
                .get(&id)
                .expect("a checked scan has body shapes");
            let body_prefix = format!("{prefix}{}.", id.index());
            print_graph(network, &body.graph, body_shapes, &body_prefix, out);
            for state in &body.states {
                let _ = writeln!(
                    out,
                    "{pad}    next {} = %{body_prefix}{}",
                    state.name,
                    state.next.index()
                );
            }
            let _ = writeln!(out, "{pad}    out %{body_prefix}{}", body.output.index());
        }
    }
}

fn pair(values: [u64; 2]) -> String {
    if values[0] == values[1] {
        values[0].to_string()
    } else {
        format!("{}x{}", values[0], values[1])
    }
}

/// The op's attributes as `key=value` pairs.
pub fn attributes(network: &Network, op: &Op) -> String {
    let parts: Vec<String> = match op {
        Op::Input {
            name, element_type, ..
        } => vec![format!("name={name}"), format!("type={element_type:?}")],
        Op::Conv2d(attrs) | Op::ConvTranspose2d(attrs) => {
            let mut parts = vec![
                format!("out={}", attrs.out_channels),
                format!("kernel={}", pair(attrs.kernel)),
            ];
            if attrs.stride != [1, 1] {
                parts.push(format!("stride={}", pair(attrs.stride)));
            }
            match attrs.padding {
                Padding::Same => parts.push("pad=same".into()),
                Padding::Explicit([0, 0]) => {}
                Padding::Explicit(pad) => parts.push(format!("pad={}", pair(pad))),
            }
            if attrs.dilation != [1, 1] {
                parts.push(format!("dilation={}", pair(attrs.dilation)));
            }
            if attrs.groups != 1 {
                parts.push(format!("groups={}", attrs.groups));
            }
            if attrs.output_padding != [0, 0] {
                parts.push(format!("output_pad={}", pair(attrs.output_padding)));
            }
            if !attrs.bias {
                parts.push("bias=false".into());
            }
            parts
        }
        Op::MaxPool2d(attrs) | Op::AvgPool2d(attrs) => {
            let mut parts = vec![
                format!("kernel={}", pair(attrs.kernel)),
                format!("stride={}", pair(attrs.stride)),
            ];
            if attrs.padding != [0, 0] {
                parts.push(format!("pad={}", pair(attrs.padding)));
            }
            if attrs.ceil_mode {
                parts.push("ceil=true".into());
            }
            parts
        }
        Op::AdaptiveAvgPool2d { output } => vec![format!("size={}", pair(*output))],
        Op::Dense {
            out_features, bias, ..
        } => {
            let mut parts = vec![format!("out={out_features}")];
            if !bias {
                parts.push("bias=false".into());
            }
            parts
        }
        Op::Flatten { start_dim, end_dim } => {
            vec![format!("start={start_dim}"), format!("end={end_dim}")]
        }
        Op::Reshape { target } => {
            let dims: Vec<String> = target
                .iter()
                .map(|dim| match dim {
                    ReshapeDim::Copy => "0".into(),
                    ReshapeDim::Infer => "-1".into(),
                    ReshapeDim::Size(size) => size.to_string(),
                    ReshapeDim::Symbol(symbol) => network.symbol(*symbol).name.clone(),
                })
                .collect();
            vec![format!("shape=({})", dims.join(", "))]
        }
        Op::Permute { dims } => vec![format!("dims={dims:?}")],
        Op::Transpose { dim0, dim1 } => vec![format!("dims=({dim0}, {dim1})")],
        Op::Unary(UnaryOp::LeakyRelu { negative_slope }) => vec![format!("slope={negative_slope}")],
        Op::Unary(_)
        | Op::Binary(_)
        | Op::MatMul
        | Op::CausalMask
        | Op::RandomNormal
        | Op::Identity => vec![],
        Op::Scalar {
            scalar,
            scalar_first,
            ..
        } => vec![
            format!("scalar={scalar}"),
            format!("scalar_first={scalar_first}"),
        ],
        Op::Softmax { dim, .. } => vec![format!("dim={dim}")],
        Op::Dropout { p } => vec![format!("p={p}")],
        Op::BatchNorm {
            eps,
            momentum,
            affine,
        } => {
            vec![
                format!("eps={eps}"),
                format!("momentum={momentum}"),
                format!("affine={affine}"),
            ]
        }
        Op::LayerNorm {
            normalized_dims,
            eps,
            affine,
        } => {
            vec![
                format!("dims={normalized_dims}"),
                format!("eps={eps}"),
                format!("affine={affine}"),
            ]
        }
        Op::Embedding {
            num_embeddings,
            dim,
        } => vec![format!("count={num_embeddings}"), format!("dim={dim}")],
        Op::Concat { dim } => vec![format!("dim={dim}")],
        Op::Slice { dim, start, end } => {
            let end = if *end == i64::MAX {
                String::new()
            } else {
                end.to_string()
            };
            vec![format!("dim={dim}"), format!("range={start}..{end}")]
        }
        Op::Select { dim, index } => vec![format!("dim={dim}"), format!("index={index}")],
        Op::Reduce { dims, keepdim, .. } => {
            vec![format!("dims={dims:?}"), format!("keepdim={keepdim}")]
        }
        Op::Recurrent(attrs) => vec![
            format!("hidden={}", attrs.hidden),
            format!("layers={}", attrs.layers),
            format!("bidirectional={}", attrs.bidirectional),
            format!("sequence={}", attrs.sequence),
        ],
        Op::Loss(attrs) => loss_attributes(attrs),
        Op::Scan { body, sequence } => {
            let states: Vec<&str> = body
                .states
                .iter()
                .map(|state| state.name.as_str())
                .collect();
            vec![
                format!("states=({})", states.join(", ")),
                format!("sequence={sequence}"),
            ]
        }
    };
    parts.join(", ")
}

/// A loss's arguments that differ from PyTorch's defaults, then its reduction.
fn loss_attributes(attrs: &LossAttrs) -> Vec<String> {
    let numbers = |values: &[f64]| {
        let items: Vec<String> = values.iter().map(f64::to_string).collect();
        format!("[{}]", items.join(", "))
    };
    let mut parts = Vec::new();
    match &attrs.function {
        LossFunction::MeanSquaredError | LossFunction::BinaryCrossEntropy => {}
        LossFunction::CrossEntropy {
            class_dim,
            class_weights,
            label_smoothing,
        } => {
            if let Some(dim) = class_dim {
                parts.push(format!("dim={dim}"));
            }
            if let Some(weights) = class_weights {
                parts.push(format!("weight={}", numbers(weights)));
            }
            if *label_smoothing != 0.0 {
                parts.push(format!("label_smoothing={label_smoothing}"));
            }
        }
        LossFunction::BinaryCrossEntropyWithLogits { pos_weight } => {
            if let Some(weights) = pos_weight {
                parts.push(format!("pos_weight={}", numbers(weights)));
            }
        }
        LossFunction::GaussianNll {
            fixed_variance,
            full,
            eps,
        } => {
            if let Some(variance) = fixed_variance {
                parts.push(format!("var={variance}"));
            }
            if *full {
                parts.push("full=true".into());
            }
            parts.push(format!("eps={eps}"));
        }
    }
    parts.push(format!("reduction={}", attrs.reduction.name()));
    parts
}
