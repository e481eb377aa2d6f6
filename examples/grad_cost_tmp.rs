fn main() {
    let path = std::env::args().nth(1).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let compilation = nnc::compile(&text, &Default::default()).ok().unwrap();
    let symbols = nnc::lower::SymbolValues::report_values(&compilation.network);
    let g = nnc::autodiff::training_gradient(&compilation, &symbols).unwrap();
    let (graph, _) = nnc::autodiff::rematerialize(&g.graph);
    let forward = nnc::autodiff::forward_nodes(&graph);
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    for id in graph.node_ids() {
        if forward.contains(&id) { continue; }
        let c = nnc::prim::cost::node_cost(&graph, id);
        if c.macs > 0 {
            let n = graph.node(id);
            let ops: Vec<String> = graph.operands(id).iter().map(|o| format!("{}{:?}", graph.node(*o).op.name(), graph.node(*o).ty.shape)).collect();
            *by.entry(format!("{} {} {:?} <- {}", n.origin.path, n.op.name(), n.ty.shape, ops.join(","))).or_default() += c.macs;
        }
    }
    for (k, v) in by { println!("{v:>12} {k}"); }
}
