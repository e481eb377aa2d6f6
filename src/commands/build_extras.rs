//! What `nnc build` adds to the report from the executable forward pass: the planned peak of
//! its working memory and its compile time (lowering plus the runtime's compilation), at the
//! batch of `--batch` (1 by default). The report renderers stay untouched; these lines follow
//! the table's totals, and the JSON gains `planned_arena_bytes` and `compile_ms`.

use nnc::api::Model;
use nnc::report::table::group_digits;

use super::{describe_symbols, failure, human_bytes, milliseconds, symbols_from_flags};
use crate::Failure;

/// The planned arena and compile time, or why the forward pass could not be compiled.
pub struct ForwardFacts {
    outcome: Result<(u64, std::time::Duration), String>,
    symbols: String,
}

/// Specializes the model's forward pass at `--batch`/`--dim` and measures it. A network that
/// the runtime cannot compile still gets its report; the facts then say why.
pub fn measure(
    model: &Model,
    batch: Option<usize>,
    dims: &[String],
) -> Result<ForwardFacts, Failure> {
    let symbols = symbols_from_flags(model, batch, dims)?;
    // The report must print even if compiling the forward pass hits a bug in nnc (a panic),
    // so a panic here becomes the reason the two lines are unavailable.
    let specialized =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.specialize(&symbols)));
    let outcome = match specialized {
        Ok(Ok(forward)) => Ok((forward.planned_arena_bytes(), forward.compile_time())),
        // Sizes the user gave (`--batch 0`, `--dim X=3` for a symbol that does not exist) are
        // usage errors; anything else only makes the lines unavailable.
        Ok(Err(error)) => match failure(error) {
            Failure::Usage(message) => return Err(Failure::Usage(message)),
            Failure::Spec(message) | Failure::Runtime(message) => Err(message),
        },
        Err(_) => Err("internal error (a bug in nnc) while compiling the forward pass".to_string()),
    };
    Ok(ForwardFacts {
        outcome,
        symbols: describe_symbols(model, &symbols),
    })
}

impl ForwardFacts {
    /// Lines in the style of the table's totals.
    pub fn table_lines(&self) -> String {
        match &self.outcome {
            Ok((arena, compile_time)) => format!(
                "Planned arena:     {:>16}  bytes ({}, peak working memory of the forward pass at {}, f32)\n\
                 Compile time:      {:>16}  (lowering and runtime compilation of the forward pass at {})\n",
                group_digits(*arena),
                human_bytes(*arena),
                self.symbols,
                milliseconds(*compile_time),
                self.symbols
            ),
            Err(reason) => format!(
                "Planned arena:     {:>16}  (the forward pass at {} does not compile: {})\n",
                "unavailable",
                self.symbols,
                first_line(reason)
            ),
        }
    }

    /// The JSON report with `planned_arena_bytes` and `compile_ms` added as its last keys
    /// (`null` when the forward pass does not compile).
    pub fn add_to_json(&self, json: &str) -> String {
        let (arena, compile_ms) = match &self.outcome {
            Ok((arena, compile_time)) => {
                let compile_ms = compile_time.as_secs_f64() * 1e3;
                (arena.to_string(), format!("{compile_ms:.3}"))
            }
            Err(_) => ("null".to_string(), "null".to_string()),
        };
        let body = json.trim_end();
        match body.strip_suffix('}') {
            Some(open) => format!(
                "{},\n  \"planned_arena_bytes\": {arena},\n  \"compile_ms\": {compile_ms}\n}}",
                open.trim_end()
            ),
            None => json.to_string(),
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
