//! Graphviz DOT of the layer graph (`nnc graph`): one box per layer with its path, op and output
//! shape; blocks as nested clusters; edges in dataflow direction.

use std::fmt::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::tree::PathTree;
use super::{summarize, Summary};
use crate::Compilation;

pub fn render(compilation: &Compilation) -> String {
    let network = &compilation.network;
    let summary = summarize(compilation);
    let mut out = String::from("digraph network {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
    write_cluster(
        &PathTree::build(&summary.rows),
        &summary,
        compilation,
        1,
        &mut out,
    );
    for id in network.graph.node_ids() {
        for input in network.graph.inputs(id) {
            let _ = writeln!(out, "  n{} -> n{};", input.index(), id.index());
        }
    }
    for (name, node) in &network.outputs {
        let _ = writeln!(
            out,
            "  out_{} [label=\"output {}\", shape=oval];\n  n{} -> out_{};",
            escape(name),
            escape(name),
            node.index(),
            escape(name)
        );
    }
    out.push_str("}\n");
    out
}

fn write_cluster(
    tree: &PathTree,
    summary: &Summary,
    compilation: &Compilation,
    indent: usize,
    out: &mut String,
) {
    let network = &compilation.network;
    let pad = "  ".repeat(indent);
    for &row_index in &tree.rows {
        let row = &summary.rows[row_index];
        let label = format!(
            "{}\\n{}\\n{}",
            escape(&row.path.to_string()),
            row.op,
            network.format_shape(&row.shape)
        );
        let _ = writeln!(out, "{pad}n{} [label=\"{label}\"];", row.node.index());
    }
    for child in &tree.children {
        if !child.is_group() {
            write_cluster(child, summary, compilation, indent, out);
            continue;
        }
        let name = child.path.to_string();
        let _ = writeln!(
            out,
            "{pad}subgraph \"cluster_{}\" {{\n{pad}  label=\"{}\";\n{pad}  style=rounded;",
            escape(&name),
            escape(&name)
        );
        write_cluster(child, summary, compilation, indent + 1, out);
        let _ = writeln!(out, "{pad}}}");
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Writes DOT to `path`, or SVG through Graphviz's `dot` when `path` ends in `.svg`.
pub fn write(dot: &str, path: &Path) -> Result<(), String> {
    let is_svg = path.extension().is_some_and(|extension| extension == "svg");
    if !is_svg {
        return std::fs::write(path, dot)
            .map_err(|error| format!("cannot write `{}`: {error}", path.display()));
    }
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .arg("-o")
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|error| format!("SVG output needs Graphviz's `dot` on the PATH ({error}); write a .dot file instead"))?;
    if let Some(stdin) = child.stdin.as_mut() {
        use std::io::Write as _;
        stdin
            .write_all(dot.as_bytes())
            .map_err(|error| format!("cannot pipe to `dot`: {error}"))?;
    }
    let status = child
        .wait()
        .map_err(|error| format!("`dot` failed: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`dot` exited with {status}"))
    }
}
