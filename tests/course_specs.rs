//! The course specs (mlp, lenet5, fcn, yolov1, the recurrent classifiers, char_rnn, transformer,
//! dcgan_generator, vae, custom_cell, siamese, gaussian_regression) and the prelude's attention
//! and transformer blocks match PyTorch: the same trainable parameter count and, where the spec
//! uses PyTorch's module names, the same state_dict (names, shapes, parameter vs buffer).
//!
//! The expected values come from tests/fixtures/pytorch_reference_counts.txt, written by
//! scripts/pytorch_reference_counts.py, which builds each architecture in torch.nn:
//!   `<name> <count>` lines, and `state <name> <key> <AxB> <param|buffer>` lines.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::OnceLock;

use nnc::elaborate::ElaborateOptions;

/// `key -> (shape, is_parameter)`.
type StateDict = BTreeMap<String, (Vec<u64>, bool)>;

struct Fixture {
    counts: HashMap<String, u64>,
    state_dicts: HashMap<String, StateDict>,
}

const FIXTURE: &str = "tests/fixtures/pytorch_reference_counts.txt";

fn fixture() -> &'static Fixture {
    static FIXTURE_DATA: OnceLock<Fixture> = OnceLock::new();
    FIXTURE_DATA.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        parse_fixture(&text)
    })
}

fn parse_fixture(text: &str) -> Fixture {
    let mut counts = HashMap::new();
    let mut state_dicts: HashMap<String, StateDict> = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || -> ! { panic!("{FIXTURE}:{}: malformed line `{line}`", number + 1) };
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["state", network, key, shape, kind] => {
                let shape = if *shape == "scalar" {
                    Vec::new()
                } else {
                    shape
                        .split('x')
                        .map(|size| size.parse().unwrap_or_else(|_| malformed()))
                        .collect()
                };
                let is_parameter = match *kind {
                    "param" => true,
                    "buffer" => false,
                    _ => malformed(),
                };
                let previous = state_dicts
                    .entry(network.to_string())
                    .or_default()
                    .insert(key.to_string(), (shape, is_parameter));
                assert!(
                    previous.is_none(),
                    "{FIXTURE}: duplicate entry {network} {key}"
                );
            }
            [name, count] => {
                let count = count.parse().unwrap_or_else(|_| malformed());
                assert!(
                    counts.insert(name.to_string(), count).is_none(),
                    "{FIXTURE}: duplicate count for {name}"
                );
            }
            _ => malformed(),
        }
    }
    Fixture {
        counts,
        state_dicts,
    }
}

fn reference_count(name: &str) -> u64 {
    *fixture()
        .counts
        .get(name)
        .unwrap_or_else(|| panic!("{FIXTURE} has no count for `{name}`"))
}

fn compile_text(name: &str, text: &str) -> nnc::Compilation {
    match nnc::compile(text, &ElaborateOptions::default()) {
        Ok(compilation) => compilation,
        Err(diagnostics) => panic!("{}", nnc::render_diagnostics(&diagnostics, name, text)),
    }
}

fn compile_spec(network: &str) -> nnc::Compilation {
    let spec_path = format!("specs/{network}.nn");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&spec_path))
        .unwrap_or_else(|error| panic!("cannot read {spec_path}: {error}"));
    compile_text(&spec_path, &text)
}

/// nnc's state_dict with keys in PyTorch's spelling: `prefix` (the instance path a test gave the
/// block under test) is removed, and the prelude's attention input projection `in_proj.weight`
/// / `in_proj.bias` becomes torch.nn.MultiheadAttention's bare `in_proj_weight` / `in_proj_bias`.
fn torch_state_dict(compilation: &nnc::Compilation, prefix: &str) -> StateDict {
    let mut state_dict = StateDict::new();
    for (key, shape, trainable) in compilation.shapes.params.state_dict_entries() {
        let key = key.strip_prefix(prefix).unwrap_or(&key);
        let key = key
            .replace("in_proj.weight", "in_proj_weight")
            .replace("in_proj.bias", "in_proj_bias");
        let previous = state_dict.insert(key.clone(), (shape, trainable));
        assert!(previous.is_none(), "nnc has two tensors named {key}");
    }
    state_dict
}

fn assert_same_state_dict(name: &str, nnc_state: &StateDict) {
    let Some(expected) = fixture().state_dicts.get(name) else {
        return;
    };
    let missing: Vec<&String> = expected
        .keys()
        .filter(|key| !nnc_state.contains_key(*key))
        .collect();
    let extra: Vec<&String> = nnc_state
        .keys()
        .filter(|key| !expected.contains_key(*key))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: state_dict keys differ from PyTorch's\n  only in PyTorch: {missing:?}\n  only in nnc: {extra:?}"
    );
    for (key, (shape, is_parameter)) in expected {
        let (nnc_shape, nnc_trainable) = &nnc_state[key];
        assert_eq!(nnc_shape, shape, "{name}: shape of {key}");
        assert_eq!(
            nnc_trainable, is_parameter,
            "{name}: parameter vs buffer for {key}"
        );
    }
}

/// Compiles specs/<network>.nn and compares it with the PyTorch reference of the same name.
fn check_spec(network: &str) {
    check_spec_renamed(network, &[]);
}

/// As [`check_spec`], with some nnc state_dict keys renamed to PyTorch's first.
fn check_spec_renamed(network: &str, renames: &[(&str, &str)]) {
    let compilation = compile_spec(network);
    assert_eq!(
        compilation.shapes.params.trainable_count(),
        reference_count(network),
        "specs/{network}.nn: trainable parameters vs PyTorch ({FIXTURE})"
    );
    let mut state = torch_state_dict(&compilation, "");
    for (nnc_key, torch_key) in renames {
        let value = state
            .remove(*nnc_key)
            .unwrap_or_else(|| panic!("specs/{network}.nn has no tensor {nnc_key}"));
        state.insert(torch_key.to_string(), value);
    }
    assert_same_state_dict(network, &state);
}

/// The shapes of a compilation's outputs, in declaration order, as `[N, T, 512]`.
fn output_shapes(compilation: &nnc::Compilation) -> Vec<String> {
    compilation
        .network
        .outputs
        .iter()
        .map(|(_, node)| {
            compilation
                .network
                .format_shape(compilation.shapes.table.shape(*node))
        })
        .collect()
}

macro_rules! spec_tests {
    ($($network:ident),* $(,)?) => {
        $(
            #[test]
            fn $network() {
                check_spec(stringify!($network));
            }
        )*
    };
}

spec_tests!(
    mlp,
    lenet5,
    fcn,
    yolov1,
    lstm_classifier,
    gru_classifier,
    char_rnn,
    transformer,
    dcgan_generator,
    vae,
    siamese,
    gaussian_regression,
);

/// The hand-written LSTM cell holds exactly nn.LSTM(128, 256)'s tensors: `ih` is the input
/// projection (weight_ih_l0, bias_ih_l0) and `hh` the recurrent one (weight_hh_l0, bias_hh_l0).
#[test]
fn custom_cell() {
    check_spec_renamed(
        "custom_cell",
        &[
            ("lstm.ih.weight", "lstm.weight_ih_l0"),
            ("lstm.ih.bias", "lstm.bias_ih_l0"),
            ("lstm.hh.weight", "lstm.weight_hh_l0"),
            ("lstm.hh.bias", "lstm.bias_hh_l0"),
        ],
    );
}

#[test]
fn fixture_covers_every_course_spec() {
    for network in [
        "mlp",
        "lenet5",
        "fcn",
        "yolov1",
        "lstm_classifier",
        "gru_classifier",
        "char_rnn",
        "transformer",
        "dcgan_generator",
        "vae",
        "custom_cell",
        "siamese",
        "gaussian_regression",
        "multi_head_attention",
        "transformer_encoder_layer",
        "transformer_decoder_layer",
    ] {
        reference_count(network);
    }
}

#[test]
fn spec_output_shapes() {
    let cases = [
        ("fcn", vec!["[N, 21, 224, 224]"]),
        ("yolov1", vec!["[N, 7, 7, 30]"]),
        ("lstm_classifier", vec!["[N, 2]"]),
        ("char_rnn", vec!["[N, T, 65]"]),
        ("transformer", vec!["[N, 2]"]),
        ("dcgan_generator", vec!["[N, 3, 64, 64]"]),
        ("vae", vec!["[N, 784]", "[N, 20]", "[N, 20]"]),
        ("custom_cell", vec!["[N, 2]"]),
        ("siamese", vec!["[N, 1]"]),
        ("gaussian_regression", vec!["[N, 1]", "[N, 1]"]),
    ];
    for (network, expected) in cases {
        assert_eq!(
            output_shapes(&compile_spec(network)),
            expected,
            "specs/{network}.nn"
        );
    }
}

/// The siamese encoder is one shared layer: applied twice, counted once.
#[test]
fn siamese_encoder_is_shared() {
    let compilation = compile_spec("siamese");
    let groups = &compilation.shapes.params.groups;
    let shared: Vec<_> = groups
        .iter()
        .filter(|(path, _)| path.to_string().starts_with("encoder."))
        .collect();
    assert_eq!(
        shared.len(),
        4,
        "the encoder has two conv2d and two dense layers"
    );
    for (path, group) in shared {
        assert_eq!(group.uses, 2, "{path} is applied to both inputs");
    }
}

const ENCODER_LAYER_SPEC: &str = "
dim T = 16
input x: [N, T, 512]
output y = x -> transformer_encoder_layer(512, 8, 2048) as layer
";

/// nn.TransformerEncoderLayer(d_model=512, nhead=8, dim_feedforward=2048): 3,152,384.
#[test]
fn transformer_encoder_layer_matches_pytorch() {
    let compilation = compile_text("encoder_layer.nn", ENCODER_LAYER_SPEC);
    assert_eq!(
        compilation.shapes.params.trainable_count(),
        reference_count("transformer_encoder_layer")
    );
    assert_eq!(output_shapes(&compilation), ["[N, T, 512]"]);
    assert_same_state_dict(
        "transformer_encoder_layer",
        &torch_state_dict(&compilation, "layer."),
    );
}

#[test]
fn transformer_encoder_layer_norm_first_has_the_same_parameters() {
    let spec = ENCODER_LAYER_SPEC.replace("(512, 8, 2048)", "(512, 8, 2048, norm_first = true)");
    let compilation = compile_text("encoder_layer_norm_first.nn", &spec);
    assert_eq!(
        compilation.shapes.params.trainable_count(),
        reference_count("transformer_encoder_layer")
    );
    assert_same_state_dict(
        "transformer_encoder_layer",
        &torch_state_dict(&compilation, "layer."),
    );
}

/// nn.TransformerDecoderLayer(512, 8, 2048), with memory of another length S.
#[test]
fn transformer_decoder_layer_matches_pytorch() {
    let spec = "
dim T = 16
dim S = 24
input x: [N, T, 512]
input memory: [N, S, 512]
output y = x -> transformer_decoder_layer(512, 8, 2048, memory) as layer
";
    let compilation = compile_text("decoder_layer.nn", spec);
    assert_eq!(
        compilation.shapes.params.trainable_count(),
        reference_count("transformer_decoder_layer")
    );
    assert_eq!(output_shapes(&compilation), ["[N, T, 512]"]);
    assert_same_state_dict(
        "transformer_decoder_layer",
        &torch_state_dict(&compilation, "layer."),
    );
}

/// Self and cross attention both have nn.MultiheadAttention(512, 8)'s parameters; cross
/// attention keeps the query length T and reads keys and values of length S.
#[test]
fn multi_head_attention_self_and_cross() {
    let spec = "
dim T = 16
dim S = 24
input x: [N, T, 512]
input enc: [N, S, 512]
output self_attended = x -> multi_head_attention(512, 8) as self_attn
output masked = x -> multi_head_attention(512, 8, causal = true, dropout = 0.1) as masked_attn
output cross = x -> multi_head_attention(512, 8, memory = enc) as cross_attn
";
    let compilation = compile_text("attention.nn", spec);
    let attention = reference_count("multi_head_attention");
    assert_eq!(compilation.shapes.params.trainable_count(), 3 * attention);
    assert_eq!(
        output_shapes(&compilation),
        ["[N, T, 512]", "[N, T, 512]", "[N, T, 512]"]
    );
    for prefix in ["self_attn.", "masked_attn.", "cross_attn."] {
        let state: StateDict = torch_state_dict(&compilation, "")
            .into_iter()
            .filter_map(|(key, value)| key.strip_prefix(prefix).map(|key| (key.to_string(), value)))
            .collect();
        assert_same_state_dict("multi_head_attention", &state);
    }
}
