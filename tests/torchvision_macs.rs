//! Forward MACs of the torchvision specs against the cost torchvision publishes for the same
//! models (tests/fixtures/torchvision_ops.json, from scripts/make_torchvision_ops.py), which is
//! rounded to 3 significant decimals in GMACs: the difference must be within that rounding.

use nnc::elaborate::ElaborateOptions;

fn forward_macs(spec: &str) -> u64 {
    let path = format!("{}/specs/{spec}.nn", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("spec readable");
    let compilation =
        nnc::compile(&text, &ElaborateOptions::default()).unwrap_or_else(|diagnostics| {
            panic!("{}", nnc::render_diagnostics(&diagnostics, &path, &text))
        });
    nnc::report::summarize(&compilation).cost.macs
}

fn check(spec: &str) {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/torchvision_ops.json"))
            .expect("fixture parses");
    let published = fixture[spec]["gmacs"].as_f64().expect("gmacs");
    let text = fixture[spec]["gmacs"].to_string();
    let decimals = text.split('.').nth(1).map_or(0, str::len) as i32;
    let tolerance = 0.5 * 10f64.powi(-decimals);
    let ours = forward_macs(spec) as f64 / 1e9;
    assert!(
        (ours - published).abs() <= tolerance + 1e-12,
        "{spec}: nnc counts {ours:.4} GMACs, torchvision publishes {published}"
    );
}

#[test]
fn resnet18_macs() {
    check("resnet18");
}

#[test]
fn resnet50_macs() {
    check("resnet50");
}

#[test]
fn vgg16_macs() {
    check("vgg16");
}

#[test]
fn alexnet_macs() {
    check("alexnet");
}

#[test]
fn googlenet_macs() {
    check("googlenet");
}

#[test]
fn densenet121_macs() {
    check("densenet121");
}
