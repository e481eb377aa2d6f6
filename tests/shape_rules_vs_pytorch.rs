//! nnc's output-size rules for windows (convolution, transposed convolution, pooling) against
//! the shapes PyTorch computes for the same 1,000 random configurations
//! (tests/fixtures/pytorch_window_shapes.json, made by scripts/make_shape_fixtures.py).
//!
//! Where PyTorch accepts a configuration, nnc must give the same shape, except that nnc rejects
//! a floored division that drops real input rows ("... is not an integer"); such a rejection is
//! only allowed where PyTorch's division was in fact inexact. nnc also rejects outputs with a
//! zero-sized dim, which PyTorch returns as empty tensors. Where PyTorch rejects, nnc must too.

use nnc::elaborate::ElaborateOptions;
use serde_json::Value;

fn list(value: &Value) -> String {
    let items: Vec<String> = value
        .as_array()
        .expect("a list")
        .iter()
        .map(|item| item.to_string())
        .collect();
    format!("[{}]", items.join(", "))
}

fn layer_call(case: &Value) -> String {
    let kind = case["kind"].as_str().expect("kind");
    let (kernel, stride, pad, dilation) = (
        list(&case["kernel"]),
        list(&case["stride"]),
        list(&case["pad"]),
        list(&case["dilation"]),
    );
    match kind {
        "conv2d" => format!(
            "conv2d({}, {kernel}, stride = {stride}, pad = {pad}, dilation = {dilation}, groups = {})",
            case["out_channels"], case["groups"]
        ),
        "conv_transpose2d" => format!(
            "conv_transpose2d({}, {kernel}, stride = {stride}, pad = {pad}, output_pad = {}, dilation = {dilation}, groups = {})",
            case["out_channels"],
            list(&case["output_pad"]),
            case["groups"]
        ),
        "max_pool2d" => format!("max_pool2d({kernel}, stride = {stride}, pad = {pad}, dilation = {dilation}, ceil = {})", case["ceil"]),
        _ => format!("avg_pool2d({kernel}, stride = {stride}, pad = {pad}, ceil = {})", case["ceil"]),
    }
}

/// Whether PyTorch's floor division `(I + 2P - D(K-1) - 1) / S` was inexact on some axis.
fn floor_was_inexact(case: &Value) -> bool {
    (0..2).any(|axis| {
        let size = [case["height"].as_i64(), case["width"].as_i64()][axis].expect("size");
        let at = |key: &str| case[key][axis].as_i64().expect("number");
        let span = size + 2 * at("pad") - at("dilation") * (at("kernel") - 1) - 1;
        span >= 0 && span % at("stride") != 0
    })
}

#[test]
fn window_output_sizes_match_pytorch() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/pytorch_window_shapes.json"))
        .expect("fixture parses");
    let mut checked = 0;
    for case in fixture["cases"].as_array().expect("cases") {
        let spec = format!(
            "input x: [N, {}, {}, {}]\noutput y = x -> {}\n",
            case["channels"],
            case["height"],
            case["width"],
            layer_call(case)
        );
        let result = nnc::compile(&spec, &ElaborateOptions::default());
        let torch_shape = &case["torch_shape"];
        match (result, torch_shape.is_null()) {
            (Ok(compilation), false) => {
                let (_, output) = compilation.network.outputs[0];
                let shape = compilation
                    .network
                    .format_shape(compilation.shapes.table.shape(output));
                let expected = format!(
                    "[N, {}]",
                    torch_shape.as_array().expect("shape")[1..]
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                assert_eq!(shape, expected, "spec:\n{spec}");
            }
            (Ok(_), true) => panic!("PyTorch rejects this layer but nnc accepts it:\n{spec}"),
            (Err(diagnostics), false) => {
                let message = nnc::render_diagnostics(&diagnostics, "case.nn", &spec);
                let is_floor_rejection = message.contains("is not an integer");
                let torch_output_is_empty = torch_shape
                    .as_array()
                    .expect("shape")
                    .iter()
                    .any(|dim| dim == 0);
                let floor_rejection_allowed = is_floor_rejection
                    && floor_was_inexact(case)
                    && case["ceil"] != Value::Bool(true);
                assert!(
                    floor_rejection_allowed || (torch_output_is_empty && message.contains("is not positive")),
                    "PyTorch accepts this layer with shape {torch_shape} but nnc rejects it:\n{spec}\n{message}"
                );
            }
            (Err(_), true) => {}
        }
        checked += 1;
    }
    assert_eq!(checked, 1000);
}
