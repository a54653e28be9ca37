//! Values the CLI is given, on the command line, in a file or on stdin: JSON when they
//! look like JSON, strings otherwise, so `casty map users get alice` needs no quotes but
//! a typo in `'{"name": '` is an error rather than a stored string.

use std::io::Read;
use std::path::Path;

use casty_core::limits::COMMAND_SIZE_MAX_BYTES;
use serde_json::Value;

/// Where a value comes from: its text, and the name errors give it ("the value", "the
/// value in v.json").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Given {
    text: String,
    name: String,
}

impl Given {
    /// A command-line argument.
    pub(crate) fn arg(text: &str, name: &str) -> Self {
        Self { text: text.to_owned(), name: name.to_owned() }
    }

    /// The whole of a file, or of stdin for `-`, exactly as it is (a trailing newline
    /// included): it must be UTF-8 and at most [`COMMAND_SIZE_MAX_BYTES`], the most one
    /// command may carry.
    pub(crate) fn file(path: &Path, name: &str) -> Result<Self, String> {
        let (name, bytes) = if path == Path::new("-") {
            let name = format!("{name} on stdin");
            (name, read_bounded(std::io::stdin().lock()))
        } else {
            let name = format!("{name} in {}", path.display());
            let file =
                std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            (name, read_bounded(file))
        };
        let bytes = bytes.map_err(|e| format!("cannot read {name}: {e}"))?;
        if bytes.len() > COMMAND_SIZE_MAX_BYTES {
            return Err(format!(
                "{name} is more than {COMMAND_SIZE_MAX_BYTES} bytes, the most a command may carry"
            ));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            format!(
                "{name} is not UTF-8 text (byte {} is not); values are JSON or strings",
                e.utf8_error().valid_up_to()
            )
        })?;
        Ok(Self { text, name })
    }

    /// The value: JSON if the text looks like JSON (and then it must be valid JSON), a
    /// string otherwise or when `as_string`.
    pub(crate) fn json_or_string(&self, as_string: bool) -> Result<Value, String> {
        if as_string || !looks_like_json(&self.text) {
            return Ok(Value::String(self.text.clone()));
        }
        self.json(false)
    }

    /// The value, which must be JSON (a command for `entity`), or the text as a string
    /// when `as_string`. Integers beyond 64 bits are refused: JSON readers disagree on
    /// them, and this one would round them to a float.
    pub(crate) fn json(&self, as_string: bool) -> Result<Value, String> {
        if as_string {
            return Ok(Value::String(self.text.clone()));
        }
        let value: Value = serde_json::from_str(&self.text).map_err(|e| {
            format!("{} is not valid JSON: {e}; pass --string to send it as a string", self.name)
        })?;
        if let Some((line, column, integer)) = wide_integer(&self.text) {
            return Err(format!(
                "{} holds the integer {integer} at line {line} column {column}, which does not fit in 64 bits; \
                 write it as a string or a float",
                self.name
            ));
        }
        Ok(value)
    }
}

/// Reads at most one byte more than a command may carry, so that a larger input is told
/// apart without being read whole.
fn read_bounded(reader: impl Read) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(COMMAND_SIZE_MAX_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Whether text starts as JSON does: `{`, `[`, `"`, `-`, a digit, or the word `true`,
/// `false` or `null` on its own (`nullable` is a word, `null]` is not).
fn looks_like_json(text: &str) -> bool {
    let text = text.trim_start();
    if text.starts_with(['{', '[', '"', '-']) || text.starts_with(|c: char| c.is_ascii_digit()) {
        return true;
    }
    ["true", "false", "null"].iter().any(|word| {
        text.strip_prefix(word).is_some_and(|rest| {
            !rest.starts_with(|c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
    })
}

/// The first integer literal of valid JSON `text` that fits neither `i64` nor `u64`, with
/// the line and column (in characters, from 1) where it starts, as JSON errors name them.
fn wide_integer(text: &str) -> Option<(usize, usize, &str)> {
    let (mut line, mut line_start) = (1, 0);
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.char_indices().enumerate().peekable();
    while let Some((index, (start, c))) = chars.next() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == '\n' {
            (line, line_start) = (line + 1, index + 1);
        } else if c == '-' || c.is_ascii_digit() {
            let mut end = start + 1;
            while let Some((_, (i, _))) =
                chars.next_if(|(_, (_, c))| c.is_ascii_digit() || "+-.eE".contains(*c))
            {
                end = i + 1;
            }
            let literal = &text[start..end];
            let integer = !literal.contains(['.', 'e', 'E']);
            if integer && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                return Some((line, index - line_start + 1, literal));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Value, String> {
        Given::arg(text, "the value").json_or_string(false)
    }

    #[test]
    fn bare_words_are_strings_and_json_is_json() {
        assert_eq!(parse("alice"), Ok(Value::from("alice")));
        assert_eq!(parse("hello world"), Ok(Value::from("hello world")));
        assert_eq!(parse("nullable"), Ok(Value::from("nullable")));
        assert_eq!(parse("true-ish"), Ok(Value::from("true-ish")));
        assert_eq!(parse("42"), Ok(Value::from(42)));
        assert_eq!(parse("-1.5"), Ok(Value::from(-1.5)));
        assert_eq!(parse("null"), Ok(Value::Null));
        assert_eq!(parse(r#"{"name":"Alice"}"#), Ok(serde_json::json!({"name": "Alice"})));
        assert_eq!(parse(r#""quoted""#), Ok(Value::from("quoted")));
    }

    #[test]
    fn text_that_starts_like_json_must_be_json() {
        let err = parse(r#"{"name": "#).unwrap_err();
        assert!(err.starts_with("the value is not valid JSON: EOF while parsing"), "{err}");
        assert!(err.contains("line 1 column 9"), "the error names where: {err}");
        assert!(err.ends_with("pass --string to send it as a string"), "{err}");
        for text in ["[1, 2", "1st", "-x", "true x", "null]", "\"open"] {
            assert!(parse(text).is_err(), "{text} is refused");
        }
        assert_eq!(Given::arg("1st", "the key").json_or_string(true), Ok(Value::from("1st")));
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_not_rounded() {
        let err = parse("123456789012345678901234567890").unwrap_err();
        assert!(err.contains("the integer 123456789012345678901234567890"), "{err}");
        let err = parse(r#"{"a": "1e99", "b": [-99999999999999999999]}"#).unwrap_err();
        assert!(err.contains("-99999999999999999999 at line 1 column 21,"), "{err}");
        let err = parse("[\n  1,\n  123456789012345678901]").unwrap_err();
        assert!(err.contains("123456789012345678901 at line 3 column 3,"), "{err}");
        assert_eq!(parse("18446744073709551615"), Ok(Value::from(u64::MAX)));
        assert_eq!(parse("-9223372036854775808"), Ok(Value::from(i64::MIN)));
        assert_eq!(parse("1e300"), Ok(Value::from(1e300)));
        assert_eq!(
            parse(r#""123456789012345678901234567890""#),
            Ok(Value::from("123456789012345678901234567890"))
        );
    }

    #[test]
    fn commands_must_be_json_unless_taken_as_strings() {
        let command = Given::arg("get", "the command");
        assert!(command.json(false).unwrap_err().starts_with("the command is not valid JSON"));
        assert_eq!(command.json(true), Ok(Value::from("get")));
    }

    #[test]
    fn a_file_is_read_whole_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.json");
        std::fs::write(&path, "{\"a\": 1}\n").unwrap();
        let given = Given::file(&path, "the value").unwrap();
        assert_eq!(given.json_or_string(false), Ok(serde_json::json!({"a": 1})));
        std::fs::write(&path, "plain\n").unwrap();
        assert_eq!(
            Given::file(&path, "the value").unwrap().json_or_string(false),
            Ok(Value::from("plain\n"))
        );

        std::fs::write(&path, vec![b'x'; COMMAND_SIZE_MAX_BYTES + 1]).unwrap();
        let err = Given::file(&path, "the value").unwrap_err();
        assert_eq!(
            err,
            format!(
                "the value in {} is more than {COMMAND_SIZE_MAX_BYTES} bytes, the most a command may carry",
                path.display()
            )
        );
        std::fs::write(&path, b"ok\xff").unwrap();
        assert!(Given::file(&path, "the value").unwrap_err().contains("is not UTF-8 text (byte 2 is not)"));
        let missing = dir.path().join("missing");
        assert!(Given::file(&missing, "the value").unwrap_err().starts_with("cannot read "));
    }

    proptest! {
        #[test]
        fn any_text_gives_a_value_or_an_error_and_json_round_trips(text in any::<String>()) {
            let _ = parse(&text);
            let _ = Given::arg(&text, "the command").json(false);
            // What a value prints as reads back as the same value.
            if let Ok(value) = parse(&text) {
                prop_assert_eq!(parse(&value.to_string()), Ok(value));
            }
        }

        #[test]
        fn integers_parse_exactly_or_are_refused(n in any::<i128>()) {
            let fits = i64::try_from(n).is_ok() || u64::try_from(n).is_ok();
            prop_assert_eq!(parse(&n.to_string()).is_ok(), fits);
        }
    }
}
