//! The per-layer text report, like Keras' `summary()` and torchinfo: one row per layer with its
//! output shape, parameters, MACs for batch 1 and receptive field; blocks as indented groups with
//! subtotals (collapsed below `--depth`); totals at the end.

use std::fmt::Write;

use super::receptive_field::format_pair;
use super::tree::PathTree;
use super::{LayerRow, Summary};
use crate::ir::{InstancePath, Network, Op};

struct Line {
    path: String,
    op: String,
    shape: String,
    params: String,
    macs: String,
    field: String,
    stride: String,
}

pub fn render(summary: &Summary, network: &Network, depth: Option<usize>) -> String {
    let mut out = String::new();
    for input in &network.inputs {
        if let Op::Input {
            name,
            shape,
            element_type,
        } = &network.graph.node(*input).op
        {
            let kind = if *element_type == crate::ir::ElementType::Int64 {
                " int"
            } else {
                ""
            };
            let loss_only = summary
                .loss
                .as_ref()
                .is_some_and(|loss| loss.inputs.contains(name));
            let role = if loss_only {
                "  (read by the loss only)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "input  {name}: {}{kind}{role}",
                network.format_shape(shape)
            );
        }
    }
    for (name, node) in &network.outputs {
        let row = summary.rows.iter().find(|row| row.node == *node);
        let shape = row
            .map(|row| network.format_shape(&row.shape))
            .unwrap_or_default();
        let _ = writeln!(out, "output {name}: {shape}");
    }
    if let Some(loss) = &summary.loss {
        let others = match loss.other_layers {
            0 => String::new(),
            1 => " and 1 more layer".into(),
            count => format!(" and {count} more layers"),
        };
        let _ = writeln!(
            out,
            "loss   {}: [] from {}{others} ({} FLOPs at N=1, not in the forward totals)",
            loss.name,
            loss.functions.join(", "),
            group_digits(loss.cost.flops())
        );
    }
    out.push('\n');
    let tree = PathTree::build(&summary.rows);
    let mut lines = vec![Line {
        path: "Layer (instance path)".into(),
        op: "Op".into(),
        shape: "Output shape".into(),
        params: "Params".into(),
        macs: "MACs (N=1)".into(),
        field: "RF".into(),
        stride: "Stride".into(),
    }];
    collect_lines(&tree, summary, network, depth, &mut lines);
    let widths = [
        lines
            .iter()
            .map(|line| line.path.chars().count())
            .max()
            .unwrap_or(0),
        lines.iter().map(|line| line.op.len()).max().unwrap_or(0),
        lines.iter().map(|line| line.shape.len()).max().unwrap_or(0),
        lines
            .iter()
            .map(|line| line.params.len())
            .max()
            .unwrap_or(0),
        lines.iter().map(|line| line.macs.len()).max().unwrap_or(0),
        lines.iter().map(|line| line.field.len()).max().unwrap_or(0),
        lines
            .iter()
            .map(|line| line.stride.len())
            .max()
            .unwrap_or(0),
    ];
    let total_width = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    for (index, line) in lines.iter().enumerate() {
        let text = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}  {:>w5$}  {:>w6$}",
            line.path,
            line.op,
            line.shape,
            line.params,
            line.macs,
            line.field,
            line.stride,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
            w5 = widths[5],
            w6 = widths[6],
        );
        let _ = writeln!(out, "{}", text.trim_end());
        if index == 0 {
            let _ = writeln!(out, "{}", "-".repeat(total_width));
        }
    }
    let _ = writeln!(out, "{}", "-".repeat(total_width));
    write_totals(summary, &mut out);
    out
}

fn collect_lines(
    tree: &PathTree,
    summary: &Summary,
    network: &Network,
    depth: Option<usize>,
    lines: &mut Vec<Line>,
) {
    for &row in &tree.rows {
        lines.push(row_line(&summary.rows[row], network));
    }
    for child in &tree.children {
        if !child.is_group() {
            collect_lines(child, summary, network, depth, lines);
            continue;
        }
        let rows = child.all_rows();
        let last = &summary.rows[*rows.last().expect("a group has rows")];
        let params: u64 = rows
            .iter()
            .map(|row| summary.rows[*row].params)
            .fold(0, u64::saturating_add);
        let macs: u64 = rows
            .iter()
            .map(|row| summary.rows[*row].cost.macs)
            .fold(0, u64::saturating_add);
        let collapsed = depth.is_some_and(|depth| child.path.depth() >= depth);
        let block = block_name(network, &child.path);
        lines.push(Line {
            path: indented(&child.path),
            op: if collapsed {
                format!("{block} (collapsed)")
            } else {
                block
            },
            shape: network.format_shape(&last.shape),
            params: group_digits(params),
            macs: group_digits(macs),
            field: last
                .receptive_field
                .map(|field| {
                    if field.global {
                        "global".into()
                    } else {
                        format_pair(field.size)
                    }
                })
                .unwrap_or_default(),
            stride: last
                .receptive_field
                .map(|field| format_pair(field.jump))
                .unwrap_or_default(),
        });
        if !collapsed {
            collect_lines(child, summary, network, depth, lines);
        }
    }
}

fn block_name(network: &Network, path: &InstancePath) -> String {
    let found = network
        .block_instances
        .iter()
        .find(|(instance, _)| instance == path);
    found
        .map(|(_, name)| name.clone())
        .unwrap_or_else(|| "group".into())
}

fn indented(path: &InstancePath) -> String {
    format!("{}{}", "  ".repeat(path.depth().saturating_sub(1)), path)
}

fn row_line(row: &LayerRow, network: &Network) -> Line {
    let params = if row.shared {
        "(shared)".to_string()
    } else {
        group_digits(row.params)
    };
    Line {
        path: indented(&row.path),
        op: row.op.clone(),
        shape: network.format_shape(&row.shape),
        params,
        macs: group_digits(row.cost.macs),
        field: row
            .receptive_field
            .map(|field| {
                if field.global {
                    "global".into()
                } else {
                    format_pair(field.size)
                }
            })
            .unwrap_or_default(),
        stride: row
            .receptive_field
            .map(|field| format_pair(field.jump))
            .unwrap_or_default(),
    }
}

fn write_totals(summary: &Summary, out: &mut String) {
    let _ = writeln!(
        out,
        "Params:            {:>16}  (trainable {}; PyTorch's parameters())",
        group_digits(summary.params),
        group_digits(summary.trainable_params())
    );
    let _ = writeln!(
        out,
        "Buffers:           {:>16}  (non-trainable state: batch-norm running statistics)",
        group_digits(summary.buffers)
    );
    let _ = writeln!(
        out,
        "Forward MACs:      {:>16}  ({}, batch 1)",
        group_digits(summary.cost.macs),
        human(summary.cost.macs as f64, "MAC")
    );
    let _ = writeln!(
        out,
        "Forward FLOPs:     {:>16}  ({}; 1 MAC = 2 FLOPs, plus {} for bias, activation, pooling, normalization)",
        group_digits(summary.cost.flops()),
        human(summary.cost.flops() as f64, "FLOP"),
        group_digits(summary.cost.other_flops)
    );
    let _ = writeln!(
        out,
        "Parameter memory:  {:>16}  bytes ({}, f32 params and buffers)",
        group_digits(summary.param_bytes),
        human_bytes(summary.param_bytes)
    );
    let _ = writeln!(
        out,
        "Activation memory: {:>16}  bytes ({}, every layer output at batch 1, f32)",
        group_digits(summary.activation_bytes),
        human_bytes(summary.activation_bytes)
    );
}

/// `11689512` as `11,689,512`.
pub fn group_digits(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn human(value: f64, unit: &str) -> String {
    let (scaled, prefix) = if value >= 1e12 {
        (value / 1e12, "T")
    } else if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "K")
    } else {
        (value, "")
    };
    format!("{scaled:.2} {prefix}{unit}s")
}

fn human_bytes(bytes: u64) -> String {
    let value = bytes as f64;
    let mib = 1024.0 * 1024.0;
    if value >= 1024.0 * mib {
        format!("{:.2} GiB", value / (1024.0 * mib))
    } else if value >= mib {
        format!("{:.2} MiB", value / mib)
    } else {
        format!("{:.2} KiB", value / 1024.0)
    }
}
