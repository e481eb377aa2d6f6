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
    let graph =
        gradient_of_parameters(&forward, loss_output, &[], &|name| trainable.contains(name))
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

mod rules {
    //! Each rule on a small graph: the simplified graph computes the same values on inputs
    //! with NaN, infinities and signed zeros, and has the expected shape.

    use nnc::ir::InstancePath;
    use nnc::prim::*;
    use nnc::tensor::Tensor;

    fn origin() -> Origin {
        Origin {
            path: InstancePath(vec!["case".into()]),
            span: nnc::syntax::Span::new(nnc::syntax::SourceId::Spec, 0, 0),
        }
    }

    struct Builder {
        graph: PrimGraph,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                graph: PrimGraph::default(),
            }
        }

        fn input(&mut self, name: &str, shape: &[usize]) -> PrimNodeId {
            self.graph
                .add_input(name, TensorType::float(shape.to_vec()), origin())
        }

        fn op(&mut self, op: PrimOp, operands: &[PrimNodeId]) -> PrimNodeId {
            self.graph.add(op, operands, origin()).unwrap()
        }

        fn splat(&mut self, shape: &[usize], value: f64) -> PrimNodeId {
            let constant = Constant::Splat {
                shape: shape.to_vec(),
                value,
            };
            self.op(PrimOp::Constant(constant), &[])
        }

        fn binary(&mut self, function: BinaryFn, a: PrimNodeId, b: PrimNodeId) -> PrimNodeId {
            self.op(PrimOp::Binary(function), &[a, b])
        }

        /// Simplifies with `outputs`, checks the values, returns the printed result.
        fn check(mut self, outputs: &[PrimNodeId]) -> (String, usize) {
            self.graph.outputs = outputs
                .iter()
                .enumerate()
                .map(|(index, id)| (format!("out{index}"), *id))
                .collect();
            let simplified = nnc::autodiff::simplify(&self.graph);
            verify(&simplified).unwrap();
            let specials = [f64::NAN, f64::INFINITY, -0.0, 0.0, -2.5, 1e-310, 3.0];
            let inputs: Vec<Tensor<f64>> = self
                .graph
                .inputs
                .iter()
                .map(|(_, id)| {
                    let shape = self.graph.node(*id).ty.shape.clone();
                    let count = shape.iter().product();
                    let data = (0..count).map(|i| specials[i % specials.len()]).collect();
                    Tensor::from_vec(&shape, data).unwrap()
                })
                .collect();
            let params = Default::default();
            let before = nnc::interpret::interpret(&self.graph, &inputs, &params).unwrap();
            let after = nnc::interpret::interpret(&simplified, &inputs, &params).unwrap();
            for (expected, found) in before.iter().zip(&after) {
                assert_eq!(expected.shape, found.shape);
                for (a, b) in expected.data.iter().zip(&found.data) {
                    assert!(a == b || (a.is_nan() && b.is_nan()), "{a} became {b}");
                }
            }
            let printed = print::print_graph(&simplified);
            (printed, simplified.node_count())
        }
    }

    #[test]
    fn identities_drop_and_zero_products_stay() {
        let mut b = Builder::new();
        let x = b.input("x", &[2, 3]);
        let one = b.splat(&[], 1.0);
        let zero = b.splat(&[], 0.0);
        let times_one = b.binary(BinaryFn::Mul, x, one);
        let plus_zero = b.binary(BinaryFn::Add, times_one, zero);
        let negated = b.op(PrimOp::Unary(UnaryFn::Neg), &[plus_zero]);
        let twice = b.op(PrimOp::Unary(UnaryFn::Neg), &[negated]);
        let times_zero = b.binary(BinaryFn::Mul, twice, zero);
        let (printed, count) = b.check(&[twice, times_zero]);
        // x, the zero and x * 0 (NaN * 0 is NaN, so it is not folded to 0).
        assert_eq!(count, 3, "{printed}");
        assert!(printed.contains("output out0 = %0"), "{printed}");
    }

    #[test]
    fn padded_slice_gradients_add_up_to_one_concat() {
        // The gradients of the three slices `0..2`, `2..3` and `3..5` of one `[2, 5]` value,
        // each padded with zeros to the whole value, then added: one concat of the three.
        let mut b = Builder::new();
        let (first, middle, last) = (
            b.input("a", &[2, 2]),
            b.input("b", &[2, 1]),
            b.input("c", &[2, 2]),
        );
        let zeros_3 = b.splat(&[2, 3], 0.0);
        let zeros_2 = b.splat(&[2, 2], 0.0);
        let concat = PrimOp::Concat { axis: 1 };
        let padded_first = b.op(concat.clone(), &[first, zeros_3]);
        let padded_middle = b.op(concat.clone(), &[zeros_2, middle, zeros_2]);
        let padded_last = b.op(concat.clone(), &[zeros_3, last]);
        let partial = b.binary(BinaryFn::Add, padded_last, padded_middle);
        let sum = b.binary(BinaryFn::Add, partial, padded_first);
        // Overlapping nonzero pieces stay an addition.
        let overlapping = b.binary(BinaryFn::Add, padded_first, padded_first);
        let (printed, _) = b.check(&[sum, overlapping]);
        assert!(printed.contains("concat[axis=1](%0, %1, %2)"), "{printed}");
        assert_eq!(printed.matches("add(").count(), 1, "{printed}");
    }

    #[test]
    fn layout_chains_collapse() {
        let mut b = Builder::new();
        let x = b.input("x", &[2, 3, 4]);
        let flat = b.op(PrimOp::Reshape { shape: vec![6, 4] }, &[x]);
        let again = b.op(PrimOp::Reshape { shape: vec![24] }, &[flat]);
        let there = b.op(
            PrimOp::Transpose {
                perm: vec![2, 0, 1],
            },
            &[x],
        );
        let back = b.op(
            PrimOp::Transpose {
                perm: vec![1, 2, 0],
            },
            &[there],
        );
        let unit = b.op(
            PrimOp::Reshape {
                shape: vec![2, 1, 3, 4],
            },
            &[x],
        );
        let moved = b.op(
            PrimOp::Transpose {
                perm: vec![2, 1, 0, 3],
            },
            &[unit],
        );
        let merged = b.op(
            PrimOp::Reshape {
                shape: vec![3, 2, 4],
            },
            &[moved],
        );
        let (printed, count) = b.check(&[again, back, merged]);
        // x, one reshape, one transpose.
        assert_eq!(count, 3, "{printed}");
        assert!(
            printed.contains("transpose[perm=[1, 0, 2]](%0)"),
            "{printed}"
        );
    }

    #[test]
    fn common_subexpressions_and_constants_merge() {
        let mut b = Builder::new();
        let x = b.input("x", &[3]);
        let y = b.input("y", &[3]);
        let first = b.binary(BinaryFn::Add, x, y);
        let second = b.binary(BinaryFn::Add, y, x);
        let half = b.splat(&[], 0.5);
        let other_half = b.splat(&[], 0.5);
        let a = b.binary(BinaryFn::Mul, first, half);
        let c = b.binary(BinaryFn::Mul, second, other_half);
        let fours = b.op(
            PrimOp::Constant(Constant::Dense(
                Tensor::from_vec(&[3], vec![4.0, 4.0, 4.0]).unwrap(),
            )),
            &[],
        );
        let scaled = b.binary(BinaryFn::Div, c, fours);
        let (printed, count) = b.check(&[a, c, scaled]);
        // x, y, x + y, 0.5, the product, splat 4, the division.
        assert_eq!(count, 7, "{printed}");
        assert!(printed.contains("constant[4]() : [3]"), "{printed}");
    }

    #[test]
    fn splats_fold_when_exact_and_broadcasts_are_absorbed() {
        let mut b = Builder::new();
        let x = b.input("x", &[2, 3]);
        let bias = b.input("bias", &[3]);
        let halves = b.splat(&[4, 3], 0.5);
        let reduce = PrimOp::Reduce {
            op: ReduceFn::Sum,
            axes: vec![0, 1],
            keepdim: false,
        };
        let six = b.op(reduce, &[halves]);
        let zeros = b.splat(&[2, 3], 0.0);
        let broadcast = b.binary(BinaryFn::Add, bias, zeros);
        let product = b.binary(BinaryFn::Mul, broadcast, x);
        let tenths = b.splat(&[3], 0.1);
        let not_exact = PrimOp::Reduce {
            op: ReduceFn::Mean,
            axes: vec![0],
            keepdim: false,
        };
        let mean = b.op(not_exact, &[tenths]);
        let (printed, _) = b.check(&[six, product, mean]);
        assert!(printed.contains("constant[6]() : []"), "{printed}");
        assert!(printed.contains("mul(%1, %0)"), "{printed}");
        assert!(printed.contains("reduce_mean"), "{printed}");
    }

    #[test]
    fn a_cropped_convolution_computes_only_the_crop() {
        let mut b = Builder::new();
        let x = b.input("x", &[1, 1, 7, 6]);
        let w = b.input("w", &[1, 1, 3, 3]);
        let conv = Conv2dParams {
            stride: [2, 2],
            padding: [[1, 1], [0, 0]],
            dilation: [1, 1],
            groups: 1,
        };
        let full = b.op(PrimOp::Conv2d(conv), &[x, w]);
        let rows = b.op(
            PrimOp::Slice {
                axis: 2,
                start: 0,
                end: 3,
            },
            &[full],
        );
        let window = b.op(
            PrimOp::Slice {
                axis: 3,
                start: 0,
                end: 1,
            },
            &[rows],
        );
        let (printed, _) = b.check(&[window]);
        // Rows: one less row of end padding; columns: only the input columns the kept
        // output column reads.
        assert_eq!(printed.matches("slice[").count(), 1, "{printed}");
        assert!(
            printed.contains("slice[axis=3, range=0..3](%0)"),
            "{printed}"
        );
        assert!(
            printed.contains("conv2d[pad=(1, 0, 0, 0), stride=2]"),
            "{printed}"
        );
        assert!(printed.contains(": [1, 1, 3, 1]"), "{printed}");
    }
}
