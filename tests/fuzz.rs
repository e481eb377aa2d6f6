//! Robustness: no input makes nnc panic. Random token soups, random layer pipelines with extreme
//! arguments, and mutations of the real specs go through `nnc::compile`, and, when that succeeds,
//! through `nnc::report::summarize` and the table and JSON reports. Any panic is a bug; the
//! failing input is printed (and shrunk by proptest).
//!
//! Case counts keep the whole file around 20 seconds in a debug build; raise them with
//! `PROPTEST_CASES=...` for a longer hunt.

use std::panic::{catch_unwind, AssertUnwindSafe};

use nnc::elaborate::ElaborateOptions;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestCaseError};

/// Compiles `text` and renders its report; a panic anywhere is a test failure.
fn no_panic(text: &str) -> Result<(), TestCaseError> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        match nnc::compile(text, &ElaborateOptions::default()) {
            Ok(compilation) => {
                let summary = nnc::report::summarize(&compilation);
                let table = nnc::report::table::render(&summary, &compilation.network, None);
                assert!(!table.is_empty());
                nnc::report::json::render(&summary, &compilation.network);
            }
            Err(diagnostics) => {
                assert!(
                    !diagnostics.is_empty(),
                    "compile failed with no diagnostics"
                );
                nnc::render_diagnostics(&diagnostics, "fuzz.nn", text);
            }
        }
    }));
    match outcome {
        Ok(()) => Ok(()),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!(
                "nnc panicked ({message}) on this input:\n-----\n{text}\n-----"
            )))
        }
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(cases),
        // Failures are printed with their input; do not write regression files into the tree.
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Token soup from a grammar-ish alphabet.

const TOKENS: &[&str] = &[
    "input",
    "param",
    "dim",
    "layer",
    "output",
    "out",
    "state",
    "next",
    "block",
    "repeat",
    "in",
    "if",
    "else",
    "as",
    "and",
    "or",
    "not",
    "true",
    "false",
    "int",
    "N",
    "T",
    "x",
    "y",
    "image",
    "in",
    "c",
    "i",
    "conv2d",
    "dense",
    "relu",
    "flatten",
    "reshape",
    "concat",
    "matmul",
    "lstm",
    "embedding",
    "batch_norm",
    "max_pool2d",
    "split",
    "slice",
    "multi_head_attention",
    "transformer_encoder_layer",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "->",
    ":",
    ".",
    "..",
    ";",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "==",
    "!=",
    "<",
    ">",
    "<=",
    ">=",
    "0",
    "1",
    "3",
    "-1",
    "64",
    "2.5",
    "1K",
    "1e308",
    "99999999999",
    "9223372036854775807",
    "\"same\"",
    "\"open",
    "# comment\n",
    "\n",
    "{i + 1}",
    "x: [N, 3, 32, 32]",
    "output y = x",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(select(TOKENS), 0..48).prop_map(|tokens| tokens.join(" "))
}

// ---------------------------------------------------------------------------------------------
// (b) Random layer pipelines: well-formed text whose arguments and shapes are extreme, to reach
// the shape rules and the cost model.

/// Mostly sizes a real network uses, sometimes extreme ones, so that many specs get past
/// elaboration and the extreme values meet the shape rules and the cost model.
const SMALL_NUMBERS: &[&str] = &[
    "1", "1", "2", "2", "3", "3", "4", "5", "7", "8", "16", "-1", "0",
];
const EXTREME_NUMBERS: &[&str] = &[
    "-2",
    "65536",
    "4294967296",
    "99999999999",
    "1099511627776",
    "1e308",
    "2.5",
    "16777216",
];

fn number() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => select(SMALL_NUMBERS), 1 => select(EXTREME_NUMBERS)]
}

fn boolean() -> impl Strategy<Value = &'static str> {
    select(&["true", "false"][..])
}

fn layer_call() -> impl Strategy<Value = String> {
    let n = number;
    prop_oneof![
        (n(), n(), n(), n(), n(), n()).prop_map(|(c, k, s, p, d, g)| format!(
            "conv2d({c}, {k}, stride = {s}, pad = {p}, dilation = {d}, groups = {g})"
        )),
        (n(), n(), n())
            .prop_map(|(c, k, s)| format!("conv2d({c}, {k}, stride = {s}, pad = \"same\")")),
        (n(), n(), n(), n(), n(), n()).prop_map(|(c, k, s, p, o, d)| format!(
            "conv_transpose2d({c}, {k}, stride = {s}, pad = {p}, output_pad = {o}, dilation = {d})"
        )),
        (n(), n(), n(), n(), boolean()).prop_map(|(k, s, p, d, b)| format!(
            "max_pool2d({k}, stride = {s}, pad = {p}, dilation = {d}, ceil = {b})"
        )),
        (n(), n(), n(), boolean()).prop_map(|(k, s, p, b)| format!(
            "avg_pool2d({k}, stride = {s}, pad = {p}, ceil = {b})"
        )),
        (n(), n()).prop_map(|(h, w)| format!("adaptive_avg_pool2d([{h}, {w}])")),
        Just("global_avg_pool2d".to_string()),
        n().prop_map(|f| format!("dense({f})")),
        (n(), n()).prop_map(|(f, i)| format!("dense({f}, inputs = {i})")),
        (n(), n()).prop_map(|(s, e)| format!("flatten(start = {s}, end = {e})")),
        Just("flatten".to_string()),
        (n(), n(), n()).prop_map(|(a, b, c)| format!("reshape({a}, {b}, {c})")),
        (n(), n()).prop_map(|(a, b)| format!("reshape(N, {a}, {b})")),
        (n(), n(), n()).prop_map(|(a, b, c)| format!("permute({a}, {b}, {c})")),
        (n(), n()).prop_map(|(a, b)| format!("transpose({a}, {b})")),
        select(
            &[
                "relu",
                "gelu",
                "tanh",
                "sigmoid",
                "identity",
                "causal_mask",
                "randn_like"
            ][..]
        )
        .prop_map(str::to_string),
        n().prop_map(|d| format!("softmax(dim = {d})")),
        n().prop_map(|p| format!("dropout({p})")),
        Just("batch_norm".to_string()),
        n().prop_map(|d| format!("layer_norm(dims = {d})")),
        (n(), n()).prop_map(|(c, d)| format!("embedding({c}, {d})")),
        (n(), n(), n()).prop_map(|(d, s, e)| format!("slice({d}, {s}, {e})")),
        (n(), n()).prop_map(|(d, i)| format!("select({d}, {i})")),
        (n(), boolean()).prop_map(|(d, k)| format!("mean(dim = {d}, keepdim = {k})")),
        (n(), n()).prop_map(|(d, s)| format!("concat(dim = {d}) as cat{s}")),
        (
            select(&["rnn", "lstm", "gru"][..]),
            n(),
            n(),
            boolean(),
            boolean()
        )
            .prop_map(|(kind, h, l, b, s)| format!(
                "{kind}({h}, layers = {l}, bidirectional = {b}, sequence = {s})"
            )),
        (n(), n()).prop_map(|(d, h)| format!("multi_head_attention({d}, {h})")),
        n().prop_map(|r| format!("repeat {r} {{ relu }}")),
        (n(), n()).prop_map(|(a, b)| format!("(dense({a}) -> relu) as grp{b}")),
    ]
}

fn dim() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => select(&["1", "2", "3", "7", "16", "28", "64", "T"][..]),
        1 => select(&["N", "0", "-1", "65536", "16777216", "99999999999", "1099511627776"][..]),
    ]
}

/// Mostly `[N, C, H, W]` images, sometimes other ranks.
fn dims() -> impl Strategy<Value = Vec<&'static str>> {
    prop_oneof![
        3 => prop::collection::vec(dim(), 3..4),
        1 => prop::collection::vec(dim(), 1..6),
    ]
    .prop_map(|mut dims| {
        dims.insert(0, "N");
        dims
    })
}

fn pipeline_spec() -> impl Strategy<Value = String> {
    (
        dims(),
        prop_oneof![7 => Just(""), 1 => Just(" int")],
        prop::collection::vec(layer_call(), 1..6),
        0..5u8,
    )
        .prop_map(|(dims, element, layers, tail)| {
            let mut text = format!("dim T = 16\ninput x: [{}]{element}\n", dims.join(", "));
            text.push_str(&format!("y = x -> {}\n", layers.join(" -> ")));
            text.push_str(match tail {
                0 => "output out = y\n",
                1 => "output out = y + x\n",
                2 => "output out = matmul(y, x)\n",
                3 => "output out = concat(y, y, dim = 1)\n",
                _ => "a, b = split(y, [1, 1], dim = -1)\noutput out = a * b\n",
            });
            text
        })
}

// ---------------------------------------------------------------------------------------------
// (c) Mutations of real specs: delete, duplicate or swap token spans, replace numbers.

/// Seeds beyond specs/: the prelude blocks, a recurrent cell and a shared layer.
const EXTRA_SEEDS: &[&str] = &[
    "dim T = 32\ninput tokens: [N, T] int\n\
     x = tokens -> embedding(1000, 64) as embed\n\
     y = x -> transformer_encoder_layer(64, 4, 128) as layer0\n\
     output logits = y -> multi_head_attention(64, 4, causal = true) as attn -> dense(10) as head\n",
    "block cell(hidden) {\n  state h: [hidden]\n  h2 = concat(in, h, dim = 1) -> dense(hidden) as proj -> tanh\n  next h = h2\n  out h2\n}\n\
     dim T = 8\ninput x: [N, T, 16]\noutput y = x -> cell(32) as rnn -> lstm(20, layers = 2) as lstm\n",
    "layer enc = dense(128)\ninput a: [N, 64]\ninput b: [N, 64]\n\
     output d = (a -> enc) - (b -> enc) -> relu -> dense(1) as head\n",
    "param c = 32\nblock dense_layer(g) {\n  out concat(in, in -> batch_norm as norm -> relu -> conv2d(g, 3, pad = 1) as conv, dim = 1)\n}\n\
     input image: [N, 3, 64, 64]\n\
     output y = image -> conv2d(c, 3, pad = 1) as stem -> repeat i in 0..3 { dense_layer(c // 2) as denselayer{i + 1} }\n\
       -> avg_pool2d(2) -> if c > 16 { max_pool2d(2, ceil = true) } else { identity } -> flatten -> dense(c * 2 - 1) as fc\n",
];

fn seeds() -> Vec<String> {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
    let mut seeds: Vec<String> = std::fs::read_dir(&directory)
        .map(|entries| {
            let mut paths: Vec<_> = entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|extension| extension == "nn"))
                .collect();
            paths.sort();
            paths
                .iter()
                .filter_map(|path| std::fs::read_to_string(path).ok())
                .collect()
        })
        .unwrap_or_default();
    seeds.extend(EXTRA_SEEDS.iter().map(|seed| seed.to_string()));
    seeds
}

/// A token with the whitespace before it, so that joining tokens gives back the text.
#[derive(Clone, Debug)]
struct Token {
    space: String,
    text: String,
}

fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut position = 0;
    while position < chars.len() {
        let space_start = position;
        while position < chars.len() && chars[position].is_whitespace() {
            position += 1;
        }
        let space: String = chars[space_start..position].iter().collect();
        if position == chars.len() {
            tokens.push(Token {
                space,
                text: String::new(),
            });
            break;
        }
        let start = position;
        let c = chars[position];
        if c == '#' {
            while position < chars.len() && chars[position] != '\n' {
                position += 1;
            }
        } else if c == '"' {
            position += 1;
            while position < chars.len() && chars[position] != '"' && chars[position] != '\n' {
                position += 1;
            }
            position = (position + 1).min(chars.len());
        } else if c.is_alphanumeric() || c == '_' {
            while position < chars.len()
                && (chars[position].is_alphanumeric()
                    || chars[position] == '_'
                    || (chars[position] == '.'
                        && chars[start].is_ascii_digit()
                        && chars.get(position + 1).is_some_and(char::is_ascii_digit)))
            {
                position += 1;
            }
        } else {
            let pair: String = chars[position..(position + 2).min(chars.len())]
                .iter()
                .collect();
            position += if ["->", "==", "!=", "<=", ">=", "//", ".."].contains(&pair.as_str()) {
                2
            } else {
                1
            };
        }
        tokens.push(Token {
            space,
            text: chars[start..position].iter().collect(),
        });
    }
    tokens
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(Index, u8),
    Duplicate(Index, u8),
    Swap(Index, Index, u8),
    ReplaceNumber(Index, &'static str),
}

const REPLACEMENTS: &[&str] = &[
    "0",
    "-1",
    "99999999999",
    "1e308",
    "9223372036854775807",
    "1099511627777",
    "2.5",
    "1G",
    "-99999999999",
    "3",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1..6u8).prop_map(|(at, length)| Mutation::Delete(at, length)),
        (any::<Index>(), 1..6u8).prop_map(|(at, length)| Mutation::Duplicate(at, length)),
        (any::<Index>(), any::<Index>(), 1..4u8)
            .prop_map(|(a, b, length)| Mutation::Swap(a, b, length)),
        (any::<Index>(), select(REPLACEMENTS))
            .prop_map(|(at, value)| Mutation::ReplaceNumber(at, value)),
        (any::<Index>(), select(REPLACEMENTS))
            .prop_map(|(at, value)| Mutation::ReplaceNumber(at, value)),
    ]
}

fn apply(tokens: &mut Vec<Token>, mutation: &Mutation) {
    if tokens.is_empty() {
        return;
    }
    let range = |at: &Index, length: u8, tokens: &Vec<Token>| {
        let start = at.index(tokens.len());
        start..(start + length as usize).min(tokens.len())
    };
    match mutation {
        Mutation::Delete(at, length) => {
            let range = range(at, *length, tokens);
            tokens.drain(range);
        }
        Mutation::Duplicate(at, length) => {
            let range = range(at, *length, tokens);
            let copy: Vec<Token> = tokens[range.clone()].to_vec();
            let end = range.end;
            tokens.splice(end..end, copy);
        }
        Mutation::Swap(a, b, length) => {
            let first = range(a, *length, tokens);
            let second = range(b, *length, tokens);
            if first.end <= second.start || second.end <= first.start {
                let (early, late) = if first.start < second.start {
                    (first, second)
                } else {
                    (second, first)
                };
                let late_tokens: Vec<Token> = tokens[late.clone()].to_vec();
                let early_tokens: Vec<Token> = tokens[early.clone()].to_vec();
                tokens.splice(late, early_tokens);
                tokens.splice(early, late_tokens);
            }
        }
        Mutation::ReplaceNumber(at, value) => {
            let numbers: Vec<usize> = (0..tokens.len())
                .filter(|index| {
                    tokens[*index]
                        .text
                        .starts_with(|c: char| c.is_ascii_digit())
                })
                .collect();
            if !numbers.is_empty() {
                tokens[numbers[at.index(numbers.len())]].text = value.to_string();
            }
        }
    }
}

fn mutated_spec() -> impl Strategy<Value = String> {
    let seeds = seeds();
    assert!(!seeds.is_empty(), "no seed specs found");
    (select(seeds), prop::collection::vec(mutation(), 1..5)).prop_map(|(seed, mutations)| {
        let mut tokens = tokenize(&seed);
        for mutation in &mutations {
            apply(&mut tokens, mutation);
        }
        tokens
            .iter()
            .map(|token| format!("{}{}", token.space, token.text))
            .collect()
    })
}

#[test]
fn tokenizer_round_trips_the_seeds() {
    for seed in seeds() {
        let joined: String = tokenize(&seed)
            .iter()
            .map(|token| format!("{}{}", token.space, token.text))
            .collect();
        assert_eq!(joined, seed);
    }
}

/// The extra seeds are valid specs, so that their mutations start from working networks.
#[test]
fn extra_seeds_compile() {
    for seed in EXTRA_SEEDS {
        if let Err(diagnostics) = nnc::compile(seed, &ElaborateOptions::default()) {
            panic!("{}", nnc::render_diagnostics(&diagnostics, "seed.nn", seed));
        }
    }
}

proptest! {
    #![proptest_config(config(1_500))]
    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        no_panic(&text)?;
    }
}

proptest! {
    #![proptest_config(config(2_000))]
    #[test]
    fn extreme_pipelines_never_panic(text in pipeline_spec()) {
        no_panic(&text)?;
    }
}

proptest! {
    #![proptest_config(config(700))]
    #[test]
    fn mutated_specs_never_panic(text in mutated_spec()) {
        no_panic(&text)?;
    }
}

/// How often each generator produces a spec that compiles (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn generator_yield() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for (name, strategy) in [
        ("token soup", token_soup().boxed()),
        ("pipelines", pipeline_spec().boxed()),
        ("mutations", mutated_spec().boxed()),
    ] {
        let mut compiled = 0;
        let mut examples = Vec::new();
        for _ in 0..1000 {
            let text = strategy.new_tree(&mut runner).expect("a value").current();
            match nnc::compile(&text, &ElaborateOptions::default()) {
                Ok(_) => compiled += 1,
                Err(diagnostics) => {
                    if examples.len() < 3 {
                        examples.push(diagnostics[0].message.clone());
                    }
                }
            }
        }
        println!("{name}: {compiled}/1000 compile; e.g. {examples:?}");
    }
}

/// Prints what a user sees for `text`: the report, or the diagnostics.
fn show(text: &str) {
    println!("=====\n{text}-----");
    match nnc::compile(text, &ElaborateOptions::default()) {
        Ok(compilation) => {
            let summary = nnc::report::summarize(&compilation);
            println!(
                "{}",
                nnc::report::table::render(&summary, &compilation.network, None)
            );
        }
        Err(diagnostics) => println!("{}", nnc::render_diagnostics(&diagnostics, "spec.nn", text)),
    }
}

/// Compiles the files named in `NNC_FUZZ_FILES` (colon-separated) and prints what a user would
/// see: a helper for reproducing a failing input (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn reproduce() {
    let files = std::env::var("NNC_FUZZ_FILES").unwrap_or_default();
    for path in files.split(':').filter(|path| !path.is_empty()) {
        let text = std::fs::read_to_string(path).expect("readable file");
        println!("=== {path}");
        show(&text);
    }
}

/// Deep nesting and long chains must give an error, not overflow the stack (which would abort
/// this whole test binary).
#[test]
fn deep_and_long_inputs_do_not_overflow() {
    let deep_blocks: String = (0..70)
        .map(|level| {
            let inner = if level < 69 {
                format!(" -> b{}", level + 1)
            } else {
                String::new()
            };
            format!("block b{level}() {{\n  out in -> relu{inner}\n}}\n")
        })
        .collect();
    let name_chain: String = (0..3000)
        .map(|index| format!("a{index} = a{} -> relu\n", index + 1))
        .collect();
    let cases = [
        format!(
            "input x: [N, 4]\nparam p = {}1{}\noutput y = x -> dense(p)\n",
            "(".repeat(20_000),
            ")".repeat(20_000)
        ),
        format!(
            "input x: [N, 4]\nparam p = {}1{}\noutput y = x -> dense(1)\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
        format!(
            "input x: [N, 4]\nparam p = {}\noutput y = x -> dense(p)\n",
            vec!["1"; 100_000].join(" + ")
        ),
        format!(
            "input x: [N, 4]\noutput y = x -> {}relu{}\n",
            "(".repeat(300),
            ")".repeat(300)
        ),
        format!(
            "input x: [N, 4]\noutput y = x -> {}{{ relu }}\n",
            "if false { relu } else ".repeat(300)
        ),
        format!(
            "input x: [N, 4]\nparam p = {}1\noutput y = x -> dense(p)\n",
            "if false { 1 } else ".repeat(300)
        ),
        format!("input x: [N, 4]\noutput y = a0\n{name_chain}a3000 = x\n"),
        format!("{deep_blocks}input x: [N, 4]\noutput y = x -> b0\n"),
        format!(
            "input x: [N, 4]\noutput y = x{}\n",
            " -> relu".repeat(20_000)
        ),
    ];
    for text in &cases {
        no_panic(text).unwrap_or_else(|error| panic!("{error}"));
    }
}

/// Hand-picked corners: integer extremes, non-finite floats, self-referencing names and layers,
/// odd tuples and cells. Each must compile or fail with diagnostics, never panic.
#[test]
fn edge_cases_do_not_panic() {
    let params = [
        "-9223372036854775807 - 1",
        "(-9223372036854775807 - 1) / -1",
        "(-9223372036854775807 - 1) % -1",
        "(-9223372036854775807 - 1) // -1",
        "abs(-9223372036854775807 - 1)",
        "-(-9223372036854775807 - 1)",
        "max(-9223372036854775807 - 1, 1)",
        "9223372036854775807 + 1",
        "9223372036854775807 * 2",
        "1e308 * 10",
        "0.0 / 0.0",
        "1 / 0.0",
        "5 // 0",
        "5 % 0",
        "pow(2, 10000)",
        "pow(-8, 1 / 3)",
        "floor(1e300)",
        "round(-1e300)",
        "sqrt(-1)",
        "log(0)",
        "exp(1000)",
        "min()",
        "max(1, 2.5, \"a\")",
        "if 1 { 2 } else { 3 }",
        "if true { 2 }",
        "[1, [2, [3]]]",
        "\"text\" + 1",
        "not 3",
        "-true",
        "1 < \"a\"",
        "N + 1",
        "N == N",
    ];
    let mut texts: Vec<String> = params
        .iter()
        .map(|param| format!("param p = {param}\ninput x: [N, 8]\noutput y = x -> dense(p) -> repeat p {{ relu }} as r{{p}}\n"))
        .collect();
    let specs = [
        "layer relu = relu\ninput x: [N, 8]\noutput y = x -> relu -> dense(3)\n",
        "layer dense = dense(4)\ninput x: [N, 8]\noutput y = x -> dense -> dense\n",
        "layer l = l\ninput x: [N, 8]\noutput y = x -> l\n",
        "layer a = b\nlayer b = a\ninput x: [N, 8]\noutput y = x -> a\n",
        "input N: [N, 3]\noutput y = N\n",
        "dim N = 0\ninput x: [N, 3]\noutput y = x\n",
        "dim T = 99999999999\ninput x: [N, T, T]\noutput y = x -> dense(2)\n",
        "input x: [N]\noutput y = x -> dense(3)\n",
        "input x: [N, 4]\na, b = split(x, [2, 2, 0], dim = 1)\noutput y = a\n",
        "input x: [N, 4]\na, b = split(x, [2, 2, 1], dim = 1)\noutput y = a + b\n",
        "input x: [N, 4]\noutput y = x -> split([2, 2], dim = 1) -> relu\n",
        "input x: [N, 4]\noutput y = x -> split([2, 2], dim = 1) -> concat(dim = 1)\n",
        "input x: [N, 4]\noutput y = [] -> concat(dim = 1)\n",
        "input x: [N, 4]\noutput y = [x, 3] -> concat(dim = 1)\n",
        "input x: [N, 4]\noutput y = 3\n",
        "input x: [N, 4]\nparam p = x\noutput y = x\n",
        "input x: [N, 4]\noutput y = x -> if x { relu }\n",
        "input x: [N, 4]\noutput y = x -> repeat i in 5..2 { relu } -> repeat 0 { relu }\n",
        "input x: [N, 4]\noutput y = x -> repeat 2.5 { relu }\n",
        "input x: [N, 4]\noutput y = x -> relu as {1 / 0} -> relu as {1e308} -> relu as {\"a.b\"}\n",
        "input x: [N, 4]\noutput y = x -> (relu -> relu) as a.b.c -> relu as a.b\n",
        "input x: [N, 4]\noutput y = x\noutput y = x\n",
        "input x: [N, 4]\noutput x\n",
        "block b(c = c) {\n  out in -> dense(c)\n}\ninput x: [N, 4]\noutput y = x -> b\n",
        "block b() {\n  out in, in\n}\ninput x: [N, 4]\noutput y = x -> b -> concat(dim = 1)\n",
        "block b() {\n  out in\n  out in\n}\ninput x: [N, 4]\noutput y = x -> b\n",
        "block b() {\n  y = in\n}\ninput x: [N, 4]\noutput y = x -> b\n",
        "block c(h) {\n  state s: [h]\n  next s = s\n  next s = s\n  out s\n}\ndim T = 4\ninput x: [N, T, 4]\noutput y = x -> c(4)\n",
        "block c(h) {\n  state s: [T]\n  next s = in\n  out in, s\n}\ndim T = 4\ninput x: [N, T, 4]\noutput y = x -> c(4)\n",
        "block c(h) {\n  state s: [h]\n  next s = in -> dense(h)\n  out s\n}\ninput x: [N, 4]\noutput y = x -> c(4)\n",
        "block c(h) {\n  state s: [h, h]\n  next s = s -> dense(h) as d\n  out s -> flatten\n}\ndim T = 3\ninput x: [N, T, 4]\noutput y = x -> c(4) as c1 -> c(4) as c2\n",
        "block c(h) {\n  state s: [h]\n  layer shared = dense(h)\n  next s = concat(in, s, dim = 1) -> shared\n  out s -> shared\n}\ndim T = 3\ninput x: [N, T, 4]\noutput y = x -> c(4)\n",
        "input x: [N, 3, 8, 8]\noutput y = x -> conv_transpose2d(4, 3, stride = 1099511627776, pad = 0) -> conv2d(2, 1)\n",
        "input x: [N, 3, 8, 8]\noutput y = x -> max_pool2d(1099511627776, pad = 549755813888) -> relu\n",
        "input x: [N, 3, 8, 8]\noutput y = x -> conv2d(4, 3, dilation = 1099511627776, pad = 1099511627776)\n",
        "input x: [N, 3, 1099511627776, 1]\noutput y = x -> conv2d(4, [1099511627776, 1]) -> max_pool2d([1, 1])\n",
        "input x: [N, 1099511627776]\noutput y = x -> dense(1099511627776)\n",
        "input x: [N, 16777216]\noutput y = x -> repeat 10000 { dense(16777216) }\n",
        "input x: [N, 8, 4]\noutput y = x -> lstm(1099511627776, layers = 3, bidirectional = true)\n",
        "input x: [N, 8] int\noutput y = x -> embedding(1099511627776, 1099511627776)\n",
        "dim T = 1099511627776\ninput x: [N, T, T, T, T]\noutput y = x -> mean(dim = 1)\n",
        "input x: [N, 4]\noutput y = x -> select(-1, -9223372036854775807) -> slice(0, -9223372036854775807, 9223372036854775807)\n",
        "input x: [N, 4]\noutput y = x -> flatten(start = -9223372036854775807, end = 9223372036854775807)\n",
        "input x: [N, 4]\noutput y = x -> reshape(N, -1, -1)\n",
        "input x: [N, 4]\noutput y = x -> permute(1, 0, 9223372036854775807)\n",
    ];
    texts.extend(specs.iter().map(|spec| spec.to_string()));
    let mut failures = Vec::new();
    for text in &texts {
        if std::env::var("NNC_FUZZ_SHOW").is_ok() {
            show(text);
        }
        if let Err(error) = no_panic(text) {
            failures.push(error.to_string());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
