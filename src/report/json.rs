//! The JSON report (`nnc build --format json`). Schema version 1, documented in docs/report.md;
//! keys are only ever added, never renamed or removed, within a schema version.

use serde::Serialize;

use super::receptive_field::ReceptiveField;
use super::tree::PathTree;
use super::Summary;
use crate::ir::{Dim, Network, Op};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Report {
    schema_version: u32,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    params: u64,
    trainable_params: u64,
    buffers: u64,
    macs: u64,
    flops: u64,
    param_bytes: u64,
    activation_bytes: u64,
    layers: Vec<Layer>,
    blocks: Vec<Block>,
    /// `null` when the spec declares no `loss`.
    loss: Option<Loss>,
}

#[derive(Serialize)]
struct Loss {
    name: String,
    functions: Vec<String>,
    /// The inputs that only the loss reads (labels, targets).
    inputs: Vec<String>,
    /// The layers only the loss needs, at batch 1; not in the forward `flops`.
    flops: u64,
}

#[derive(Serialize)]
struct Tensor {
    name: String,
    shape: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct Layer {
    path: String,
    op: String,
    /// Numbers, with symbolic dims as their names (`"N"`).
    shape: Vec<serde_json::Value>,
    params: u64,
    buffers: u64,
    shared: bool,
    macs: u64,
    flops: u64,
    receptive_field: Option<[f64; 2]>,
    effective_stride: Option<[f64; 2]>,
}

#[derive(Serialize)]
struct Block {
    path: String,
    block: String,
    params: u64,
    macs: u64,
}

fn shape_json(network: &Network, shape: &[Dim]) -> Vec<serde_json::Value> {
    shape
        .iter()
        .map(|dim| match dim {
            Dim::Known(size) => serde_json::Value::from(*size),
            Dim::Symbolic(symbol) => serde_json::Value::from(network.symbol(*symbol).name.clone()),
        })
        .collect()
}

pub fn render(summary: &Summary, network: &Network) -> String {
    let inputs = network
        .inputs
        .iter()
        .filter_map(|input| match &network.graph.node(*input).op {
            Op::Input { name, shape, .. } => Some(Tensor {
                name: name.clone(),
                shape: shape_json(network, shape),
            }),
            _ => None,
        })
        .collect();
    let outputs = network
        .outputs
        .iter()
        .filter_map(|(name, node)| {
            let row = summary.rows.iter().find(|row| row.node == *node)?;
            Some(Tensor {
                name: name.clone(),
                shape: shape_json(network, &row.shape),
            })
        })
        .collect();
    let layers = summary
        .rows
        .iter()
        .map(|row| Layer {
            path: row.path.to_string(),
            op: row.op.clone(),
            shape: shape_json(network, &row.shape),
            params: row.params,
            buffers: row.buffers,
            shared: row.shared,
            macs: row.cost.macs,
            flops: row.cost.flops(),
            receptive_field: row.receptive_field.map(|field: ReceptiveField| field.size),
            effective_stride: row.receptive_field.map(|field| field.jump),
        })
        .collect();
    let mut blocks = Vec::new();
    collect_blocks(
        &PathTree::build(&summary.rows),
        summary,
        network,
        &mut blocks,
    );
    let report = Report {
        schema_version: SCHEMA_VERSION,
        inputs,
        outputs,
        params: summary.params,
        trainable_params: summary.trainable_params(),
        buffers: summary.buffers,
        macs: summary.cost.macs,
        flops: summary.cost.flops(),
        param_bytes: summary.param_bytes,
        activation_bytes: summary.activation_bytes,
        layers,
        blocks,
        loss: summary.loss.as_ref().map(|loss| Loss {
            name: loss.name.clone(),
            functions: loss.functions.clone(),
            inputs: loss.inputs.clone(),
            flops: loss.cost.flops(),
        }),
    };
    serde_json::to_string_pretty(&report)
        .expect("the report serializes: it holds only numbers and strings")
}

fn collect_blocks(tree: &PathTree, summary: &Summary, network: &Network, blocks: &mut Vec<Block>) {
    for child in &tree.children {
        if !child.is_group() {
            continue;
        }
        let rows = child.all_rows();
        let block = network
            .block_instances
            .iter()
            .find(|(path, _)| *path == child.path)
            .map(|(_, name)| name.clone());
        blocks.push(Block {
            path: child.path.to_string(),
            block: block.unwrap_or_else(|| "group".into()),
            params: rows
                .iter()
                .map(|row| summary.rows[*row].params)
                .fold(0, u64::saturating_add),
            macs: rows
                .iter()
                .map(|row| summary.rows[*row].cost.macs)
                .fold(0, u64::saturating_add),
        });
        collect_blocks(child, summary, network, blocks);
    }
}
