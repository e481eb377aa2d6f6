//! Primitive-level cost counting (`nnc::prim::cost`) against the layer-level report
//! (`nnc::report::summarize`), two independent computations with one convention: for every spec
//! at its report sizes (batch 1, the spec's own image sizes and sequence lengths), the MACs of
//! the lowered inference graph equal the report's MACs. The report counts a layer's textbook
//! products; the primitive count adds up the matmuls and convolutions that lowering emitted
//! (attention's projections and products, recurrent gates split into an input projection
//! outside the scan and a recurrent one inside it).

use nnc::elaborate::ElaborateOptions;
use nnc::prim::cost::{graph_cost, node_cost, Cost};
use nnc::prim::{PrimGraph, PrimNodeId, PrimOp};

fn compile_spec(path: &std::path::Path) -> nnc::Compilation {
    let text = std::fs::read_to_string(path).expect("spec is readable");
    nnc::compile(&text, &ElaborateOptions::default()).unwrap_or_else(|diagnostics| {
        panic!(
            "{}",
            nnc::render_diagnostics(&diagnostics, &path.display().to_string(), &text)
        )
    })
}

#[test]
fn lowered_macs_equal_the_report_for_every_spec() {
    insta::glob!("../specs", "*.nn", |path| {
        let compilation = compile_spec(path);
        let summary = nnc::report::summarize(&compilation);
        let symbols = nnc::lower::SymbolValues::report_values(&compilation.network);
        let graph = nnc::lower::lower(&compilation, &symbols).expect("lowers");
        let cost = graph_cost(&graph);
        println!(
            "{:<24} report MACs {:>14}  primitive MACs {:>14}  FLOPs report {:>14} primitive {:>14}",
            path.file_name().unwrap().to_string_lossy(),
            summary.cost.macs,
            cost.macs,
            summary.cost.flops(),
            cost.flops()
        );
        assert_eq!(
            cost.macs,
            summary.cost.macs,
            "{}: MACs of the lowered graph differ from the report",
            path.display()
        );
    });
}

fn origin() -> nnc::prim::Origin {
    nnc::prim::Origin {
        path: nnc::ir::InstancePath(vec!["case".into()]),
        span: nnc::syntax::Span::new(nnc::syntax::SourceId::Spec, 0, 0),
    }
}

fn parameter(graph: &mut PrimGraph, name: &str, shape: &[usize]) -> PrimNodeId {
    let op = PrimOp::Parameter {
        name: name.into(),
        shape: shape.to_vec(),
    };
    graph.add(op, &[], origin()).unwrap()
}

#[test]
fn conventions_on_single_nodes() {
    use nnc::prim::*;
    let mut graph = PrimGraph::default();
    let x = parameter(&mut graph, "x", &[2, 3, 8, 8]);
    let w = parameter(&mut graph, "w", &[4, 3, 3, 3]);
    let conv = Conv2dParams {
        stride: [1, 1],
        padding: [[1, 1], [1, 1]],
        dilation: [1, 1],
        groups: 1,
    };
    let conv = graph.add(PrimOp::Conv2d(conv), &[x, w], origin()).unwrap();
    // 2*4*8*8 outputs, each a 3x3x3 window.
    assert_eq!(node_cost(&graph, conv).macs, 2 * 4 * 8 * 8 * 27);
    let relu = graph
        .add(PrimOp::Unary(UnaryFn::Relu), &[conv], origin())
        .unwrap();
    assert_eq!(
        node_cost(&graph, relu),
        Cost {
            macs: 0,
            other_flops: 512
        }
    );
    let pool = Pool2dParams {
        kind: PoolKind::Max,
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
        dilation: [1, 1],
        ceil_mode: false,
    };
    let pool = graph.add(PrimOp::Pool2d(pool), &[relu], origin()).unwrap();
    // 2*4*4*4 windows of 4 taps: 3 compares each.
    assert_eq!(node_cost(&graph, pool).other_flops, 128 * 3);
    let mean = PrimOp::Reduce {
        op: ReduceFn::Mean,
        axes: vec![2, 3],
        keepdim: false,
    };
    let mean = graph.add(mean, &[pool], origin()).unwrap();
    // 128 inputs added, 8 divisions.
    assert_eq!(node_cost(&graph, mean).other_flops, 128 + 8);
    let table = parameter(&mut graph, "table", &[4, 5]);
    let product = graph.add(PrimOp::MatMul, &[mean, table], origin()).unwrap();
    assert_eq!(node_cost(&graph, product).macs, 2 * 5 * 4);
    assert_eq!(node_cost(&graph, product).flops(), 2 * 2 * 5 * 4);
}
