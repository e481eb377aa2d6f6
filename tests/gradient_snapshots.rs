//! The simplified gradient graph of every spec in specs/ (all declare a loss), as
//! `nnc build --emit grad` prints it, at reduced sizes (batch 2, small images, vocabularies,
//! widths and sequences: `gradient_common::CASES`). Node counts do not shrink with sizes, so
//! the big networks give long files; what a reviewer looks for is the change a diff shows.
//! Regenerate with `INSTA_UPDATE=always cargo test --test gradient_snapshots`.

mod gradient_common;

use gradient_common::{case_of, gradient};

#[test]
fn every_spec_gradient_graph() {
    insta::glob!("../specs", "*.nn", |path| {
        let case = case_of(path);
        let (_, training) =
            gradient(case).unwrap_or_else(|| panic!("{} declares no loss", case.spec));
        nnc::prim::verify(&training.graph).unwrap_or_else(|error| panic!("{error}"));
        insta::assert_snapshot!(nnc::prim::print::print_graph(&training.graph));
    });
}
