//! Every spec in specs/ compiles, and what a user sees of it is snapshotted: the text report,
//! the JSON report and the IR dump. Review changes with `cargo insta review`.

use nnc::elaborate::ElaborateOptions;

fn compile_spec(path: &std::path::Path) -> nnc::Compilation {
    let text = std::fs::read_to_string(path).expect("spec is readable");
    match nnc::compile(&text, &ElaborateOptions::default()) {
        Ok(compilation) => compilation,
        Err(diagnostics) => panic!(
            "{}",
            nnc::render_diagnostics(&diagnostics, &path.display().to_string(), &text)
        ),
    }
}

#[test]
fn every_spec_report_table() {
    insta::glob!("../specs", "*.nn", |path| {
        let compilation = compile_spec(path);
        let summary = nnc::report::summarize(&compilation);
        insta::assert_snapshot!(nnc::report::table::render(
            &summary,
            &compilation.network,
            None
        ));
    });
}

#[test]
fn every_spec_report_json() {
    insta::glob!("../specs", "*.nn", |path| {
        let compilation = compile_spec(path);
        let summary = nnc::report::summarize(&compilation);
        insta::assert_snapshot!(nnc::report::json::render(&summary, &compilation.network));
    });
}

#[test]
fn every_spec_ir_dump() {
    insta::glob!("../specs", "*.nn", |path| {
        let compilation = compile_spec(path);
        insta::assert_snapshot!(nnc::ir::print::print_network(
            &compilation.network,
            &compilation.shapes.table
        ));
    });
}
