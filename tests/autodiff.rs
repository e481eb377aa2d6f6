//! Symbolic gradients against central finite differences. Every case builds a graph
//! `loss = sum(op(operands) * weights)` with random operands (operand 0 a graph input, the
//! others parameters) and random fixed weights, differentiates it with `nnc::autodiff`, runs
//! the gradient graph in the f64 reference interpreter, and compares each gradient with
//! `(loss(v + h) - loss(v - h)) / 2h` per element, also through the interpreter: the worst
//! element error relative to the largest gradient element must be at most 1e-6.

use std::collections::BTreeMap;

use nnc::autodiff::{gradient, AutodiffError};
use nnc::ir::{ElementType, InstancePath};
use nnc::prim::*;
use nnc::tensor::Tensor;

const STEP: f64 = 1e-5;
const TOLERANCE: f64 = 1e-6;

/// splitmix64: a small seeded generator so that failures reproduce.
struct Random(u64);

impl Random {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn dim(&mut self, low: usize, high: usize) -> usize {
        low + (self.next_u64() % (high - low + 1) as u64) as usize
    }

    /// Values in `±[0.2, 1.2]` (away from the kinks of relu, abs and max at zero), or in
    /// `[0.2, 1.2]` when `positive` (for log, sqrt and reciprocal).
    fn tensor(&mut self, shape: &[usize], positive: bool) -> Tensor<f64> {
        let count = shape.iter().product();
        let data = (0..count)
            .map(|_| {
                let magnitude = 0.2 + self.uniform();
                if positive || self.uniform() < 0.5 {
                    magnitude
                } else {
                    -magnitude
                }
            })
            .collect();
        Tensor::from_vec(shape, data).unwrap()
    }
}

fn origin() -> Origin {
    Origin {
        path: InstancePath(vec!["test".into()]),
        span: nnc::syntax::Span::new(nnc::syntax::SourceId::Spec, 0, 0),
    }
}

/// A graph under test and the values of its leaves.
struct Case {
    graph: PrimGraph,
    inputs: Vec<Tensor<f64>>,
    params: BTreeMap<String, Tensor<f64>>,
}

impl Case {
    /// A case whose operand 0 is input `x` and the others parameters `p1`, `p2`, ....
    fn new(random: &mut Random, shapes: &[Vec<usize>], positive: bool) -> (Case, Vec<PrimNodeId>) {
        let mut case = Case {
            graph: PrimGraph::default(),
            inputs: Vec::new(),
            params: BTreeMap::new(),
        };
        let mut operands = Vec::new();
        for (position, shape) in shapes.iter().enumerate() {
            let value = random.tensor(shape, positive);
            if position == 0 {
                let ty = TensorType::float(shape.clone());
                operands.push(case.graph.add_input("x", ty, origin()));
                case.inputs.push(value);
            } else {
                let name = format!("p{position}");
                let op = PrimOp::Parameter {
                    name: name.clone(),
                    shape: shape.clone(),
                };
                operands.push(case.graph.add(op, &[], origin()).unwrap());
                case.params.insert(name, value);
            }
        }
        (case, operands)
    }

    /// Appends `loss = sum(value * weights)` as the only output.
    fn finish(mut self, random: &mut Random, value: PrimNodeId) -> Case {
        let shape = self.graph.node(value).ty.shape.clone();
        let weights = PrimOp::Constant(Constant::Dense(random.tensor(&shape, false)));
        let weights = self.graph.add(weights, &[], origin()).unwrap();
        let product = self
            .graph
            .add(PrimOp::Binary(BinaryFn::Mul), &[value, weights], origin())
            .unwrap();
        let reduce = PrimOp::Reduce {
            op: ReduceFn::Sum,
            axes: (0..shape.len()).collect(),
            keepdim: false,
        };
        let loss = self.graph.add(reduce, &[product], origin()).unwrap();
        self.graph.outputs = vec![("loss".into(), loss)];
        self
    }

    fn loss(&self, inputs: &[Tensor<f64>], params: &BTreeMap<String, Tensor<f64>>) -> f64 {
        nnc::interpret::interpret(&self.graph, inputs, params).unwrap()[0].data[0]
    }

    /// The worst relative error over every gradient the graph has (float inputs included).
    fn check(&self, label: &str) {
        let wrt: Vec<usize> = (0..self.graph.inputs.len())
            .filter(|index| {
                self.graph.node(self.graph.inputs[*index].1).ty.element_type == ElementType::Float32
            })
            .collect();
        let grad_graph =
            gradient(&self.graph, 0, &wrt).unwrap_or_else(|error| panic!("{label}: {error}"));
        verify(&grad_graph).unwrap_or_else(|error| panic!("{label}: {error}"));
        let values = nnc::interpret::interpret(&grad_graph, &self.inputs, &self.params).unwrap();
        let by_name: BTreeMap<&str, &Tensor<f64>> = grad_graph
            .outputs
            .iter()
            .map(|(name, _)| name.as_str())
            .zip(&values)
            .collect();
        for index in &wrt {
            let name = &self.graph.inputs[*index].0;
            let numeric = self.numeric(&Leaf::Input(*index));
            compare(
                label,
                name,
                by_name[format!("grad.{name}").as_str()],
                &numeric,
            );
        }
        for name in self.params.keys() {
            let numeric = self.numeric(&Leaf::Parameter(name.clone()));
            compare(
                label,
                name,
                by_name[format!("grad.{name}").as_str()],
                &numeric,
            );
        }
    }

    /// Central differences of the loss along each element of one leaf.
    fn numeric(&self, leaf: &Leaf) -> Tensor<f64> {
        let (mut inputs, mut params) = (self.inputs.clone(), self.params.clone());
        let shape = leaf.get(&mut inputs, &mut params).shape.clone();
        let mut result = Tensor::zeros(&shape);
        for element in 0..result.data.len() {
            let original = leaf.get(&mut inputs, &mut params).data[element];
            leaf.get(&mut inputs, &mut params).data[element] = original + STEP;
            let above = self.loss(&inputs, &params);
            leaf.get(&mut inputs, &mut params).data[element] = original - STEP;
            let below = self.loss(&inputs, &params);
            leaf.get(&mut inputs, &mut params).data[element] = original;
            result.data[element] = (above - below) / (2.0 * STEP);
        }
        result
    }
}

/// A value finite differences perturb.
enum Leaf {
    Input(usize),
    Parameter(String),
}

impl Leaf {
    fn get<'leaves>(
        &self,
        inputs: &'leaves mut [Tensor<f64>],
        params: &'leaves mut BTreeMap<String, Tensor<f64>>,
    ) -> &'leaves mut Tensor<f64> {
        match self {
            Leaf::Input(index) => &mut inputs[*index],
            Leaf::Parameter(name) => params.get_mut(name).unwrap(),
        }
    }
}

fn compare(label: &str, name: &str, analytic: &Tensor<f64>, numeric: &Tensor<f64>) {
    assert_eq!(
        analytic.shape, numeric.shape,
        "{label}: gradient of `{name}`"
    );
    let scale = numeric
        .data
        .iter()
        .chain(&analytic.data)
        .fold(1e-3f64, |largest, value| largest.max(value.abs()));
    let worst = analytic
        .data
        .iter()
        .zip(&numeric.data)
        .map(|(a, n)| (a - n).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst / scale <= TOLERANCE,
        "{label}: gradient of `{name}`: relative error {:.3e}\nanalytic {:?}\nnumeric {:?}",
        worst / scale,
        analytic.data,
        numeric.data
    );
}

/// Builds the case `op(operands)` and checks it.
fn check_op(random: &mut Random, label: &str, op: PrimOp, shapes: &[Vec<usize>], positive: bool) {
    let (mut case, operands) = Case::new(random, shapes, positive);
    let value = case
        .graph
        .add(op, &operands, origin())
        .unwrap_or_else(|error| panic!("{label}: {error}"));
    case.finish(random, value).check(label);
}

fn random_shape(random: &mut Random, rank: usize) -> Vec<usize> {
    (0..rank).map(|_| random.dim(1, 4)).collect()
}

#[test]
fn unary_functions() {
    let mut random = Random(1);
    let functions = [
        UnaryFn::Relu,
        UnaryFn::LeakyRelu {
            negative_slope: 0.1,
        },
        UnaryFn::Sigmoid,
        UnaryFn::Tanh,
        UnaryFn::Exp,
        UnaryFn::Log,
        UnaryFn::Sqrt,
        UnaryFn::Neg,
        UnaryFn::Abs,
        UnaryFn::Gelu,
        UnaryFn::Silu,
        UnaryFn::Softplus,
        UnaryFn::Reciprocal,
    ];
    for function in functions {
        for rank in 0..4 {
            let shape = random_shape(&mut random, rank);
            let positive = matches!(function, UnaryFn::Log | UnaryFn::Sqrt | UnaryFn::Reciprocal);
            let label = format!("{} at {shape:?}", function.name());
            check_op(
                &mut random,
                &label,
                PrimOp::Unary(function),
                &[shape],
                positive,
            );
        }
    }
}

#[test]
fn gelu_slope_at_zero_is_one_half() {
    let mut random = Random(2);
    let (mut case, operands) = Case::new(&mut random, &[vec![3]], false);
    case.inputs[0] = Tensor::from_vec(&[3], vec![0.0, 1e-300, -2.5]).unwrap();
    let value = case
        .graph
        .add(PrimOp::Unary(UnaryFn::Gelu), &operands, origin())
        .unwrap();
    case.finish(&mut random, value).check("gelu near zero");
}

#[test]
fn binary_functions_with_broadcasting() {
    let mut random = Random(3);
    let shape_pairs = [
        (vec![2, 3], vec![2, 3]),
        (vec![2, 3, 4], vec![3, 1]),
        (vec![1, 4], vec![2, 3, 4]),
        (vec![], vec![2, 2]),
        (vec![3, 1, 2], vec![1, 4, 1]),
    ];
    // The comparisons' masks are piecewise constant: zero gradients, which central differences
    // confirm away from ties (the operands here are never within a step of each other).
    let functions = [
        BinaryFn::Add,
        BinaryFn::Sub,
        BinaryFn::Mul,
        BinaryFn::Div,
        BinaryFn::Max,
        BinaryFn::Greater,
        BinaryFn::GreaterEqual,
        BinaryFn::Equal,
    ];
    for function in functions {
        for (left, right) in &shape_pairs {
            let label = format!("{} of {left:?} and {right:?}", function.name());
            let positive = function == BinaryFn::Div;
            let shapes = [left.clone(), right.clone()];
            check_op(
                &mut random,
                &label,
                PrimOp::Binary(function),
                &shapes,
                positive,
            );
        }
    }
}

#[test]
fn matmul_with_batch_broadcasting() {
    let mut random = Random(4);
    for _ in 0..4 {
        let (m, k, p) = (random.dim(1, 4), random.dim(1, 4), random.dim(1, 4));
        let batch = random.dim(1, 3);
        let cases = [
            (vec![m, k], vec![k, p]),
            (vec![batch, m, k], vec![k, p]),
            (vec![m, k], vec![batch, k, p]),
            (vec![batch, 1, m, k], vec![2, k, p]),
        ];
        for (left, right) in cases {
            let label = format!("matmul of {left:?} and {right:?}");
            check_op(&mut random, &label, PrimOp::MatMul, &[left, right], false);
        }
    }
}

#[test]
fn reductions() {
    let mut random = Random(5);
    let axes_cases: [(usize, &[usize]); 5] = [
        (1, &[0]),
        (2, &[1]),
        (3, &[0, 2]),
        (3, &[0, 1, 2]),
        (2, &[0, 1]),
    ];
    for op in [ReduceFn::Sum, ReduceFn::Mean, ReduceFn::Max] {
        for (rank, axes) in axes_cases {
            for keepdim in [false, true] {
                let shape = random_shape(&mut random, rank);
                let label = format!(
                    "{} over {axes:?} of {shape:?}, keepdim {keepdim}",
                    op.name()
                );
                let reduce = PrimOp::Reduce {
                    op,
                    axes: axes.to_vec(),
                    keepdim,
                };
                check_op(&mut random, &label, reduce, &[shape], false);
            }
        }
    }
}

#[test]
fn reduce_max_splits_ties_evenly() {
    let mut random = Random(6);
    let (mut case, operands) = Case::new(&mut random, &[vec![4]], false);
    case.inputs[0] = Tensor::from_vec(&[4], vec![0.5, 2.0, 2.0, -1.0]).unwrap();
    let reduce = PrimOp::Reduce {
        op: ReduceFn::Max,
        axes: vec![0],
        keepdim: false,
    };
    let value = case.graph.add(reduce, &operands, origin()).unwrap();
    let case = case.finish(&mut random, value);
    let grad_graph = gradient(&case.graph, 0, &[0]).unwrap();
    let values = nnc::interpret::interpret(&grad_graph, &case.inputs, &case.params).unwrap();
    let ratio = values[1].data[1] / values[1].data[2];
    assert_eq!(
        (values[1].data[0], ratio, values[1].data[3]),
        (0.0, 1.0, 0.0)
    );
}

#[test]
fn layout_ops() {
    let mut random = Random(7);
    for _ in 0..3 {
        let shape = random_shape(&mut random, 3);
        let count: usize = shape.iter().product();
        let reshape = PrimOp::Reshape {
            shape: vec![count, 1],
        };
        check_op(
            &mut random,
            "reshape",
            reshape,
            std::slice::from_ref(&shape),
            false,
        );
        for perm in [vec![2, 0, 1], vec![1, 0, 2], vec![0, 1, 2]] {
            let transpose = PrimOp::Transpose { perm };
            check_op(
                &mut random,
                "transpose",
                transpose,
                std::slice::from_ref(&shape),
                false,
            );
        }
        let wide = vec![shape[0], 5, shape[2]];
        for (start, end) in [(0, 2), (1, 4), (3, 5), (0, 5)] {
            let slice = PrimOp::Slice {
                axis: 1,
                start,
                end,
            };
            let label = format!("slice {start}..{end} of {wide:?}");
            check_op(
                &mut random,
                &label,
                slice,
                std::slice::from_ref(&wide),
                false,
            );
        }
        let pieces = [
            vec![shape[0], 1, shape[2]],
            vec![shape[0], 3, shape[2]],
            vec![shape[0], 2, shape[2]],
        ];
        check_op(
            &mut random,
            "concat",
            PrimOp::Concat { axis: 1 },
            &pieces,
            false,
        );
    }
}

/// `(label, params, input shape, weight shape)` of the convolutions checked.
fn conv2d_cases() -> Vec<(&'static str, Conv2dParams, Vec<usize>, Vec<usize>)> {
    let params =
        |stride: [usize; 2], padding: [[usize; 2]; 2], dilation: [usize; 2], groups| Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        };
    vec![
        (
            "plain",
            params([1, 1], [[0, 0], [0, 0]], [1, 1], 1),
            vec![2, 3, 5, 4],
            vec![2, 3, 3, 2],
        ),
        (
            "padded",
            params([1, 1], [[1, 1], [1, 1]], [1, 1], 1),
            vec![1, 2, 4, 4],
            vec![3, 2, 3, 3],
        ),
        (
            "strided",
            params([2, 3], [[1, 0], [2, 1]], [1, 1], 1),
            vec![2, 2, 7, 8],
            vec![2, 2, 3, 3],
        ),
        (
            "dilated",
            params([1, 2], [[0, 1], [1, 1]], [2, 2], 1),
            vec![1, 2, 7, 7],
            vec![2, 2, 2, 3],
        ),
        (
            "grouped",
            params([2, 1], [[1, 1], [0, 0]], [1, 2], 2),
            vec![2, 4, 6, 6],
            vec![6, 2, 3, 2],
        ),
        (
            "depthwise",
            params([1, 1], [[1, 1], [1, 1]], [1, 1], 3),
            vec![1, 3, 4, 5],
            vec![3, 1, 3, 3],
        ),
    ]
}

#[test]
fn conv2d_input_and_weight() {
    let mut random = Random(8);
    for (label, params, input, weight) in conv2d_cases() {
        let label = format!("conv2d {label}");
        check_op(
            &mut random,
            &label,
            PrimOp::Conv2d(params),
            &[input, weight],
            false,
        );
    }
}

#[test]
fn conv_transpose2d_input_and_weight() {
    let mut random = Random(9);
    let params =
        |stride: [usize; 2], padding, dilation, groups, output_size| ConvTranspose2dParams {
            stride,
            padding,
            dilation,
            groups,
            output_size,
        };
    let cases = [
        (
            "plain",
            params([1, 1], [0, 0], [1, 1], 1, [6, 5]),
            vec![2, 3, 4, 4],
            vec![3, 2, 3, 2],
        ),
        (
            "strided",
            params([2, 2], [1, 0], [1, 1], 1, [7, 8]),
            vec![1, 2, 4, 4],
            vec![2, 3, 3, 2],
        ),
        (
            "output padding",
            params([2, 3], [1, 1], [1, 1], 1, [8, 10]),
            vec![1, 2, 4, 4],
            vec![2, 2, 3, 3],
        ),
        (
            "cropped",
            params([1, 1], [0, 0], [1, 1], 1, [3, 3]),
            vec![1, 2, 4, 4],
            vec![2, 2, 2, 2],
        ),
        (
            "dilated",
            params([1, 2], [1, 2], [2, 1], 1, [7, 7]),
            vec![2, 2, 3, 4],
            vec![2, 2, 3, 2],
        ),
        (
            "grouped",
            params([2, 1], [0, 1], [1, 1], 2, [7, 4]),
            vec![2, 4, 3, 4],
            vec![4, 3, 2, 2],
        ),
    ];
    for (label, params, input, weight) in cases {
        let label = format!("conv_transpose2d {label}");
        check_op(
            &mut random,
            &label,
            PrimOp::ConvTranspose2d(params),
            &[input, weight],
            false,
        );
    }
}

#[test]
fn average_pooling() {
    let mut random = Random(10);
    for count_include_pad in [true, false] {
        for (kernel, stride, padding, ceil_mode, input) in [
            ([2, 2], [2, 2], [0, 0], false, vec![2, 3, 4, 4]),
            ([3, 3], [2, 2], [1, 1], false, vec![1, 2, 5, 6]),
            ([3, 2], [2, 2], [1, 0], true, vec![1, 2, 6, 5]),
            ([2, 2], [1, 1], [0, 0], true, vec![1, 1, 3, 3]),
        ] {
            let params = Pool2dParams {
                kind: PoolKind::Average { count_include_pad },
                kernel,
                stride,
                padding,
                dilation: [1, 1],
                ceil_mode,
            };
            let label = format!("avg_pool2d {params:?}");
            check_op(&mut random, &label, PrimOp::Pool2d(params), &[input], false);
        }
    }
}

#[test]
fn max_pooling() {
    let mut random = Random(14);
    for (kernel, stride, padding, dilation, ceil_mode, input) in [
        ([2, 2], [2, 2], [0, 0], [1, 1], false, vec![2, 3, 4, 4]),
        ([3, 3], [2, 2], [1, 1], [1, 1], false, vec![1, 2, 5, 6]),
        ([3, 2], [1, 2], [1, 0], [1, 1], true, vec![1, 2, 6, 5]),
        ([2, 2], [2, 2], [0, 1], [2, 1], true, vec![1, 1, 5, 6]),
        ([1, 1], [2, 1], [0, 0], [1, 1], false, vec![1, 2, 3, 3]),
    ] {
        let params = Pool2dParams {
            kind: PoolKind::Max,
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
        };
        let label = format!("max_pool2d {params:?}");
        check_op(&mut random, &label, PrimOp::Pool2d(params), &[input], false);
    }
}

#[test]
fn max_pool_gives_ties_to_the_first_tap_and_never_to_padding() {
    // PyTorch's kernel keeps the first maximum in row-major order; a window of negative values
    // next to zero padding still takes its maximum from the input.
    let mut random = Random(15);
    let (mut case, operands) = Case::new(&mut random, &[vec![1, 1, 2, 3]], false);
    case.inputs[0] =
        Tensor::from_vec(&[1, 1, 2, 3], vec![0.0, 1.0, -2.0, -1.0, 1.0, -1.0]).unwrap();
    let params = Pool2dParams {
        kind: PoolKind::Max,
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 1],
        dilation: [1, 1],
        ceil_mode: false,
    };
    let value = case
        .graph
        .add(PrimOp::Pool2d(params), &operands, origin())
        .unwrap();
    let ones = PrimOp::Constant(Constant::Splat {
        shape: vec![1, 1, 1, 2],
        value: 1.0,
    });
    let ones = case.graph.add(ones, &[], origin()).unwrap();
    let product = case
        .graph
        .add(PrimOp::Binary(BinaryFn::Mul), &[value, ones], origin())
        .unwrap();
    let reduce = PrimOp::Reduce {
        op: ReduceFn::Sum,
        axes: vec![0, 1, 2, 3],
        keepdim: false,
    };
    let loss = case.graph.add(reduce, &[product], origin()).unwrap();
    case.graph.outputs = vec![("loss".into(), loss)];
    let grad_graph = gradient(&case.graph, 0, &[0]).unwrap();
    let values = nnc::interpret::interpret(&grad_graph, &case.inputs, &case.params).unwrap();
    // Window 0 (columns pad and 0) has maximum 0, tied with the zero padding, which comes
    // first but is not input; window 1 (columns 1 and 2) has 1 at rows 0 and 1: row 0 wins.
    assert_eq!(values[1].data, vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn integer_inputs_have_no_gradient() {
    // Integer ids have no gradient.
    let mut graph = PrimGraph::default();
    let ids = TensorType {
        shape: vec![3],
        element_type: ElementType::Int64,
    };
    graph.add_input("ids", ids, origin());
    let table = PrimOp::Parameter {
        name: "embedding.weight".into(),
        shape: vec![5, 2],
    };
    let table = graph.add(table, &[], origin()).unwrap();
    let reduce = PrimOp::Reduce {
        op: ReduceFn::Sum,
        axes: vec![0, 1],
        keepdim: false,
    };
    let loss = graph.add(reduce, &[table], origin()).unwrap();
    graph.outputs = vec![("loss".into(), loss)];
    let error = gradient(&graph, 0, &[0]).unwrap_err();
    assert!(matches!(error, AutodiffError::IntegerInput { .. }));
}

#[test]
fn gather_table_with_repeated_indices() {
    let mut random = Random(16);
    for (table_shape, ids_shape) in [
        (vec![5, 3], vec![4]),
        (vec![4], vec![2, 3]),
        (vec![3, 2, 2], vec![2, 2]),
    ] {
        let mut case = Case {
            graph: PrimGraph::default(),
            inputs: Vec::new(),
            params: BTreeMap::new(),
        };
        let ids_type = TensorType {
            shape: ids_shape.clone(),
            element_type: ElementType::Int64,
        };
        let ids = case.graph.add_input("ids", ids_type, origin());
        let count: usize = ids_shape.iter().product();
        // Every row index appears, some twice, so that the gradient must add rows up.
        let values = (0..count)
            .map(|position| (position % table_shape[0]) as f64)
            .collect();
        case.inputs
            .push(Tensor::from_vec(&ids_shape, values).unwrap());
        let table = PrimOp::Parameter {
            name: "table".into(),
            shape: table_shape.clone(),
        };
        let table = case.graph.add(table, &[], origin()).unwrap();
        case.params
            .insert("table".into(), random.tensor(&table_shape, false));
        let rows = case
            .graph
            .add(PrimOp::Gather, &[table, ids], origin())
            .unwrap();
        let label = format!("gather of {table_shape:?} by {ids_shape:?}");
        case.finish(&mut random, rows).check(&label);
    }
}

#[test]
fn shared_parameter_and_fan_out_accumulate() {
    // loss = sum((x * w) * tanh(x * w) + w): w reaches the loss along three paths.
    let mut random = Random(12);
    let (mut case, operands) = Case::new(&mut random, &[vec![2, 3], vec![3]], false);
    let (x, w) = (operands[0], operands[1]);
    let second_w = PrimOp::Parameter {
        name: "p1".into(),
        shape: vec![3],
    };
    let second_w = case.graph.add(second_w, &[], origin()).unwrap();
    let product = case
        .graph
        .add(PrimOp::Binary(BinaryFn::Mul), &[x, w], origin())
        .unwrap();
    let tanh = case
        .graph
        .add(PrimOp::Unary(UnaryFn::Tanh), &[product], origin())
        .unwrap();
    let both = case
        .graph
        .add(PrimOp::Binary(BinaryFn::Mul), &[product, tanh], origin())
        .unwrap();
    let value = case
        .graph
        .add(PrimOp::Binary(BinaryFn::Add), &[both, second_w], origin())
        .unwrap();
    case.finish(&mut random, value).check("shared parameter");
}

#[test]
fn small_mlp_lowered_from_a_spec() {
    let spec = "input image: [N, 5]\n\
                output logits = image -> dense(4) as fc1 -> relu -> dense(3) as fc2\n";
    let compilation = nnc::compile(spec, &Default::default()).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, "mlp", spec))
    });
    let symbols = nnc::lower::SymbolValues::new().with("N", 2);
    let graph = nnc::lower::lower(&compilation, &symbols).unwrap();
    let mut random = Random(13);
    let mut params = BTreeMap::new();
    for id in graph.node_ids() {
        if let PrimOp::Parameter { name, shape } = &graph.node(id).op {
            params.insert(name.clone(), random.tensor(shape, false));
        }
    }
    assert_eq!(
        params.keys().collect::<Vec<_>>(),
        ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    );
    let logits = graph.outputs[0].1;
    let case = Case {
        graph,
        inputs: vec![random.tensor(&[2, 5], false)],
        params,
    };
    case.finish(&mut random, logits).check("mlp");
}

/// A recurrence built by hand: `h' = tanh(x_t + h @ w)`, `c' = c + h' * x_t`, step output
/// `h' * c'`, over axis 1 of `x: [2, T, 2]`, with learned initial states.
fn elman_case(random: &mut Random, steps: usize, reverse: bool) -> Case {
    let (mut case, operands) = Case::new(
        random,
        &[vec![2, steps, 2], vec![2, 2], vec![2, 2], vec![2, 2]],
        false,
    );
    let mut body = PrimGraph::default();
    let x = body.add_input("x", TensorType::float(vec![2, 2]), origin());
    let h = body.add_input("h", TensorType::float(vec![2, 2]), origin());
    let c = body.add_input("c", TensorType::float(vec![2, 2]), origin());
    let w = body.add_input("w", TensorType::float(vec![2, 2]), origin());
    let mut add = |op: PrimOp, operands: &[PrimNodeId]| body.add(op, operands, origin()).unwrap();
    let product = add(PrimOp::MatMul, &[h, w]);
    let sum = add(PrimOp::Binary(BinaryFn::Add), &[x, product]);
    let next_h = add(PrimOp::Unary(UnaryFn::Tanh), &[sum]);
    let gated = add(PrimOp::Binary(BinaryFn::Mul), &[next_h, x]);
    let next_c = add(PrimOp::Binary(BinaryFn::Add), &[c, gated]);
    let out = add(PrimOp::Binary(BinaryFn::Mul), &[next_h, next_c]);
    body.outputs = vec![
        ("h".into(), next_h),
        ("c".into(), next_c),
        ("out".into(), out),
    ];
    let scan = PrimOp::Scan {
        body: Box::new(ScanBody {
            graph: body,
            sequence_count: 1,
            state_count: 2,
        }),
        axis: 1,
        reverse,
    };
    let value = case.graph.add(scan, &operands, origin()).unwrap();
    case.finish(random, value)
}

#[test]
fn scan_backpropagates_through_time() {
    let mut random = Random(17);
    for steps in [1, 2, 5] {
        for reverse in [false, true] {
            let label = format!("scan of {steps} steps, reverse {reverse}");
            elman_case(&mut random, steps, reverse).check(&label);
        }
    }
}

/// A reduced-size spec, lowered at batch 2 and length 4, with random parameters and ids.
fn spec_case(path: &str, settings: &[(&str, i64)], seed: u64) -> Case {
    use nnc::elaborate::{ElaborateOptions, OverrideValue};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(path)).unwrap();
    let options = ElaborateOptions {
        param_overrides: settings
            .iter()
            .map(|(name, value)| (name.to_string(), OverrideValue::Int(*value)))
            .collect(),
        input_shape_overrides: Vec::new(),
    };
    let compilation = nnc::compile(&text, &options).unwrap_or_else(|diagnostics| {
        panic!("{}", nnc::render_diagnostics(&diagnostics, path, &text))
    });
    let symbols = nnc::lower::SymbolValues::new().with("N", 2).with("T", 4);
    let graph = nnc::lower::lower(&compilation, &symbols).unwrap();
    let mut random = Random(seed);
    let vocab = settings
        .iter()
        .find(|(name, _)| *name == "vocab")
        .map(|(_, value)| *value as u64);
    let mut inputs = Vec::new();
    for (_, id) in &graph.inputs {
        let ty = &graph.node(*id).ty;
        inputs.push(match (ty.element_type, vocab) {
            (ElementType::Int64, Some(vocab)) => {
                let ids = (0..ty.element_count())
                    .map(|_| (random.next_u64() % vocab) as f64)
                    .collect();
                Tensor::from_vec(&ty.shape, ids).unwrap()
            }
            _ => random.tensor(&ty.shape, false),
        });
    }
    let mut params = BTreeMap::new();
    for id in graph.node_ids() {
        if let PrimOp::Parameter { name, shape } = &graph.node(id).op {
            // Small weights keep the gates away from saturation, where differences lose digits.
            let mut value = random.tensor(shape, false);
            value.data.iter_mut().for_each(|element| *element *= 0.5);
            params.insert(name.clone(), value);
        }
    }
    let output = graph.outputs[0].1;
    Case {
        graph,
        inputs,
        params,
    }
    .finish(&mut random, output)
}

#[test]
fn recurrent_specs_end_to_end() {
    let small = [("vocab", 7), ("embed", 3), ("hidden", 2), ("classes", 2)];
    for path in [
        "specs/lstm_classifier.nn",
        "specs/gru_classifier.nn",
        "specs/custom_cell.nn",
    ] {
        spec_case(path, &small, 18).check(path);
    }
}

#[test]
fn maximum_splits_ties_evenly() {
    let mut random = Random(19);
    let (mut case, operands) = Case::new(&mut random, &[vec![3], vec![3]], false);
    case.inputs[0] = Tensor::from_vec(&[3], vec![1.0, 2.0, -1.0]).unwrap();
    case.params.insert(
        "p1".into(),
        Tensor::from_vec(&[3], vec![1.0, 0.5, 3.0]).unwrap(),
    );
    let value = case
        .graph
        .add(PrimOp::Binary(BinaryFn::Max), &operands, origin())
        .unwrap();
    let case = case.finish(&mut random, value);
    let grad_graph = gradient(&case.graph, 0, &[0]).unwrap();
    let values = nnc::interpret::interpret(&grad_graph, &case.inputs, &case.params).unwrap();
    // Outputs: loss, grad.p1, grad.x. Element 0 ties, so each side gets half of its weight;
    // at element 1 `x` wins, at element 2 `p1` does.
    let (grad_p, grad_x) = (&values[1].data, &values[2].data);
    assert!(grad_x[0] != 0.0 && grad_x[0] == grad_p[0]);
    assert_eq!((grad_p[1], grad_x[2]), (0.0, 0.0));
}

/// A scatter-add case: float updates `[I..., D...]` (the graph input), int64 indices `[I...]`
/// that repeat rows and skip some, as the second input.
fn scatter_add_case(random: &mut Random, rows: usize, updates: &[usize], ids: &[usize]) -> Case {
    let (mut case, operands) = Case::new(random, &[updates.to_vec()], false);
    let ids_type = TensorType {
        shape: ids.to_vec(),
        element_type: ElementType::Int64,
    };
    let indices = case.graph.add_input("ids", ids_type, origin());
    let count: usize = ids.iter().product();
    let values = (0..count).map(|k| ((k * 7) % rows) as f64).collect();
    case.inputs.push(Tensor::from_vec(ids, values).unwrap());
    let scattered = PrimOp::ScatterAdd { rows };
    let value = case
        .graph
        .add(scattered, &[operands[0], indices], origin())
        .unwrap();
    case.finish(random, value)
}

#[test]
fn scatter_add_updates_with_repeated_indices() {
    let mut random = Random(20);
    for (rows, updates, ids) in [
        (3, vec![4, 3], vec![4]),
        (4, vec![2, 3], vec![2, 3]),
        (2, vec![5], vec![5]),
        (6, vec![2, 2, 2, 2], vec![2, 2]),
    ] {
        let label = format!("scatter_add into {rows} rows of {updates:?} by {ids:?}");
        scatter_add_case(&mut random, rows, &updates, &ids).check(&label);
    }
}

/// The gather gradient scatters into the table's rows, so tables of any size differentiate
/// (the one-hot matmul it replaced stopped at 4096 rows) without a `rows x rows` constant.
#[test]
fn gather_from_a_large_table_scatters_its_gradient() {
    let mut random = Random(21);
    let rows = 5000;
    let mut case = Case {
        graph: PrimGraph::default(),
        inputs: Vec::new(),
        params: BTreeMap::new(),
    };
    let ids_type = TensorType {
        shape: vec![6],
        element_type: ElementType::Int64,
    };
    let ids = case.graph.add_input("ids", ids_type, origin());
    let indices = vec![4999.0, 3.0, 4999.0, 0.0, 2500.0, 3.0];
    case.inputs.push(Tensor::from_vec(&[6], indices).unwrap());
    let table = PrimOp::Parameter {
        name: "table".into(),
        shape: vec![rows, 1],
    };
    let table = case.graph.add(table, &[], origin()).unwrap();
    case.params
        .insert("table".into(), random.tensor(&[rows, 1], false));
    let gathered = case
        .graph
        .add(PrimOp::Gather, &[table, ids], origin())
        .unwrap();
    let case = case.finish(&mut random, gathered);
    let grad_graph = gradient(&case.graph, 0, &[]).unwrap();
    let ops: Vec<&str> = grad_graph
        .node_ids()
        .map(|id| grad_graph.node(id).op.name())
        .collect();
    assert!(
        ops.contains(&"scatter_add") && !ops.contains(&"matmul"),
        "{ops:?}"
    );
    case.check("gather from 5000 rows");
}

/// Uniform noise is a leaf like an input: `d(x * u) = u`, the same numbers under one run key.
#[test]
fn random_uniform_is_a_leaf() {
    let mut random = Random(22);
    let (mut case, operands) = Case::new(&mut random, &[vec![3, 4]], false);
    let noise = PrimOp::RandomUniform {
        seed: 11,
        shape: vec![3, 4],
    };
    let noise = case.graph.add(noise, &[], origin()).unwrap();
    let product = case
        .graph
        .add(
            PrimOp::Binary(BinaryFn::Mul),
            &[operands[0], noise],
            origin(),
        )
        .unwrap();
    case.finish(&mut random, product).check("x * uniform noise");
}
