//! The manifest template: the subset of Go's text/template that upstream's
//! manifests use. `{{ }}` actions with `{{-`/`-}}` trim markers, `{{/* */}}`
//! comments, pipelines (`a | b`), parenthesised calls, string literals, and
//! exactly upstream's functions `env`, `must_env` and `json_escape`. Fields
//! (`.Name`) render `<no value>`, as upstream executes with nil data.

use anyhow::{anyhow, bail, Result};

/// Renders `text`, looking variables up with `lookup` (normally `std::env::var`).
/// Errors name the line of the offending action.
pub fn render(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    if !text.contains("{{") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut parser = Parser {
        src: text,
        pos: 0,
        depth: 0,
        lookup,
    };
    let mut trim_next = false;
    loop {
        let rest = &text[parser.pos..];
        let Some(open) = rest.find("{{") else {
            out.push_str(trim_start_if(trim_next, rest));
            return Ok(out);
        };
        let mut literal = trim_start_if(trim_next, &rest[..open]);
        let start = parser.pos + open;
        parser.pos = start + 2;
        if parser.peek() == Some('-') && parser.peek_at(1).is_some_and(is_space) {
            literal = literal.trim_end_matches(SPACE);
            parser.pos += 1;
        }
        out.push_str(literal);
        let line = text[..start].matches('\n').count() + 1;
        let (value, trim_right) = parser
            .action()
            .map_err(|e| anyhow!("template: manifest:{line}: {e}"))?;
        out.push_str(&value);
        trim_next = trim_right;
    }
}

const SPACE: &[char] = &[' ', '\t', '\r', '\n'];

fn is_space(c: char) -> bool {
    SPACE.contains(&c)
}

/// Leading whitespace removed when the previous action ended with `-}}`.
fn trim_start_if(trim: bool, s: &str) -> &str {
    if trim {
        s.trim_start_matches(SPACE)
    } else {
        s
    }
}

/// A value flowing through a pipeline.
enum Value {
    Str(String),
    /// A field of the nil data: prints `<no value>`.
    NoValue,
}

impl Value {
    fn into_string(self) -> String {
        match self {
            Value::Str(s) => s,
            Value::NoValue => "<no value>".to_string(),
        }
    }
}

/// How deep parenthesised pipelines may nest. Each level is a recursion,
/// and the manifest is parsed on a thread with a small stack: without a
/// bound, `{{ ((((…` overflows it. Real manifests nest one or two levels.
const MAX_DEPTH: usize = 100;

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Parentheses open around the current pipeline.
    depth: usize,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

/// An operand of a command, before evaluation.
enum Operand {
    Value(Value),
    Func(String),
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.src[self.pos..].chars().nth(n)
    }

    fn skip_space(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start_matches(SPACE).len();
    }

    /// At a closing delimiter (after spaces): returns whether it trims.
    fn close(&mut self) -> Option<bool> {
        let spaced = self.src[..self.pos].ends_with(SPACE);
        self.skip_space();
        let rest = &self.src[self.pos..];
        if rest.starts_with("}}") {
            self.pos += 2;
            Some(false)
        } else if rest.starts_with("-}}") && (spaced || self.src[..self.pos].ends_with(SPACE)) {
            self.pos += 3;
            Some(true)
        } else {
            None
        }
    }

    /// Parses and evaluates one action after `{{`; returns its output and
    /// whether it ends with a right trim marker.
    fn action(&mut self) -> Result<(String, bool)> {
        self.skip_space();
        if self.src[self.pos..].starts_with("/*") {
            let Some(end) = self.src[self.pos..].find("*/") else {
                bail!("unclosed comment");
            };
            self.pos += end + 2;
            return match self.close() {
                Some(trim) => Ok((String::new(), trim)),
                None => bail!("comment ends before closing delimiter"),
            };
        }
        let value = self.pipeline(false)?;
        match self.close() {
            Some(trim) => Ok((value.into_string(), trim)),
            None => bail!("unclosed action"),
        }
    }

    /// pipeline := command ('|' command)*, ended by `}}` or, nested, by `)`.
    fn pipeline(&mut self, nested: bool) -> Result<Value> {
        let mut piped: Option<Value> = None;
        loop {
            let (operands, end) = self.command(nested)?;
            piped = Some(self.eval(operands, piped)?);
            if end {
                return piped.ok_or_else(|| anyhow!("missing value for command"));
            }
        }
    }

    /// Reads the operands of one command; the flag is true at the pipeline's end.
    fn command(&mut self, nested: bool) -> Result<(Vec<Operand>, bool)> {
        let mut operands = Vec::new();
        loop {
            self.skip_space();
            let save = self.pos;
            if !nested && self.close().is_some() {
                self.pos = save;
                return Ok((operands, true));
            }
            let Some(c) = self.peek() else {
                bail!("unclosed action");
            };
            match c {
                '|' => {
                    self.pos += 1;
                    return Ok((operands, false));
                }
                ')' if nested => {
                    self.pos += 1;
                    return Ok((operands, true));
                }
                '"' => operands.push(Operand::Value(Value::Str(self.quoted()?))),
                '`' => operands.push(Operand::Value(Value::Str(self.raw()?))),
                '(' => {
                    if self.depth >= MAX_DEPTH {
                        bail!("parentheses nested deeper than {MAX_DEPTH}");
                    }
                    self.pos += 1;
                    self.depth += 1;
                    let value = self.pipeline(true)?;
                    self.depth -= 1;
                    operands.push(Operand::Value(value));
                }
                '.' => {
                    self.pos += 1;
                    self.identifier();
                    operands.push(Operand::Value(Value::NoValue));
                }
                c if c.is_alphabetic() || c == '_' => {
                    let name = self.identifier();
                    match name.as_str() {
                        "if" | "else" | "end" | "range" | "with" | "define" | "template"
                        | "block" | "break" | "continue" | "true" | "false" | "nil" => {
                            bail!("{name:?} is not supported in manifest templates")
                        }
                        _ => operands.push(Operand::Func(name)),
                    }
                }
                c => bail!("unexpected {c:?} in command"),
            }
        }
    }

    fn identifier(&mut self) -> String {
        let rest = &self.src[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        self.pos += len;
        rest[..len].to_string()
    }

    fn raw(&mut self) -> Result<String> {
        let rest = &self.src[self.pos + 1..];
        let Some(end) = rest.find('`') else {
            bail!("unterminated raw quoted string");
        };
        self.pos += end + 2;
        Ok(rest[..end].to_string())
    }

    /// A Go interpreted string literal, escapes included.
    fn quoted(&mut self) -> Result<String> {
        let mut out = String::new();
        let mut chars = self.src[self.pos + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 2;
                    return Ok(out);
                }
                '\n' => break,
                '\\' => {
                    let Some((_, e)) = chars.next() else { break };
                    let hex = |chars: &mut std::str::CharIndices, n: usize| -> Result<char> {
                        let digits: String = chars.by_ref().take(n).map(|(_, c)| c).collect();
                        u32::from_str_radix(&digits, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| anyhow!("invalid escape in quoted string"))
                    };
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'a' => '\x07',
                        'b' => '\x08',
                        'f' => '\x0c',
                        'v' => '\x0b',
                        '\\' | '"' | '\'' => e,
                        'x' => hex(&mut chars, 2)?,
                        'u' => hex(&mut chars, 4)?,
                        'U' => hex(&mut chars, 8)?,
                        _ => bail!("invalid escape \\{e} in quoted string"),
                    });
                }
                c => out.push(c),
            }
        }
        bail!("unterminated quoted string")
    }

    /// Evaluates one command; `piped` is the previous command's result,
    /// passed as the final argument.
    fn eval(&self, operands: Vec<Operand>, piped: Option<Value>) -> Result<Value> {
        let mut operands = operands.into_iter();
        let Some(first) = operands.next() else {
            bail!("missing value for command");
        };
        let name = match first {
            Operand::Value(v) => {
                if operands.next().is_some() || piped.is_some() {
                    bail!("can't give argument to non-function");
                }
                return Ok(v);
            }
            Operand::Func(name) => name,
        };
        let mut args = Vec::new();
        for op in operands.chain(piped.map(Operand::Value)) {
            let value = match op {
                Operand::Value(v) => v,
                Operand::Func(f) => self.eval(vec![Operand::Func(f)], None)?,
            };
            match value {
                Value::Str(s) => args.push(s),
                Value::NoValue => bail!("invalid value; expected string for {name}"),
            }
        }
        self.call(&name, args).map(Value::Str)
    }

    fn call(&self, name: &str, args: Vec<String>) -> Result<String> {
        let want_one = |args: &[String]| -> Result<()> {
            if args.len() != 1 {
                bail!("wrong number of args for {name}: want 1 got {}", args.len());
            }
            Ok(())
        };
        match name {
            "env" => {
                let mut value = String::new();
                for key in &args {
                    match (self.lookup)(key) {
                        Some(v) if !v.is_empty() => return Ok(v),
                        _ => value = key.clone(),
                    }
                }
                Ok(value)
            }
            "must_env" => {
                want_one(&args)?;
                (self.lookup)(&args[0])
                    .ok_or_else(|| anyhow!("environment variable {} is not defined", args[0]))
            }
            "json_escape" => {
                want_one(&args)?;
                Ok(json_escape(&args[0]))
            }
            _ => bail!("function {name:?} not defined"),
        }
    }
}

/// JSON string escaping without the surrounding quotes, as Go's
/// `json.Marshal` does it (`<`, `>`, `&` become `\u003c`, `\u003e`, `\u0026`).
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(key: &str) -> Option<String> {
        match key {
            "HOME_DIR" => Some("/home/app".into()),
            "EMPTY" => Some(String::new()),
            "QUOTE" => Some("a\"b<c>\n".into()),
            _ => None,
        }
    }

    fn r(text: &str) -> Result<String> {
        render(text, &env)
    }

    #[test]
    fn text_without_actions_is_untouched() {
        assert_eq!(
            r("dest: /srv/app\n  x: '}}'\n").unwrap(),
            "dest: /srv/app\n  x: '}}'\n"
        );
    }

    #[test]
    fn env_tries_each_name_then_returns_the_last_argument() {
        assert_eq!(r(r#"{{ env "HOME_DIR" }}"#).unwrap(), "/home/app");
        assert_eq!(r(r#"{{ env "UNSET" "HOME_DIR" }}"#).unwrap(), "/home/app");
        assert_eq!(r(r#"{{ env "DEST" "/srv/app" }}"#).unwrap(), "/srv/app");
        assert_eq!(r(r#"{{ env "X" }}"#).unwrap(), "X");
        assert_eq!(r(r#"{{ env "EMPTY" "fallback" }}"#).unwrap(), "fallback");
    }

    #[test]
    fn must_env_allows_empty_and_rejects_unset() {
        assert_eq!(r(r#"[{{ must_env "EMPTY" }}]"#).unwrap(), "[]");
        let err = r("a\nb: {{ must_env \"NOPE\" }}").unwrap_err().to_string();
        assert!(err.contains("NOPE") && err.contains("manifest:2"), "{err}");
    }

    #[test]
    fn pipelines_parens_and_json_escape() {
        assert_eq!(
            r(r#"{{ env "QUOTE" | json_escape }}"#).unwrap(),
            r#"a\"b\u003cc\u003e\n"#
        );
        assert_eq!(
            r(r#"{{ json_escape (env "QUOTE") }}"#).unwrap(),
            r#"a\"b\u003cc\u003e\n"#
        );
        assert_eq!(r(r#"{{ "lit" }}{{ `raw\n` }}"#).unwrap(), "litraw\\n");
    }

    #[test]
    fn trim_markers_and_comments() {
        assert_eq!(r("a  \n {{- \"x\" -}} \n b").unwrap(), "axb");
        assert_eq!(r("a {{/* note */}} b").unwrap(), "a  b");
        assert_eq!(r("a {{- /* note */ -}} b").unwrap(), "ab");
    }

    #[test]
    fn fields_render_no_value() {
        assert_eq!(r("{{ .Foo }} {{ . }}").unwrap(), "<no value> <no value>");
    }

    /// Found by fuzzing (`make fuzz`, target `template`): deeply nested
    /// parentheses overflowed the stack.
    #[test]
    fn deeply_nested_parentheses_are_an_error_not_a_stack_overflow() {
        let nested = |n: usize| format!("{}\"x\"{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(r(&format!("{{{{ {} }}}}", nested(MAX_DEPTH))).unwrap(), "x");
        let err = r(&format!("a\n{{{{ {} }}}}", nested(MAX_DEPTH + 1)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("manifest:2: parentheses nested deeper than 100"),
            "{err}"
        );
        // On a small stack, as the agent parses manifests on its workers.
        let huge = format!("{{{{ {}", "(".repeat(1 << 20));
        let err = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || r(&huge).unwrap_err().to_string())
            .unwrap()
            .join()
            .unwrap();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn malformed_templates_are_errors_naming_the_line() {
        for (text, want) in [
            ("x\n{{ env \"A\"", "manifest:2: unclosed action"),
            ("{{ nope \"A\" }}", "function \"nope\" not defined"),
            ("{{ env \"A }}", "unterminated quoted string"),
            ("{{ }}", "missing value"),
            ("{{ if 1 }}x{{ end }}", "not supported"),
            ("{{ must_env }}", "wrong number of args"),
            ("{{/* x }}", "unclosed comment"),
            ("{{", "unclosed action"),
        ] {
            let err = r(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
