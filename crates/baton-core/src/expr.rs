//! The workflow expression and template language: references into a run's context, `when`
//! conditions on steps, and `${...}` templates in step inputs.
//!
//! Everything reads one *context*, a JSON object shaped
//! `{"params": {..}, "metadata": {..}, "task": {"title": .., "description": ..},
//! "steps": {"<step id>": {"outputs": {..}}}}`.
//!
//! Invariants: parsing is total and bounded — bad text is an `Err` holding a short human
//! message (with the 1-based character position for conditions), never a panic, and a condition
//! longer than [`MAX_EXPR_LEN`] characters or nested deeper than [`MAX_EXPR_DEPTH`] levels is
//! refused before it can overflow the stack (conditions come from untrusted clients).
//! Evaluation and resolution never fail: a missing reference is `null`. The `Display` form of
//! an [`Expr`] is canonical and parses back to an equal [`Expr`].

use serde_json::{Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

/// Longest accepted condition, in characters.
pub const MAX_EXPR_LEN: usize = 2000;
/// Deepest accepted nesting of a condition: parentheses and `not`s, together.
pub const MAX_EXPR_DEPTH: usize = 32;

static NULL: Value = Value::Null;

// ---------------------------------------------------------------------------------------------
// References

/// A reference to one value of the context, such as `steps.draft.outputs.text`.
///
/// Always well-formed: the root is `params`, `metadata`, `task` or `steps`; `params.X` and
/// `metadata.X` name at least one field; `task` refs are exactly `task.title` or
/// `task.description`; step refs are `steps.<id>.outputs` optionally followed by fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ref {
    segments: Vec<String>,
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl Ref {
    /// Parse a dotted path like `params.topic`; the error names the problem.
    pub fn parse(text: &str) -> Result<Ref, String> {
        if text.is_empty() {
            return Err("empty reference".into());
        }
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        for seg in &segments {
            if seg.is_empty() {
                return Err(format!("empty segment in {text:?}"));
            }
            if !seg.chars().all(is_segment_char) {
                return Err(format!(
                    "segment {seg:?} may only contain letters, digits, _ and -"
                ));
            }
        }
        let second = segments.get(1).map(String::as_str);
        match (segments[0].as_str(), second) {
            (root @ ("params" | "metadata"), None) => {
                Err(format!("{root:?} needs a field after it, like {root}.name"))
            }
            ("params" | "metadata", Some(_)) => Ok(()),
            ("task", Some("title" | "description")) if segments.len() == 2 => Ok(()),
            ("task", Some(field @ ("title" | "description"))) => Err(format!(
                "task.{field} is text and has no fields; use task.{field}"
            )),
            ("task", Some(other)) => Err(format!(
                "unknown task field {other:?} (use task.title or task.description)"
            )),
            ("task", None) => Err("\"task\" needs a field: task.title or task.description".into()),
            ("steps", Some(_)) if segments.get(2).is_some_and(|s| s == "outputs") => Ok(()),
            ("steps", Some(id)) => Err(format!(
                "a step reference reads steps.{id}.outputs[.field...], not {text:?}"
            )),
            ("steps", None) => {
                Err("\"steps\" needs a step id and .outputs, like steps.<id>.outputs.field".into())
            }
            (other, _) => Err(format!(
                "unknown root {other:?} (use params, metadata, task or steps)"
            )),
        }?;
        Ok(Ref { segments })
    }

    /// The path's segments, root first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The step id of a `steps.<id>.outputs...` reference.
    pub fn step(&self) -> Option<&str> {
        self.field_of("steps")
    }

    /// The parameter name of a `params.<name>...` reference.
    pub fn param(&self) -> Option<&str> {
        self.field_of("params")
    }

    fn field_of(&self, root: &str) -> Option<&str> {
        (self.segments[0] == root)
            .then(|| self.segments.get(1).map(String::as_str))
            .flatten()
    }

    /// The referenced value, walking objects by key; a segment of digits indexes an array.
    pub fn lookup<'a>(&self, ctx: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(ctx, |value, seg| match value {
                Value::Object(map) => map.get(seg),
                Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions: syntax tree

/// A parsed `when` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr(Node);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    /// Two or more operands, none of them an `Or` (nested ones are flattened).
    Or(Vec<Node>),
    /// Two or more operands, none of them an `And`.
    And(Vec<Node>),
    Not(Box<Node>),
    Cmp(Box<Node>, CmpOp, Box<Node>),
    Exists(Ref),
    Ref(Ref),
    /// `null`, a boolean, a number or a string.
    Lit(Value),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Gt => ">",
            CmpOp::Le => "<=",
            CmpOp::Ge => ">=",
        }
    }
}

/// `items` joined by `or` (or `and`), flattening operands that are the same operator.
fn join(items: Vec<Node>, or: bool) -> Node {
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Node::Or(inner) if or => flat.extend(inner),
            Node::And(inner) if !or => flat.extend(inner),
            other => flat.push(other),
        }
    }
    match (flat.len(), or) {
        (1, _) => flat.pop().unwrap_or(Node::Lit(Value::Null)),
        (_, true) => Node::Or(flat),
        (_, false) => Node::And(flat),
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions: tokens

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LParen,
    RParen,
    And,
    Or,
    Not,
    Exists,
    Cmp(CmpOp),
    Ref(Ref),
    Lit(Value),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::LParen => "\"(\"".into(),
            Tok::RParen => "\")\"".into(),
            Tok::And => "\"and\"".into(),
            Tok::Or => "\"or\"".into(),
            Tok::Not => "\"not\"".into(),
            Tok::Exists => "\"exists\"".into(),
            Tok::Cmp(op) => format!("{:?}", op.as_str()),
            Tok::Ref(r) => format!("reference {r}"),
            Tok::Lit(v) => format!("literal {v}"),
        }
    }
}

struct Token {
    tok: Tok,
    /// 1-based character position.
    at: usize,
}

fn err(at: usize, msg: impl fmt::Display) -> String {
    format!("{msg} at character {at}")
}

fn tokenize(chars: &[char]) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        let next = chars.get(i + 1).copied();
        let (tok, end) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('(', _) => (Tok::LParen, i + 1),
            (')', _) => (Tok::RParen, i + 1),
            ('=', Some('=')) => (Tok::Cmp(CmpOp::Eq), i + 2),
            ('!', Some('=')) => (Tok::Cmp(CmpOp::Ne), i + 2),
            ('<', Some('=')) => (Tok::Cmp(CmpOp::Le), i + 2),
            ('>', Some('=')) => (Tok::Cmp(CmpOp::Ge), i + 2),
            ('<', _) => (Tok::Cmp(CmpOp::Lt), i + 1),
            ('>', _) => (Tok::Cmp(CmpOp::Gt), i + 1),
            ('!', _) => (Tok::Not, i + 1),
            ('&', Some('&')) => (Tok::And, i + 2),
            ('|', Some('|')) => (Tok::Or, i + 2),
            ('=' | '&' | '|', _) => {
                return Err(err(
                    at,
                    format!("unexpected {c:?} (did you mean \"{c}{c}\"?)"),
                ))
            }
            ('"' | '\'', _) => string_literal(chars, i)?,
            ('$', Some('{')) => {
                let close = chars[i + 2..].iter().position(|&c| c == '}');
                let close = close.ok_or_else(|| err(at, "unclosed \"${\""))? + i + 2;
                let inner: String = chars[i + 2..close].iter().collect();
                let r = Ref::parse(inner.trim()).map_err(|e| err(at, e))?;
                (Tok::Ref(r), close + 1)
            }
            (c, n) if c.is_ascii_digit() || (c == '-' && n.is_some_and(|n| n.is_ascii_digit())) => {
                number_literal(chars, i)?
            }
            (c, _) if c.is_ascii_alphabetic() || c == '_' => word(chars, i)?,
            (c, _) => return Err(err(at, format!("unexpected character {c:?}"))),
        };
        out.push(Token { tok, at });
        i = end;
    }
    Ok(out)
}

fn string_literal(chars: &[char], start: usize) -> Result<(Tok, usize), String> {
    let quote = chars[start];
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err(err(start + 1, "unclosed string")),
            Some(&c) if c == quote => return Ok((Tok::Lit(Value::String(text)), i + 1)),
            Some('\\') => {
                text.push(match chars.get(i + 1) {
                    Some('\\') => '\\',
                    Some('\'') => '\'',
                    Some('"') => '"',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some(other) => {
                        return Err(err(
                            i + 1,
                            format!("unknown escape \"\\{other}\" (use \\\\ \\' \\\" \\n or \\t)"),
                        ))
                    }
                    None => return Err(err(start + 1, "unclosed string")),
                });
                i += 2;
            }
            Some(&c) => {
                text.push(c);
                i += 1;
            }
        }
    }
}

fn number_literal(chars: &[char], start: usize) -> Result<(Tok, usize), String> {
    let digits_from = |i: usize| {
        let mut j = i;
        while chars.get(j).is_some_and(char::is_ascii_digit) {
            j += 1;
        }
        j
    };
    let mut end = digits_from(start + usize::from(chars[start] == '-'));
    let fraction =
        chars.get(end) == Some(&'.') && chars.get(end + 1).is_some_and(char::is_ascii_digit);
    if fraction {
        end = digits_from(end + 1);
    }
    let text: String = chars[start..end].iter().collect();
    let int = if fraction {
        None
    } else {
        (text.parse::<i64>().ok().map(Number::from))
            .or_else(|| text.parse::<u64>().ok().map(Number::from))
    };
    let number = int.or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64));
    let number = number.ok_or_else(|| err(start + 1, format!("number {text} is out of range")))?;
    Ok((Tok::Lit(Value::Number(number)), end))
}

/// A keyword, `exists`, or a bare reference.
fn word(chars: &[char], start: usize) -> Result<(Tok, usize), String> {
    let mut end = start;
    while chars
        .get(end)
        .is_some_and(|&c| is_segment_char(c) || c == '.')
    {
        end += 1;
    }
    let text: String = chars[start..end].iter().collect();
    let at = start + 1;
    let tok = match text.as_str() {
        "and" => Tok::And,
        "or" => Tok::Or,
        "not" => Tok::Not,
        "true" => Tok::Lit(Value::Bool(true)),
        "false" => Tok::Lit(Value::Bool(false)),
        "null" => Tok::Lit(Value::Null),
        "exists" => Tok::Exists,
        _ => {
            let lower = text.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "and" | "or" | "not" | "true" | "false" | "null"
            ) {
                return Err(err(at, format!("write {text:?} in lowercase: {lower:?}")));
            }
            if chars[end..].iter().find(|c| !c.is_whitespace()) == Some(&'(') {
                return Err(err(
                    at,
                    format!("unknown function {text:?} (only exists(...) is available)"),
                ));
            }
            Tok::Ref(Ref::parse(&text).map_err(|e| err(at, e))?)
        }
    };
    Ok((tok, end))
}

// ---------------------------------------------------------------------------------------------
// Conditions: parser

struct Parser {
    toks: std::iter::Peekable<std::vec::IntoIter<Token>>,
    depth: usize,
    /// Position just past the last character, for "unexpected end" messages.
    end: usize,
}

impl Parser {
    fn at(&mut self) -> usize {
        let end = self.end;
        self.toks.peek().map_or(end, |t| t.at)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        self.toks.next_if(|t| &t.tok == tok).is_some()
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<(), String> {
        let at = self.at();
        match self.toks.next() {
            Some(t) if &t.tok == tok => Ok(()),
            Some(t) => Err(err(
                at,
                format!("expected {what}, found {}", t.tok.describe()),
            )),
            None => Err(err(at, format!("expected {what}, found the end"))),
        }
    }

    fn enter(&mut self, at: usize) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return Err(err(
                at,
                format!("nested more than {MAX_EXPR_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut items = vec![self.and()?];
        while self.eat(&Tok::Or) {
            items.push(self.and()?);
        }
        Ok(join(items, true))
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut items = vec![self.not()?];
        while self.eat(&Tok::And) {
            items.push(self.not()?);
        }
        Ok(join(items, false))
    }

    fn not(&mut self) -> Result<Node, String> {
        let at = self.at();
        if !self.eat(&Tok::Not) {
            return self.comparison();
        }
        self.enter(at)?;
        let inner = self.not()?;
        self.depth -= 1;
        Ok(Node::Not(Box::new(inner)))
    }

    fn comparison(&mut self) -> Result<Node, String> {
        let left = self.primary()?;
        let Some(Token {
            tok: Tok::Cmp(op), ..
        }) = self.toks.next_if(|t| matches!(t.tok, Tok::Cmp(_)))
        else {
            return Ok(left);
        };
        let right = self.primary()?;
        if let Some(t) = self.toks.peek().filter(|t| matches!(t.tok, Tok::Cmp(_))) {
            return Err(err(t.at, "comparisons do not chain; add parentheses"));
        }
        Ok(Node::Cmp(Box::new(left), op, Box::new(right)))
    }

    fn primary(&mut self) -> Result<Node, String> {
        let at = self.at();
        let Some(token) = self.toks.next() else {
            return Err(err(at, "expected a value, found the end"));
        };
        match token.tok {
            Tok::LParen => {
                self.enter(at)?;
                let inner = self.or()?;
                let close = format!("\")\" to close the \"(\" at character {at}");
                self.expect(&Tok::RParen, &close)?;
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Exists => {
                self.expect(&Tok::LParen, "\"(\" after exists")?;
                let at = self.at();
                let r = match self.toks.next().map(|t| t.tok) {
                    Some(Tok::Ref(r)) => r,
                    _ => return Err(err(at, "exists(...) takes a reference")),
                };
                self.expect(&Tok::RParen, "\")\" after the reference")?;
                Ok(Node::Exists(r))
            }
            Tok::Ref(r) => Ok(Node::Ref(r)),
            Tok::Lit(v) => Ok(Node::Lit(v)),
            other => Err(err(
                at,
                format!("expected a value, found {}", other.describe()),
            )),
        }
    }
}

impl Expr {
    /// Parse a condition; the error names the problem and its 1-based character position.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let len = text.chars().count();
        if len > MAX_EXPR_LEN {
            return Err(format!(
                "expression is {len} characters long; the limit is {MAX_EXPR_LEN}"
            ));
        }
        let chars: Vec<char> = text.chars().collect();
        let toks = tokenize(&chars)?;
        if toks.is_empty() {
            return Err("empty expression".into());
        }
        let mut parser = Parser {
            toks: toks.into_iter().peekable(),
            depth: 0,
            end: len + 1,
        };
        let node = parser.or()?;
        if let Some(t) = parser.toks.next() {
            return Err(match t.tok {
                Tok::RParen => err(t.at, "unmatched \")\""),
                other => err(
                    t.at,
                    format!("unexpected {} after the end", other.describe()),
                ),
            });
        }
        Ok(Expr(node))
    }

    /// Every reference in the condition, `exists(...)` arguments included, in source order.
    pub fn refs(&self) -> Vec<&Ref> {
        fn collect<'a>(node: &'a Node, out: &mut Vec<&'a Ref>) {
            match node {
                Node::Or(items) | Node::And(items) => items.iter().for_each(|n| collect(n, out)),
                Node::Not(inner) => collect(inner, out),
                Node::Cmp(left, _, right) => {
                    collect(left, out);
                    collect(right, out);
                }
                Node::Exists(r) | Node::Ref(r) => out.push(r),
                Node::Lit(_) => {}
            }
        }
        let mut out = Vec::new();
        collect(&self.0, &mut out);
        out
    }

    /// Whether the condition holds in `ctx`. Never fails: missing references are `null`.
    pub fn eval(&self, ctx: &Value) -> bool {
        truth(&self.0, ctx)
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions: evaluation

fn truth(node: &Node, ctx: &Value) -> bool {
    match node {
        Node::Or(items) => items.iter().any(|n| truth(n, ctx)),
        Node::And(items) => items.iter().all(|n| truth(n, ctx)),
        Node::Not(inner) => !truth(inner, ctx),
        Node::Cmp(left, op, right) => compare(&value(left, ctx), *op, &value(right, ctx)),
        Node::Exists(r) => r.lookup(ctx).is_some_and(|v| !v.is_null()),
        Node::Ref(r) => truthy(r.lookup(ctx).unwrap_or(&NULL)),
        Node::Lit(v) => truthy(v),
    }
}

/// A comparison operand's value; operators yield booleans.
fn value<'a>(node: &'a Node, ctx: &'a Value) -> Cow<'a, Value> {
    match node {
        Node::Ref(r) => Cow::Borrowed(r.lookup(ctx).unwrap_or(&NULL)),
        Node::Lit(v) => Cow::Borrowed(v),
        other => Cow::Owned(Value::Bool(truth(other, ctx))),
    }
}

/// `null`, `false`, `0`, `""`, `[]` and `{}` are false; everything else is true.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn compare(a: &Value, op: CmpOp, b: &Value) -> bool {
    let order = match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        CmpOp::Eq => json_eq(a, b),
        CmpOp::Ne => !json_eq(a, b),
        CmpOp::Lt => order.is_some_and(Ordering::is_lt),
        CmpOp::Gt => order.is_some_and(Ordering::is_gt),
        CmpOp::Le => order.is_some_and(Ordering::is_le),
        CmpOp::Ge => order.is_some_and(Ordering::is_ge),
    }
}

/// JSON equality, except that numbers compare by value (`1 == 1.0`), also inside containers.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Integers exactly, anything involving a float as `f64`.
fn num_cmp(x: &Number, y: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(x), int(y)) {
        (Some(p), Some(q)) => Some(p.cmp(&q)),
        _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions: canonical text

/// Binding strength: operands weaker than their position requires get parentheses.
fn strength(node: &Node) -> u8 {
    match node {
        Node::Or(_) => 1,
        Node::And(_) => 2,
        Node::Not(_) => 3,
        Node::Cmp(..) => 4,
        _ => 5,
    }
}

fn write_operand(node: &Node, min: u8, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if strength(node) < min {
        f.write_str("(")?;
        write_node(node, f)?;
        f.write_str(")")
    } else {
        write_node(node, f)
    }
}

fn write_node(node: &Node, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match node {
        Node::Or(items) | Node::And(items) => {
            let (sep, min) = match node {
                Node::Or(_) => (" or ", 2),
                _ => (" and ", 3),
            };
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                write_operand(item, min, f)?;
            }
            Ok(())
        }
        Node::Not(inner) => {
            f.write_str("not ")?;
            write_operand(inner, 3, f)
        }
        Node::Cmp(left, op, right) => {
            write_operand(left, 5, f)?;
            write!(f, " {} ", op.as_str())?;
            write_operand(right, 5, f)
        }
        Node::Exists(r) => write!(f, "exists({r})"),
        Node::Ref(r) => write!(f, "{r}"),
        Node::Lit(Value::String(s)) => {
            f.write_str("\"")?;
            for c in s.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    '\t' => f.write_str("\\t")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")
        }
        Node::Lit(Value::Number(n)) => match n.as_f64() {
            // Floats keep a fraction so they parse back as floats; `{}` never uses exponents.
            Some(x) if n.is_f64() => {
                let text = x.to_string();
                let dot = if text.contains('.') { "" } else { ".0" };
                write!(f, "{text}{dot}")
            }
            _ => write!(f, "{n}"),
        },
        Node::Lit(v) => write!(f, "{v}"),
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_node(&self.0, f)
    }
}

// ---------------------------------------------------------------------------------------------
// Templates

/// One part of a template string.
enum Piece<'a> {
    Text(&'a str),
    /// The text between `${` and `}`, untrimmed, and the byte offset of the `$`.
    Ref(&'a str, usize),
    /// An `${` without a closing `}` at this byte offset; the rest of the string is text.
    Unclosed(usize),
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let (mut text_from, mut i) = (0, 0);
    while let Some(k) = s[i..].find('$') {
        let d = i + k;
        let escaped = s[d..].starts_with("$${");
        if !escaped && !s[d..].starts_with("${") {
            i = d + 1;
            continue;
        }
        if text_from < d {
            out.push(Piece::Text(&s[text_from..d]));
        }
        if escaped {
            out.push(Piece::Text(&s[d + 1..d + 3]));
            i = d + 3;
        } else if let Some(close) = s[d + 2..].find('}') {
            out.push(Piece::Ref(&s[d + 2..d + 2 + close], d));
            i = d + 2 + close + 1;
        } else {
            out.push(Piece::Unclosed(d));
            text_from = d;
            break;
        }
        text_from = i;
    }
    if text_from < s.len() {
        out.push(Piece::Text(&s[text_from..]));
    }
    out
}

/// Every `${...}` in the strings of `input` (through arrays and objects; object keys are not
/// templates), with the JSON path where it was found (`input.query`, `input.items[2]`, and
/// `input["odd key"]` for keys that are not plain names) and the parsed reference or the
/// problem. An unclosed `${` is a problem; `$${` is an escaped literal `${`.
pub fn template_refs(input: &Value) -> Vec<(String, Result<Ref, String>)> {
    fn walk(value: &Value, path: String, out: &mut Vec<(String, Result<Ref, String>)>) {
        match value {
            Value::String(s) => {
                for piece in pieces(s) {
                    let found = match piece {
                        Piece::Ref(inner, at) => Ref::parse(inner.trim()).map_err(|e| {
                            let at = s[..at].chars().count() + 1;
                            format!("\"${{{inner}}}\" at character {at}: {e}")
                        }),
                        Piece::Unclosed(at) => Err(format!(
                            "unclosed \"${{\" at character {}",
                            s[..at].chars().count() + 1
                        )),
                        Piece::Text(_) => continue,
                    };
                    out.push((path.clone(), found));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{path}[{i}]"), out);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let plain = !key.is_empty() && key.chars().all(is_segment_char);
                    let path = if plain {
                        format!("{path}.{key}")
                    } else {
                        format!("{path}[{}]", Value::String(key.clone()))
                    };
                    walk(item, path, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(input, "input".into(), &mut out);
    out
}

/// `input` with every string's templates filled from `ctx`.
///
/// A string that is exactly one `${ref}` becomes the referenced value itself, of any type
/// (`null` when missing). Otherwise each `${ref}` is replaced by the value as text: strings
/// raw, other values as compact JSON, missing as nothing. `$${` becomes `${`. An unclosed `${`
/// stays as written, and a malformed reference counts as missing.
pub fn resolve(input: &Value, ctx: &Value) -> Value {
    let lookup = |inner: &str| Ref::parse(inner.trim()).ok()?.lookup(ctx);
    match input {
        Value::String(s) => {
            let pieces = pieces(s);
            if let [Piece::Ref(inner, _)] = pieces.as_slice() {
                return lookup(inner).cloned().unwrap_or(Value::Null);
            }
            let mut out = String::with_capacity(s.len());
            for piece in pieces {
                match piece {
                    Piece::Text(text) => out.push_str(text),
                    Piece::Ref(inner, _) => match lookup(inner) {
                        Some(Value::String(text)) => out.push_str(text),
                        Some(other) => out.push_str(&other.to_string()),
                        None => {}
                    },
                    Piece::Unclosed(_) => {}
                }
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, ctx)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), resolve(v, ctx)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "params": {
                "lang": "en", "n": 3, "f": 2.5, "zero": 0, "empty": "", "list": [10, 20, 30],
                "obj": {"k": 1}, "none": null, "yes": true, "no": false, "arr0": [], "obj0": {},
                "big": 18446744073709551615u64
            },
            "metadata": {"requester": "ana"},
            "task": {"title": "Write", "description": "a post"},
            "steps": {"draft": {"outputs": {"text": "hello", "items": [{"id": 7}], "n": 1.0}}}
        })
    }

    fn eval(text: &str) -> bool {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .eval(&ctx())
    }

    fn parse_err(text: &str) -> String {
        Expr::parse(text).expect_err(text)
    }

    // --- references -------------------------------------------------------------------------

    #[test]
    fn refs_accept_the_four_roots() {
        let r = Ref::parse("steps.draft.outputs.text").unwrap();
        assert_eq!(r.segments(), ["steps", "draft", "outputs", "text"]);
        assert_eq!(r.step(), Some("draft"));
        assert_eq!(r.param(), None);
        assert_eq!(r.to_string(), "steps.draft.outputs.text");
        let p = Ref::parse("params.topic").unwrap();
        assert_eq!((p.param(), p.step()), (Some("topic"), None));
        for ok in [
            "metadata.requester",
            "task.title",
            "task.description",
            "steps.draft.outputs",
            "steps.a-b_1.outputs.x.0",
            "params.a.b.c",
        ] {
            assert!(Ref::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refs_reject_bad_paths() {
        let cases = [
            ("", "empty reference"),
            (
                "foo.bar",
                "unknown root \"foo\" (use params, metadata, task or steps)",
            ),
            ("params", "needs a field"),
            ("metadata", "needs a field"),
            ("params..x", "empty segment"),
            ("params.x.", "empty segment"),
            ("params.a b", "may only contain"),
            ("params.a$", "may only contain"),
            ("task", "task.title or task.description"),
            ("task.owner", "unknown task field \"owner\""),
            ("task.title.x", "has no fields"),
            ("steps", "needs a step id"),
            ("steps.draft", "steps.draft.outputs"),
            ("steps.draft.state", "steps.draft.outputs"),
        ];
        for (text, expected) in cases {
            let e = Ref::parse(text).expect_err(text);
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn ref_lookup_walks_objects_and_arrays() {
        let c = ctx();
        let get = |t: &str| Ref::parse(t).unwrap().lookup(&c).cloned();
        assert_eq!(get("params.list.1"), Some(json!(20)));
        assert_eq!(get("steps.draft.outputs.items.0.id"), Some(json!(7)));
        assert_eq!(get("params.list.9"), None);
        assert_eq!(get("params.lang.x"), None);
        assert_eq!(get("params.missing"), None);
        assert_eq!(get("params.none"), Some(Value::Null));
        let keyed = json!({"params": {"m": {"0": "zero"}}});
        assert_eq!(
            Ref::parse("params.m.0").unwrap().lookup(&keyed),
            Some(&json!("zero"))
        );
    }

    // --- conditions: semantics --------------------------------------------------------------

    #[test]
    fn comparison_operators() {
        assert!(eval("params.lang == 'en'"));
        assert!(!eval("params.lang != \"en\""));
        assert!(eval("params.n < 4") && !eval("params.n < 3"));
        assert!(eval("params.n <= 3") && !eval("params.n <= 2"));
        assert!(eval("params.n > 2.5") && !eval("params.n > 3"));
        assert!(eval("params.n >= 3") && !eval("params.n >= 3.5"));
        assert!(eval("params.f == 2.5"));
        assert!(eval("-1 < 0") && eval("-1.5 < -1"));
    }

    #[test]
    fn numbers_compare_numerically_and_strings_lexicographically() {
        assert!(eval("steps.draft.outputs.n == 1"));
        assert!(eval("1 == 1.0") && !eval("1 != 1.0"));
        assert!(eval("params.big > 9223372036854775807"));
        assert!(eval("params.big == 18446744073709551615"));
        assert!(eval("'abc' < 'abd'") && eval("'B' < 'a'") && eval("'ab' <= 'ab'"));
        assert!(eval("'10' < '9'"), "strings are not numbers");
        assert!(eval("params.list == params.list"));
        let c = json!({"params": {"a": [1, {"x": 2}], "b": [1.0, {"x": 2.0}]}});
        assert!(Expr::parse("params.a == params.b").unwrap().eval(&c));
    }

    #[test]
    fn mismatched_types_compare_false() {
        for text in [
            "1 < '2'",
            "'1' < 2",
            "null < 1",
            "null <= null",
            "null >= null",
            "true > false",
            "params.list < params.list",
            "params.obj >= params.obj",
            "1 == '1'",
            "true == 1",
        ] {
            assert!(!eval(text), "{text}");
        }
        assert!(eval("1 != '1'"));
    }

    #[test]
    fn missing_refs_are_null() {
        assert!(eval("params.missing == null"));
        assert!(eval("params.none == null"));
        assert!(eval("params.missing != 'x'"));
        assert!(!eval("params.missing"));
        assert!(!eval("params.missing < 1") && !eval("params.missing > 1"));
        assert!(!eval("steps.other.outputs.text == 'hello'"));
    }

    #[test]
    fn truthiness() {
        for falsy in [
            "params.none",
            "params.no",
            "params.zero",
            "params.empty",
            "params.arr0",
            "params.obj0",
            "null",
            "false",
            "0",
            "0.0",
            "''",
        ] {
            assert!(!eval(falsy), "{falsy}");
        }
        for truthy in [
            "params.yes",
            "params.n",
            "params.lang",
            "params.list",
            "params.obj",
            "true",
            "-1",
            "0.5",
            "'false'",
            "' '",
        ] {
            assert!(eval(truthy), "{truthy}");
        }
    }

    #[test]
    fn exists_means_present_and_not_null() {
        assert!(eval("exists(params.lang)") && eval("exists(params.zero)"));
        assert!(!eval("exists(params.none)") && !eval("exists(params.missing)"));
        assert!(eval("exists( ${ steps.draft.outputs.items.0 } )"));
        assert!(eval("not exists(metadata.x)"));
    }

    #[test]
    fn boolean_operators_and_synonyms() {
        assert!(eval("true and true") && !eval("true and false"));
        assert!(eval("false or true") && !eval("false or false"));
        assert!(eval("not false") && !eval("not true"));
        assert!(eval("true && params.n") && eval("false || params.lang") && eval("!params.none"));
        assert!(eval("!!params.n") && eval("not not 1"));
        assert!(eval("params.lang=='en'&&params.n>=3||false"));
        assert!(eval("${params.lang} == 'en'"));
    }

    #[test]
    fn precedence() {
        // not binds looser than comparison: not (a == 1)
        assert!(eval("not params.n == 1 or params.none"));
        let e = Expr::parse("not params.n == 1 or params.no").unwrap();
        assert_eq!(
            e,
            Expr::parse("(not (params.n == 1)) or params.no").unwrap()
        );
        // and binds tighter than or
        assert!(eval("true or false and false"));
        assert!(!eval("(true or false) and false"));
        let e = Expr::parse("params.a or params.b and params.c").unwrap();
        assert_eq!(e.to_string(), "params.a or params.b and params.c");
        assert_eq!(
            Expr::parse("(params.a or params.b) and params.c")
                .unwrap()
                .to_string(),
            "(params.a or params.b) and params.c"
        );
        // a parenthesised boolean is a comparison operand
        assert!(eval("(params.n > 1) == true"));
        assert!(eval("(not params.yes) == false"));
    }

    #[test]
    fn and_or_short_circuit() {
        // Short-circuiting is observable only through evaluation order; check results and that
        // nested same-operator groups flatten.
        assert_eq!(
            Expr::parse("(params.a and params.b) and params.c").unwrap(),
            Expr::parse("params.a and (params.b and params.c)").unwrap()
        );
        // Evaluation has no effects, so short-circuiting shows only in the results.
        assert!(!eval("false and params.missing.deep == 1"));
        assert!(eval("true or params.missing"));
        assert!(eval(
            "params.yes or (params.missing > 'x' and params.list < 1)"
        ));
    }

    #[test]
    fn literals_and_escapes() {
        let c = json!({"params": {"s": "a'b\"c\\d\ne\tf"}});
        let e = Expr::parse(r#"params.s == 'a\'b"c\\d\ne\tf'"#).unwrap();
        assert!(e.eval(&c));
        let e2 = Expr::parse(r#"params.s == "a'b\"c\\d\ne\tf""#).unwrap();
        assert_eq!(e, e2);
        assert_eq!(e.to_string(), r#"params.s == "a'b\"c\\d\ne\tf""#);
        assert_eq!(Expr::parse("1.50").unwrap().to_string(), "1.5");
        assert_eq!(Expr::parse("2.0").unwrap().to_string(), "2.0");
        assert_eq!(Expr::parse("-7").unwrap().to_string(), "-7");
        assert_eq!(
            Expr::parse("null == null").unwrap().to_string(),
            "null == null"
        );
        assert!(eval("null == null") && eval("true == true") && eval("'é' == \"é\""));
    }

    #[test]
    fn refs_in_source_order() {
        let e = Expr::parse(
            "params.a == metadata.b and (exists(steps.s.outputs.x) or not ${task.title})",
        )
        .unwrap();
        let refs: Vec<String> = e.refs().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            refs,
            ["params.a", "metadata.b", "steps.s.outputs.x", "task.title"]
        );
        assert!(Expr::parse("1 == 1").unwrap().refs().is_empty());
    }

    // --- conditions: errors -----------------------------------------------------------------

    #[test]
    fn parse_errors_name_the_problem_and_position() {
        let cases = [
            (
                "params.a ==",
                "expected a value, found the end at character 12",
            ),
            (
                "(params.a",
                "expected \")\" to close the \"(\" at character 1, found the end at character 10",
            ),
            ("params.a)", "unmatched \")\" at character 9"),
            (
                "params.a params.b",
                "unexpected reference params.b after the end at character 10",
            ),
            ("a == b == c", "unknown root \"a\""),
            (
                "params.a == 1 == 2",
                "comparisons do not chain; add parentheses at character 15",
            ),
            (
                "params.a = 1",
                "unexpected '=' (did you mean \"==\"?) at character 10",
            ),
            ("params.a & true", "did you mean \"&&\"?"),
            ("params.a | true", "did you mean \"||\"?"),
            (
                "len(params.a)",
                "unknown function \"len\" (only exists(...) is available) at character 1",
            ),
            (
                "exists params.a",
                "expected \"(\" after exists, found reference params.a at character 8",
            ),
            (
                "exists('x')",
                "exists(...) takes a reference at character 8",
            ),
            (
                "exists(params.a",
                "expected \")\" after the reference, found the end",
            ),
            ("'abc", "unclosed string at character 1"),
            ("'a\\qb'", "unknown escape \"\\q\""),
            ("params.a == 'x\\", "unclosed string at character 13"),
            ("params.x # 1", "unexpected character '#' at character 10"),
            (
                "foo.bar",
                "unknown root \"foo\" (use params, metadata, task or steps) at character 1",
            ),
            ("steps.draft == 1", "steps.draft.outputs"),
            ("1 and ${params.x", "unclosed \"${\" at character 7"),
            ("${nope}", "unknown root \"nope\""),
            ("params.a AND true", "write \"AND\" in lowercase"),
            ("True", "write \"True\" in lowercase"),
            ("and", "expected a value, found \"and\" at character 1"),
            ("not", "expected a value, found the end at character 4"),
            ("()", "expected a value, found \")\" at character 2"),
            ("1.", "unexpected character '.' at character 2"),
            ("- 1", "unexpected character '-' at character 1"),
            (&format!("1{}", "0".repeat(400)), "out of range"),
        ];
        for (text, expected) in cases {
            let e = parse_err(text);
            assert!(
                e.contains(expected),
                "{text:?}: got {e:?}, want {expected:?}"
            );
        }
        assert_eq!(parse_err(""), "empty expression");
        assert_eq!(parse_err("  \n "), "empty expression");
    }

    #[test]
    fn limits_protect_the_stack() {
        let deep = "(".repeat(10_000) + "true" + &")".repeat(10_000);
        assert!(parse_err(&deep).contains("limit is 2000"));
        let deep = "(".repeat(1_000);
        assert!(parse_err(&deep).contains("nested more than 32 levels deep at character 33"));
        let nots = "!".repeat(1_999) + "1";
        assert!(parse_err(&nots).contains("nested more than 32"));
        let ok = "(".repeat(32) + "true" + &")".repeat(32);
        assert!(Expr::parse(&ok).unwrap().eval(&ctx()));
        let too_deep = "(".repeat(33) + "true" + &")".repeat(33);
        assert!(parse_err(&too_deep).contains("nested more than 32"));
        let mixed = "not (".repeat(16) + "true" + &")".repeat(16);
        assert!(Expr::parse(&mixed).is_ok());
        let mixed = "not (".repeat(17) + "true" + &")".repeat(17);
        assert!(parse_err(&mixed).contains("nested more than 32"));
        // Long flat chains are fine up to the length limit and stay shallow.
        let chain = vec!["1"; 1000].join("|");
        assert!(parse_err(&chain).contains("did you mean"));
        let chain = vec!["1"; 667].join("||");
        assert!(chain.len() <= MAX_EXPR_LEN && Expr::parse(&chain).unwrap().eval(&ctx()));
        let long = "'".to_owned() + &"x".repeat(MAX_EXPR_LEN - 2) + "'";
        assert!(Expr::parse(&long).is_ok());
        assert!(Expr::parse(&format!("{long} ")).is_err());
        // the limit counts characters, not bytes
        let wide = "'".to_owned() + &"é".repeat(MAX_EXPR_LEN - 2) + "'";
        assert!(Expr::parse(&wide).is_ok());
    }

    // --- templates --------------------------------------------------------------------------

    #[test]
    fn template_refs_report_paths_and_problems() {
        let input = json!({
            "query": "about ${params.topic} for ${ metadata.requester }",
            "items": [1, "x", "${steps.draft.outputs.text}"],
            "nested": {"deep": [{"v": "${task.owner}"}]},
            "odd key": "${params.a",
            "${params.key}": "keys are not templates",
            "escaped": "$${params.not_a_ref} and $$ and $",
            "plain": 5
        });
        let found: Vec<(String, Result<String, String>)> = template_refs(&input)
            .into_iter()
            .map(|(p, r)| (p, r.map(|r| r.to_string())))
            .collect();
        assert_eq!(
            found,
            vec![
                ("input.items[2]".into(), Ok("steps.draft.outputs.text".into())),
                (
                    "input.nested.deep[0].v".into(),
                    Err("\"${task.owner}\" at character 1: unknown task field \"owner\" (use task.title or task.description)".into())
                ),
                ("input[\"odd key\"]".into(), Err("unclosed \"${\" at character 1".into())),
                ("input.query".into(), Ok("params.topic".into())),
                ("input.query".into(), Ok("metadata.requester".into())),
            ]
        );
        assert!(template_refs(&json!("no refs")).is_empty());
        assert_eq!(template_refs(&json!("${params.x}"))[0].0, "input");
        let bad = template_refs(&json!("ab${}"));
        assert_eq!(
            bad[0].1,
            Err("\"${}\" at character 3: empty reference".into())
        );
    }

    #[test]
    fn resolve_substitutes_whole_values_keeping_type() {
        let c = ctx();
        assert_eq!(resolve(&json!("${params.list}"), &c), json!([10, 20, 30]));
        assert_eq!(resolve(&json!("${params.n}"), &c), json!(3));
        assert_eq!(resolve(&json!("${ params.obj }"), &c), json!({"k": 1}));
        assert_eq!(resolve(&json!("${params.missing}"), &c), Value::Null);
        assert_eq!(resolve(&json!("${bad root}"), &c), Value::Null);
        assert_eq!(resolve(&json!("${task.title}"), &c), json!("Write"));
    }

    #[test]
    fn resolve_interpolates_text() {
        let c = ctx();
        let r = |s: &str| resolve(&json!(s), &c);
        assert_eq!(r("lang=${params.lang}!"), json!("lang=en!"));
        assert_eq!(r("${params.n}${params.f}"), json!("32.5"));
        assert_eq!(r(" ${params.list}"), json!(" [10,20,30]"));
        assert_eq!(
            r("o=${params.obj} n=${params.none} m=${params.missing}."),
            json!("o={\"k\":1} n=null m=.")
        );
        assert_eq!(r("x ${foo} y"), json!("x  y"));
        assert_eq!(
            r("$${params.lang} is ${params.lang}"),
            json!("${params.lang} is en")
        );
        assert_eq!(r("$${params.lang}"), json!("${params.lang}"));
        assert_eq!(r("cost $5, $$"), json!("cost $5, $$"));
        assert_eq!(r("open ${params.lang"), json!("open ${params.lang"));
        assert_eq!(r("${params.lang} ${"), json!("en ${"));
        assert_eq!(r("é${params.lang}ü"), json!("éenü"));
    }

    #[test]
    fn resolve_walks_arrays_and_objects() {
        let c = ctx();
        let input = json!({
            "a": ["${params.n}", {"b": "t=${task.title}", "${params.lang}": 1}],
            "n": 5, "t": true, "z": null
        });
        assert_eq!(
            resolve(&input, &c),
            json!({"a": [3, {"b": "t=Write", "${params.lang}": 1}], "n": 5, "t": true, "z": null})
        );
    }

    // --- properties -------------------------------------------------------------------------

    const REFS: &[&str] = &[
        "params.a",
        "params.n",
        "params.list.1",
        "metadata.who",
        "task.title",
        "steps.s1.outputs.text",
        "steps.s1.outputs.items.0",
    ];

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-c$'{}\"]{0,4}".prop_map(Value::String),
            "(\\$\\{params\\.a\\}|\\$\\{|\\$\\$\\{|\\}|x|\\$)*".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c0-2]|text|items|\\$\\{x\\}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_ctx() -> impl Strategy<Value = Value> {
        prop::collection::vec(arb_json(), 7).prop_map(|v| {
            json!({
                "params": {"a": v[0], "n": v[1], "list": v[2]},
                "metadata": {"who": v[3]},
                "task": {"title": v[4]},
                "steps": {"s1": {"outputs": {"text": v[5], "items": v[6]}}}
            })
        })
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        let reference = prop::sample::select(REFS).prop_map(|r| Ref::parse(r).unwrap());
        let literal = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "(?s).{0,8}".prop_map(Value::String),
        ];
        let leaf = prop_oneof![
            literal.prop_map(Node::Lit),
            reference.clone().prop_map(Node::Ref),
            reference.prop_map(Node::Exists),
        ];
        let op = prop::sample::select(vec![
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Gt,
            CmpOp::Le,
            CmpOp::Ge,
        ]);
        leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                inner.clone().prop_map(|n| Node::Not(Box::new(n))),
                (inner.clone(), op.clone(), inner.clone()).prop_map(|(a, op, b)| Node::Cmp(
                    Box::new(a),
                    op,
                    Box::new(b)
                )),
                prop::collection::vec(inner.clone(), 2..4).prop_map(|v| join(v, true)),
                prop::collection::vec(inner, 2..4).prop_map(|v| join(v, false)),
            ]
        })
    }

    fn token_soup() -> impl Strategy<Value = String> {
        let tokens = vec![
            "(",
            ")",
            "and",
            "or",
            "not",
            "!",
            "&&",
            "||",
            "==",
            "!=",
            "<",
            ">=",
            "<=",
            ">",
            "params.a",
            "${task.title}",
            "'x'",
            "\"y\\n\"",
            "1",
            "-2.5",
            "true",
            "null",
            "exists(params.n)",
            "exists",
            "foo(",
            "=",
            "$",
            "steps.s1",
            "}",
            "${",
            "'",
        ];
        prop::collection::vec(prop::sample::select(tokens), 0..30).prop_map(|v| v.join(" "))
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "(?s).{0,300}") {
            let _ = Expr::parse(&text);
        }

        /// Token soup reaches deep into the parser; whatever parses round-trips.
        #[test]
        fn token_soup_parses_or_fails_cleanly(text in token_soup(), ctx in arb_ctx()) {
            if let Ok(e) = Expr::parse(&text) {
                let back = Expr::parse(&e.to_string());
                prop_assert_eq!(back.as_ref(), Ok(&e), "{}", e);
                prop_assert_eq!(e.eval(&ctx), back.unwrap().eval(&ctx));
            }
        }

        #[test]
        fn display_round_trips(node in arb_node(), ctx in arb_ctx()) {
            let e = Expr(node);
            let text = e.to_string();
            let back = Expr::parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
            prop_assert_eq!(&back, &e, "{}", text);
            prop_assert_eq!(back.eval(&ctx), e.eval(&ctx));
            prop_assert_eq!(back.to_string(), text);
        }

        #[test]
        fn resolve_never_panics(input in arb_json(), ctx in arb_ctx()) {
            let out = resolve(&input, &ctx);
            let _ = template_refs(&input);
            // Strings without '$' are untouched; other values keep their shape.
            if !input.to_string().contains('$') {
                prop_assert_eq!(out, input);
            }
        }
    }
}
