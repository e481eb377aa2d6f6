//! The npy header: a Python dict literal with the keys `descr` (a dtype string), `fortran_order`
//! (`True`/`False`) and `shape` (a tuple of integers). This reads the subset of Python literals
//! that numpy writes there, with either quote style and any key order; anything else, a
//! structured dtype included, is an error message.

/// What an npy header says.
#[derive(Debug, PartialEq)]
pub(super) struct HeaderFields {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

/// Parses the header; errors read after "its header ".
pub(super) fn parse_dict(text: &str) -> Result<HeaderFields, String> {
    let mut cursor = Cursor { rest: text };
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    cursor.expect('{')?;
    while !cursor.eat('}') {
        let key = cursor.string()?;
        cursor.expect(':')?;
        match key.as_str() {
            "descr" => {
                descr = Some(cursor.string().map_err(|_| {
                    "has a `descr` that nnc cannot read (a structured dtype?)".to_string()
                })?)
            }
            "fortran_order" => fortran_order = Some(cursor.boolean()?),
            "shape" => shape = Some(cursor.tuple()?),
            other => return Err(format!("has an unknown key `{other}`")),
        }
        if !cursor.eat(',') {
            cursor.expect('}')?;
            break;
        }
    }
    if !cursor.rest.trim().is_empty() {
        return Err("has text after its closing brace".to_string());
    }
    let missing = |key: &str| format!("lacks the key `{key}`");
    Ok(HeaderFields {
        descr: descr.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    /// Skips whitespace, then consumes `token` if it comes next.
    fn eat(&mut self, token: char) -> bool {
        self.rest = self.rest.trim_start();
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, token: char) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(format!(
                "is not a dict literal: expected `{token}` at `{}`",
                self.preview()
            ))
        }
    }

    /// A quoted string without escapes, in single or double quotes.
    fn string(&mut self) -> Result<String, String> {
        self.rest = self.rest.trim_start();
        let quote = match self.rest.chars().next() {
            Some(quote @ ('\'' | '"')) => quote,
            _ => {
                return Err(format!(
                    "is not a dict literal: expected a string at `{}`",
                    self.preview()
                ))
            }
        };
        let body = &self.rest[1..];
        let end = body
            .find(quote)
            .ok_or_else(|| "has an unterminated string".to_string())?;
        self.rest = &body[end + 1..];
        Ok(body[..end].to_string())
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.rest = self.rest.trim_start();
        for (word, value) in [("True", true), ("False", false)] {
            if let Some(rest) = self.rest.strip_prefix(word) {
                self.rest = rest;
                return Ok(value);
            }
        }
        Err(format!(
            "has a `fortran_order` that is not True or False at `{}`",
            self.preview()
        ))
    }

    /// `()`, `(3,)`, `(2, 3)`: non-negative integers, a trailing comma allowed.
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect('(')?;
        let mut dims = Vec::new();
        while !self.eat(')') {
            self.rest = self.rest.trim_start();
            let digits = self.rest.len()
                - self
                    .rest
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            let dim = self.rest[..digits].parse::<usize>().map_err(|_| {
                format!(
                    "has a shape entry that is not a size at `{}`",
                    self.preview()
                )
            })?;
            self.rest = &self.rest[digits..];
            dims.push(dim);
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        Ok(dims)
    }

    /// The next few characters, for messages.
    fn preview(&self) -> String {
        self.rest.chars().take(16).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(descr: &str, fortran_order: bool, shape: &[usize]) -> HeaderFields {
        HeaderFields {
            descr: descr.to_string(),
            fortran_order,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn reads_the_headers_numpy_writes() {
        let cases = [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }    \n",
                fields("<f4", false, &[2, 3]),
            ),
            (
                "{'descr': '<i8', 'fortran_order': True, 'shape': (5,), }\n",
                fields("<i8", true, &[5]),
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (), }",
                fields("<f8", false, &[]),
            ),
            (
                "{\"shape\": (1, 2), \"descr\": \">f4\", \"fortran_order\": False}",
                fields(">f4", false, &[1, 2]),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_dict(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let cases = [
            ("", "expected `{`"),
            (
                "{'descr': '<f4', 'fortran_order': False}",
                "lacks the key `shape`",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
                "structured dtype",
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
                "not True or False",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
                "not a size",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
                "not a size",
            ),
            (
                "{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}",
                "expected `}`",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
                "unknown key `x`",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_dict(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
