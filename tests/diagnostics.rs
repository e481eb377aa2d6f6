//! Every spec in tests/bad/ has one mistake (two in `two_independent_errors.nn`), described by
//! the comment on its first line. Each must fail to compile, and what the user sees is
//! snapshotted verbatim. Review changes with `cargo insta review`.

use nnc::elaborate::{ElaborateOptions, OverrideValue};

fn rendered_failure(path: &std::path::Path, options: &ElaborateOptions) -> String {
    let text = std::fs::read_to_string(path).expect("bad spec is readable");
    let name = path
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    match nnc::compile(&text, options) {
        Ok(_) => panic!(
            "{name} compiled, but it has a mistake: {}",
            text.lines().next().unwrap_or("")
        ),
        Err(diagnostics) => {
            assert!(
                !diagnostics.is_empty(),
                "{name}: failed with no diagnostics"
            );
            nnc::render_diagnostics(&diagnostics, &name, &text)
        }
    }
}

#[test]
fn every_bad_spec_is_reported() {
    insta::glob!("bad/*.nn", |path| {
        insta::assert_snapshot!(rendered_failure(path, &ElaborateOptions::default()));
    });
}

/// `--set clases=10` of a param the spec does not declare (through the library API).
#[test]
fn unknown_param_override() {
    let text =
        "param classes = 1000\ninput x: [N, 64]\noutput logits = x -> dense(classes) as fc\n";
    let options = ElaborateOptions {
        param_overrides: vec![("clases".to_string(), OverrideValue::Int(10))],
        ..ElaborateOptions::default()
    };
    let diagnostics = match nnc::compile(text, &options) {
        Ok(_) => panic!("an override of an undeclared param must fail"),
        Err(diagnostics) => diagnostics,
    };
    insta::assert_snapshot!(nnc::render_diagnostics(&diagnostics, "override.nn", text));
}
