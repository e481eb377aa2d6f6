use std::collections::BTreeMap;
use nnc::elaborate::{ElaborateOptions, OverrideValue};
use nnc::lower::SymbolValues;
use nnc::tensor::Tensor;
use nnc::train::gradcheck::norm_error;
use nnc::train::{data_inputs, gradient_graph, lower_for_training, random_data};
use nnc::train::inputs::SplitMix;
use nnc::weights::ParamStore;

#[test]
fn conditioning() {
    let configs: Vec<(String, u64, usize)> = std::env::var("PROBE").unwrap().split(';').map(|c| { let v: Vec<&str> = c.split(',').collect(); (v[0].to_string(), v[1].parse().unwrap(), v[2].parse().unwrap()) }).collect();
    for (path, image, batch) in configs { let path = path.as_str();
    let text = std::fs::read_to_string(path).unwrap();
    let options = ElaborateOptions { param_overrides: vec![("classes".into(), OverrideValue::Int(10))], input_shape_overrides: vec![("image".into(), vec![3,image,image])] };
    let compilation = nnc::compile(&text, &options).unwrap();
    let symbols = SymbolValues::report_values(&compilation.network).with("N", batch);
    let (forward, loss) = lower_for_training(&compilation, &symbols).unwrap();
    let trainable = nnc::autodiff::trainable_parameters(&compilation);
    let mut graph = gradient_graph(&forward, &loss, &|n| trainable.contains(n)).unwrap();
    graph.outputs.retain(|(name, _)| *name == loss || name.starts_with("grad."));
    let params = ParamStore::initialize(&compilation, 7);
    let p64: BTreeMap<String, Tensor<f64>> = params.iter().map(|(n, t)| (n.to_string(), t.to_f64())).collect();
    let mut p64b = p64.clone();
    let mut r = SplitMix(5);
    for (_, t) in p64b.iter_mut() { for v in t.data.iter_mut() { *v *= 1.0 + 6e-8 * (2.0 * r.unit() - 1.0); } }
    let inputs = random_data(&data_inputs(&forward, forward.inputs.len(), &compilation), 11);
    let i64s: Vec<Tensor<f64>> = inputs.iter().map(Tensor::to_f64).collect();
    let a = nnc::interpret::interpret(&graph, &i64s, &p64).unwrap();
    let b = nnc::interpret::interpret(&graph, &i64s, &p64b).unwrap();
    let mut worst = vec![];
    for ((x, y), (name, _)) in a.iter().zip(&b).zip(&graph.outputs) {
        let yf: Vec<f32> = y.data.iter().map(|v| *v as f32).collect();
        let (e, _) = norm_error(&yf, &x.data);
        worst.push((e, name.clone()));
    }
    worst.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    println!("{path}: {:?}", &worst[..4]);
    }
}
