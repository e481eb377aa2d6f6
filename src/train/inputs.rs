//! The data a training step reads: the network's inputs with the loss's labels, their shapes,
//! which of them hold integer ids and how many distinct ids each accepts, and seeded random
//! data of those shapes (for `nnc step`, `nnc gradcheck` and benchmarks).

use std::collections::BTreeMap;

use crate::ir::{Dim, ElementType, LossFunction, Op};
use crate::prim::PrimGraph;
use crate::tensor::Tensor;
use crate::Compilation;

/// One data input of a training step graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataInput {
    pub name: String,
    pub shape: Vec<usize>,
    /// Integer ids (tokens, class labels): whole numbers.
    pub integer: bool,
    /// For ids: how many there are (ids run from 0 to `limit - 1`), when known: the rows of the
    /// tables a gather reads with them, or the class count of the loss they label.
    pub id_limit: Option<usize>,
}

/// The first `count` inputs of `graph`, with the id limits the graph and the spec's loss imply.
pub fn data_inputs(graph: &PrimGraph, count: usize, compilation: &Compilation) -> Vec<DataInput> {
    let mut limits = crate::api::forward::integer_input_limits(graph);
    for (name, classes) in class_label_limits(compilation) {
        let limit = limits.entry(name).or_insert(classes);
        *limit = (*limit).min(classes);
    }
    graph
        .inputs
        .iter()
        .take(count)
        .map(|(name, id)| {
            let ty = &graph.node(*id).ty;
            DataInput {
                name: name.clone(),
                shape: ty.shape.clone(),
                integer: ty.element_type == ElementType::Int64,
                id_limit: limits.get(name).copied(),
            }
        })
        .collect()
}

/// Seeded random data: floats uniform in [-1, 1), ids uniform below their limit (0 when the
/// limit is unknown, the one id every table has).
pub fn random_data(inputs: &[DataInput], seed: u64) -> Vec<Tensor<f32>> {
    let mut numbers = SplitMix(seed ^ 0x7472_6169_6E5F_6461);
    inputs
        .iter()
        .map(|input| {
            let count: usize = input.shape.iter().product();
            let data = if input.integer {
                // Ids stay below 2^24, where every integer is an f32.
                let limit = input.id_limit.unwrap_or(1).clamp(1, 1 << 24) as f64;
                (0..count)
                    .map(|_| (numbers.unit() * limit).floor() as f32)
                    .collect()
            } else {
                (0..count)
                    .map(|_| (2.0 * numbers.unit() - 1.0) as f32)
                    .collect()
            };
            Tensor {
                shape: input.shape.clone(),
                data,
            }
        })
        .collect()
}

/// A seeded stream of numbers in [0, 1) (SplitMix64), the same on every machine.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 53 random bits as a number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        ((self.unit() * bound as f64) as usize).min(bound - 1)
    }
}

/// For each int input that a `cross_entropy` loss reads as its class ids, the class count:
/// the size of the logits' class dim (dim 1, or 0 for unbatched logits, unless the loss says).
fn class_label_limits(compilation: &Compilation) -> BTreeMap<String, usize> {
    let network = &compilation.network;
    let shapes = &compilation.shapes.table;
    let mut limits = BTreeMap::new();
    for id in network.graph.node_ids() {
        let Op::Loss(attrs) = &network.graph.node(id).op else {
            continue;
        };
        let LossFunction::CrossEntropy { class_dim, .. } = &attrs.function else {
            continue;
        };
        let operands = network.graph.inputs(id);
        let (Some(logits), Some(target)) = (operands.first(), operands.get(1)) else {
            continue;
        };
        let Op::Input {
            name,
            element_type: ElementType::Int64,
            ..
        } = &network.graph.node(*target).op
        else {
            continue;
        };
        let logits_shape = shapes.shape(*logits);
        let rank = logits_shape.len() as i64;
        let dim = class_dim.unwrap_or(if rank >= 2 { 1 } else { 0 });
        let dim = if dim < 0 { dim + rank } else { dim };
        if let Some(Dim::Known(classes)) = usize::try_from(dim)
            .ok()
            .and_then(|dim| logits_shape.get(dim))
        {
            limits.insert(name.clone(), *classes as usize);
        }
    }
    limits
}
