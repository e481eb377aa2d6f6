//! The abstract syntax tree of a `.nn` file. It mirrors the grammar closely and is not checked:
//! names are unresolved strings and numbers are unevaluated expressions. Elaboration gives them
//! meaning.

use super::Span;

#[derive(Clone, Debug)]
pub struct Program {
    pub blocks: Vec<BlockDef>,
    pub statements: Vec<Statement>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `block name(param, param = default) { statements }`
#[derive(Clone, Debug)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub body: Vec<Statement>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct ParamDecl {
    pub name: Ident,
    pub default: Option<Expr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    Float,
    Int,
}

#[derive(Clone, Debug)]
pub struct Statement {
    pub kind: StatementKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StatementKind {
    /// `input image: [N, 3, 224, 224]` (top level only).
    Input {
        name: Ident,
        shape: Vec<Expr>,
        element_type: ElementType,
    },
    /// `param classes = 1000`: a number the command line may override (top level only).
    Param { name: Ident, value: Expr },
    /// `dim T = 32`: a symbolic dimension and the value reports use for it.
    Dim { name: Ident, value: Expr },
    /// `layer encoder = dense(128)`: a layer value whose weights every use shares.
    Layer { name: Ident, value: Expr },
    /// `output logits = expr` or `output logits` (top level only).
    Output { name: Ident, value: Option<Expr> },
    /// `loss expr` (named `loss`) or `loss name = expr`: the scalar a training step minimizes
    /// (top level only, at most one).
    Loss { name: Option<Ident>, value: Expr },
    /// `out expr, expr`: what a block returns.
    Out { values: Vec<Expr> },
    /// `state h: [hidden]`: a recurrent state, which makes the block a cell scanned over time.
    State { name: Ident, shape: Vec<Expr> },
    /// `next h = expr`: the state's value at the next time step.
    Next { name: Ident, value: Expr },
    /// `a = expr` or `a, b = expr`.
    Assign { targets: Vec<Ident>, value: Expr },
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOperator {
    Or,
    And,
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOperator {
    Neg,
    Not,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Name(String),
    List(Vec<Expr>),
    Call {
        callee: Ident,
        args: Vec<Arg>,
    },
    Unary {
        op: UnaryOperator,
        operand: Box<Expr>,
    },
    Binary {
        op: BinaryOperator,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    If {
        condition: Box<Expr>,
        then_value: Box<Expr>,
        else_value: Option<Box<Expr>>,
    },
    /// `input -> stage -> stage`
    Pipe {
        input: Box<Expr>,
        stages: Vec<Stage>,
    },
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

/// One step of a pipeline, optionally named with `as`.
#[derive(Clone, Debug)]
pub struct Stage {
    pub kind: StageKind,
    pub name: Option<NamePath>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StageKind {
    /// `relu`, `conv2d(64, 3)`, `basic(64, stride = 2)`, or a `layer` value such as `encoder`.
    Apply { callee: Ident, args: Vec<Arg> },
    /// `(stage -> stage)`: a nested sequence with its own numbering, like `nn.Sequential`.
    Group(Vec<Stage>),
    /// `repeat n { ... }` or `repeat i in a..b { ... }`.
    Repeat {
        variable: Option<Ident>,
        start: Option<Expr>,
        end: Expr,
        body: Vec<Stage>,
    },
    /// `if cond { stages } else { stages }`; a missing else passes the value through.
    If {
        condition: Expr,
        then_stages: Vec<Stage>,
        else_stages: Option<Vec<Stage>>,
    },
}

/// `downsample.0`, `denselayer{i + 1}`
#[derive(Clone, Debug)]
pub struct NamePath {
    pub segments: Vec<Vec<NamePart>>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum NamePart {
    Text(String),
    Interpolated(Expr),
}
