use std::collections::BTreeMap;
use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::lower::SymbolValues;
use nnc::tensor::Tensor;
use nnc::train::gradcheck::norm_error;
use nnc::train::{data_inputs, gradient_graph, lower_for_training, random_data};
use nnc::weights::ParamStore;
use nnc::runtime::Executable;

#[test]
fn first_divergence() {
    let spec = std::env::var("SPEC").unwrap();
    let image: u64 = std::env::var("IMAGE").unwrap().parse().unwrap();
    let text = std::fs::read_to_string(&spec).unwrap();
    let options = ElaborateOptions { param_overrides: vec![("classes".into(), OverrideValue::Int(10))], input_shape_overrides: vec![("image".into(), vec![3,image,image])] };
    let compilation = nnc::compile(&text, &options).unwrap();
    let symbols = SymbolValues::report_values(&compilation.network).with("N", 2);
    let (forward, loss) = lower_for_training(&compilation, &symbols).unwrap();
    let trainable = nnc::autodiff::trainable_parameters(&compilation);
    let mut graph = gradient_graph(&forward, &loss, &|n| trainable.contains(n)).unwrap();
    let order = graph.topological_order();
    graph.outputs = order.iter().filter(|id| graph.node(**id).ty.element_type == nnc::ir::ElementType::Float32).map(|id| (format!("n{}", id.index()), *id)).collect();
    let params = ParamStore::initialize(&compilation, 7);
    let p64: BTreeMap<String, Tensor<f64>> = params.iter().map(|(n, t)| (n.to_string(), t.to_f64())).collect();
    let inputs = random_data(&data_inputs(&forward, forward.inputs.len(), &compilation), 11);
    let i64s: Vec<Tensor<f64>> = inputs.iter().map(Tensor::to_f64).collect();
    let a = nnc::interpret::interpret(&graph, &i64s, &p64).unwrap();
    let exe = Executable::new(graph.clone(), 1).unwrap();
    let b = exe.run(&params, &inputs).unwrap();
    let mut shown = 0;
    for ((x, y), (name, id)) in a.iter().zip(&b).zip(&graph.outputs) {
        let (e, n) = norm_error(&y.data, &x.data);
        if e > 1e-3 && n > 1e-12 {
            let node = graph.node(*id);
            let ops: Vec<String> = graph.operands(*id).iter().map(|o| format!("n{} {} {:?}", o.index(), graph.node(*o).op.name(), graph.node(*o).ty.shape)).collect();
            println!("{name} {} {:?} at {} err {e:e} norm {n:e} operands {:?}", node.op.name(), node.ty.shape, node.origin.path, ops);
            shown += 1;
            if shown > 12 { break; }
        }
    }
}
