//! `autodiff::simplify` on every spec's gradient graph at reduced sizes: the simplified graph
//! verifies, keeps every input and output (names and order), computes bit-for-bit the same
//! outputs in the f64 reference interpreter (NaN where the original has NaN; `-0` and `+0`
//! count as equal, see the module doc of `simplify.rs`), has fewer nodes, and is a fixpoint.
//! Run with `--nocapture` to see the node counts before and after per spec.

mod gradient_common;

use gradient_common::{case_of, compile, inputs, parameters, symbols, Case};
use nnc::autodiff::{gradient_of_parameters, lower_training, simplify, trainable_parameters};
use nnc::prim::{verify, PrimGraph, PrimOp};

/// Nodes of a graph and of every scan body in it.
fn total_nodes(graph: &PrimGraph) -> usize {
    graph
        .node_ids()
        .map(|id| match &graph.node(id).op {
            PrimOp::Scan { body, .. } => 1 + total_nodes(&body.graph),
            _ => 1,
        })
        .sum()
}

/// The unsimplified gradient graph of the spec's loss, or `None` if it declares no loss.
fn raw_gradient(case: &Case) -> Option<(nnc::Compilation, PrimGraph)> {
    let compilation = compile(case);
    let symbols = symbols(case, &compilation);
    let (forward, loss_output) = lower_training(&compilation, &symbols).ok()?;
    let trainable = trainable_parameters(&compilation);
    let graph = gradient_of_parameters(&forward, loss_output, &[], &|name| {
        trainable.contains(name)
    })
    .unwrap_or_else(|error| panic!("{}: {error}", case.spec));
    Some((compilation, graph))
}

fn check(case: &Case) -> Option<(usize, usize)> {
    let (compilation, raw) = raw_gradient(case)?;
    let simplified = simplify(&raw);
    verify(&simplified).unwrap_or_else(|error| panic!("{}: {error}", case.spec));
    let names = |graph: &PrimGraph| -> Vec<String> {
        let inputs = graph.inputs.iter().map(|(name, _)| format!("in {name}"));
        let outputs = graph.outputs.iter().map(|(name, _)| format!("out {name}"));
        inputs.chain(outputs).collect()
    };
    assert_eq!(names(&raw), names(&simplified), "{}: interface", case.spec);
    let inputs = inputs(&raw, 5);
    let params = parameters(&compilation, 3);
    let before = nnc::interpret::interpret(&raw, &inputs, &params)
        .unwrap_or_else(|error| panic!("{} before: {error}", case.spec));
    let after = nnc::interpret::interpret(&simplified, &inputs, &params)
        .unwrap_or_else(|error| panic!("{} after: {error}", case.spec));
    for ((name, _), (expected, found)) in raw.outputs.iter().zip(before.iter().zip(&after)) {
        assert_eq!(expected.shape, found.shape, "{}: `{name}`", case.spec);
        let differing = expected
            .data
            .iter()
            .zip(&found.data)
            .position(|(a, b)| !(a == b || (a.is_nan() && b.is_nan())));
        if let Some(index) = differing {
            panic!(
                "{}: output `{name}` element {index}: {} before simplification, {} after",
                case.spec, expected.data[index], found.data[index]
            );
        }
    }
    let again = simplify(&simplified);
    assert_eq!(
        total_nodes(&again),
        total_nodes(&simplified),
        "{}: a second simplification still changes the graph",
        case.spec
    );
    Some((total_nodes(&raw), total_nodes(&simplified)))
}

#[test]
fn simplification_keeps_every_spec_gradient_exact_and_smaller() {
    let checked = std::cell::Cell::new(0);
    insta::glob!("../specs", "*.nn", |path| {
        let case = case_of(path);
        match check(case) {
            Some((before, after)) => {
                println!(
                    "{:<20} nodes {before:>6} -> {after:>6} ({:.0}% fewer)",
                    case.spec,
                    100.0 * (before - after) as f64 / before as f64
                );
                assert!(after < before, "{}: nothing was simplified", case.spec);
                checked.set(checked.get() + 1);
            }
            None => panic!("{} declares no loss", case.spec),
        }
    });
    assert!(checked.get() > 0, "no spec checked");
}
