//! Reading a JSON request into its `baton-api` type, listing every problem at once.
//!
//! Two steps:
//! 1. [`strict_value`]: the bytes become a [`Value`], refusing duplicate object keys at any
//!    depth (`{"outputs": 1, "outputs": 2}` would otherwise keep the last one silently).
//! 2. [`typed`]: the value is deserialized into the wire type, whose serde attributes
//!    (`deny_unknown_fields`, required fields, field types) are the only definition of what is
//!    accepted. Serde stops at the first error, so each error is recorded with its path and the
//!    value is *repaired* at that path (an unknown key removed, a wrong value replaced by a
//!    placeholder of a type that fits), then deserialization runs again, until it succeeds.
//!    The repaired value then goes through the request's own rules, whose problems at paths
//!    already reported are dropped (they are about placeholders).
//!
//! Invariant: a body is accepted exactly when it deserializes into the wire type as sent and
//! its rules find nothing, so the wire types and what a transport accepts cannot drift apart.

use std::fmt;

use baton_api::FieldIssue;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserializer, Serialize};
use serde_json::{Map, Value};

/// Most problems listed for one body; a body with more is refused with the first ones.
const MAX_ISSUES: usize = 100;

/// Why a request body was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Rejection {
    /// Not JSON at all (syntax error, bad UTF-8, nesting too deep).
    Malformed(String),
    /// JSON, but with these problems (every one of them).
    Invalid(Vec<FieldIssue>),
}

/// Problems found in one request, by field path. A problem at or below a path already
/// reported is not added: it is a consequence of the first (or of its placeholder).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Issues {
    list: Vec<FieldIssue>,
}

impl Issues {
    /// Report `issue` at `field` (`plan.subtasks[0].id`, or `body` for the whole body).
    pub fn add(&mut self, field: impl Into<String>, issue: impl Into<String>) {
        let field = field.into();
        let covered = self.list.iter().any(|known| covers(&known.field, &field));
        if !covered && self.list.len() < MAX_ISSUES {
            self.list.push(FieldIssue {
                field,
                issue: issue.into(),
            });
        }
    }

    /// Add every issue of `other`, each field prefixed by `prefix` (`tasks[3]`).
    pub fn extend_under(&mut self, prefix: &str, other: Issues) {
        for i in other.list {
            self.add(join(prefix, &i.field), i.issue);
        }
    }

    /// How many problems were recorded.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_vec(self) -> Vec<FieldIssue> {
        self.list
    }
}

/// `parent` is `field` or one of its ancestors.
fn covers(parent: &str, field: &str) -> bool {
    parent == "body"
        || field == parent
        || field
            .strip_prefix(parent)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// `prefix` + `field` as one path.
pub(crate) fn join(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field) {
        (true, _) => field.to_owned(),
        (false, "body") => prefix.to_owned(),
        (false, f) if f.starts_with('[') => format!("{prefix}{f}"),
        (false, f) => format!("{prefix}.{f}"),
    }
}

/// Read `bytes` as a JSON request of type `T` (always an object): `Ok((value, issues))` where
/// `value` is `None` only when the body could not be made to fit `T` at all, and `issues`
/// lists every problem of its shape. The caller adds the problems its rules find and refuses
/// if there are any.
pub(crate) fn read<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
) -> Result<(Option<T>, Issues), Rejection> {
    let value = strict_value(bytes)?;
    if !value.is_object() {
        return Err(Rejection::Invalid(vec![FieldIssue {
            field: "body".into(),
            issue: "must be a JSON object".into(),
        }]));
    }
    Ok(typed(value))
}

/// Parse JSON refusing duplicate keys; an empty (or all-whitespace) body is `{}`.
fn strict_value(bytes: &[u8]) -> Result<Value, Rejection> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let malformed =
        |e: serde_json::Error| Rejection::Malformed(format!("request body is not valid JSON: {e}"));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize::<_, StrictValue>(&mut de) {
        Ok(v) => v.0,
        Err(e) => {
            let path = field_path(e.path());
            let inner = e.into_inner();
            return Err(match quoted(&inner.to_string(), DUPLICATE_KEY) {
                Some(key) => Rejection::Invalid(vec![FieldIssue {
                    field: join(if path == "body" { "" } else { &path }, &key),
                    issue: "duplicate key".into(),
                }]),
                None => malformed(inner),
            });
        }
    };
    de.end().map_err(malformed)?;
    Ok(value)
}

/// Deserialize `value` into `T`, repairing and retrying to list every problem (see the
/// module documentation).
fn typed<T: DeserializeOwned + Serialize>(mut value: Value) -> (Option<T>, Issues) {
    let mut issues = Issues::default();
    // Which placeholder was last tried at a path, so a repeated error there tries the next.
    let mut tried: Option<(String, usize)> = None;
    for _ in 0..(4 * MAX_ISSUES) {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(t) => {
                // Serde also reads a struct from an array of its fields in order; a request
                // says what it means by name, so such a body does not round-trip and is refused.
                match serde_json::to_value(&t) {
                    Ok(back) => arrays_for_objects(&value, &back, &mut Vec::new(), &mut issues),
                    Err(e) => issues.add("body", format!("cannot be read back: {e}")),
                }
                return (Some(t), issues);
            }
            Err(e) => e,
        };
        let mut segments: Vec<Seg> = error.path().iter().map(Seg::of).collect();
        let message = error.inner().to_string();
        let (issue, unknown) = if let Some(field) = quoted(&message, "missing field `") {
            segments.push(Seg::Key(field));
            ("required".to_owned(), false)
        } else if let Some(field) = quoted(&message, "unknown field `") {
            // The path of an unknown field already ends at the field itself.
            if segments.last() != Some(&Seg::Key(field.clone())) {
                segments.push(Seg::Key(field));
            }
            ("unknown field".to_owned(), true)
        } else {
            (message, false)
        };
        let path = display(&segments);
        issues.add(&path, issue);
        let attempt = match &tried {
            Some((p, n)) if *p == path => n + 1,
            _ => 0,
        };
        tried = Some((path, attempt));
        let repaired = if unknown {
            remove(&mut value, &segments)
        } else {
            PLACEHOLDERS
                .get(attempt)
                .is_some_and(|make| replace(&mut value, &segments, make()))
        };
        if !repaired {
            break;
        }
    }
    (None, issues)
}

/// Report every place where `sent` has an array and `read` (the typed value serialized back)
/// an object.
fn arrays_for_objects(sent: &Value, read: &Value, at: &mut Vec<Seg>, issues: &mut Issues) {
    match (sent, read) {
        (Value::Array(_), Value::Object(_)) => issues.add(display(at), "must be an object"),
        (Value::Object(s), Value::Object(r)) => {
            for (k, v) in s {
                if let Some(w) = r.get(k) {
                    at.push(Seg::Key(k.clone()));
                    arrays_for_objects(v, w, at, issues);
                    at.pop();
                }
            }
        }
        (Value::Array(s), Value::Array(r)) => {
            for (i, (v, w)) in s.iter().zip(r).enumerate() {
                at.push(Seg::Index(i));
                arrays_for_objects(v, w, at, issues);
                at.pop();
            }
        }
        _ => {}
    }
}

/// Values tried in turn in place of a wrong or missing one, until one has a type that fits.
const PLACEHOLDERS: &[fn() -> Value] = &[
    || Value::String(String::new()),
    || Value::from(0u8),
    || Value::Bool(false),
    || Value::Array(Vec::new()),
    || Value::Object(Map::new()),
    || Value::Null,
];

/// One step of a path into a JSON value.
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
    /// A step serde could not name (an enum variant, a non-string key): repairs stop here.
    Other,
}

impl Seg {
    fn of(segment: &serde_path_to_error::Segment) -> Seg {
        use serde_path_to_error::Segment;
        match segment {
            Segment::Map { key } => Seg::Key(key.clone()),
            Segment::Seq { index } => Seg::Index(*index),
            _ => Seg::Other,
        }
    }
}

/// `a.b[0].c`, or `body` for the root.
fn display(segments: &[Seg]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Other => out.push_str(".?"),
        }
    }
    if out.is_empty() {
        "body".into()
    } else {
        out
    }
}

fn field_path(path: &serde_path_to_error::Path) -> String {
    let segments: Vec<Seg> = path.iter().map(Seg::of).collect();
    display(&segments)
}

/// The value holding the last segment, and that segment.
fn parent_mut<'a>(value: &'a mut Value, segments: &'a [Seg]) -> Option<(&'a mut Value, &'a Seg)> {
    let (last, init) = segments.split_last()?;
    let mut at = value;
    for s in init {
        at = match (s, at) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some((at, last))
}

fn remove(value: &mut Value, segments: &[Seg]) -> bool {
    match parent_mut(value, segments) {
        Some((Value::Object(m), Seg::Key(k))) => m.remove(k).is_some(),
        _ => false,
    }
}

fn replace(value: &mut Value, segments: &[Seg], with: Value) -> bool {
    if segments.is_empty() {
        // The body itself has the wrong type: nothing to repair inside it.
        return false;
    }
    match parent_mut(value, segments) {
        Some((Value::Object(m), Seg::Key(k))) => {
            m.insert(k.clone(), with);
            true
        }
        Some((Value::Array(a), Seg::Index(i))) if *i < a.len() => {
            a[*i] = with;
            true
        }
        _ => false,
    }
}

/// The text between `prefix` and the next backtick in `message`.
fn quoted(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

const DUPLICATE_KEY: &str = "duplicate key `";

/// A JSON value whose objects never repeat a key.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> DeserializeSeed<'de> for StrictVisitor {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(StrictVisitor)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("{DUPLICATE_KEY}{key}`")));
            }
            let v = map.next_value_seed(StrictVisitor)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        count: Option<u32>,
        inner: Option<Inner>,
        list: Option<Vec<Inner>>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        id: String,
        flag: Option<bool>,
    }

    fn fields(bytes: &str) -> Vec<String> {
        match read::<Outer>(bytes.as_bytes()) {
            Ok((_, issues)) => issues.into_vec().into_iter().map(|i| i.field).collect(),
            Err(Rejection::Invalid(list)) => list.into_iter().map(|i| i.field).collect(),
            Err(Rejection::Malformed(m)) => vec![format!("malformed: {m}")],
        }
    }

    #[test]
    fn every_shape_problem_is_listed() {
        assert_eq!(fields(r#"{"name": "a"}"#), Vec::<String>::new());
        let mut got = fields(
            r#"{"count": "x", "extra": 1, "inner": {"flag": 3, "more": []},
                "list": [{"id": "a"}, 7, {"id": 1, "zz": 0}]}"#,
        );
        got.sort();
        assert_eq!(
            got,
            [
                "count",
                "extra",
                "inner.flag",
                "inner.id",
                "inner.more",
                "list[1]",
                "list[2].id",
                "list[2].zz",
                "name"
            ]
        );
        assert_eq!(fields("[1]"), ["body"]);
        assert_eq!(fields("7"), ["body"]);
        // A struct given as an array of its fields is read by serde, but refused.
        assert_eq!(fields(r#"{"name": "a", "inner": ["x", true]}"#), ["inner"]);
        assert_eq!(
            fields(r#"{"name": "a", "list": [{"id": "a"}, ["b"]]}"#),
            ["list[1]"]
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        assert_eq!(fields(r#"{"name": "a", "name": "b"}"#), ["name"]);
        assert_eq!(
            fields(r#"{"name": "a", "list": [{"id": "x", "flag": true, "flag": false}]}"#),
            ["list[0].flag"]
        );
        let Err(Rejection::Invalid(list)) = read::<Value>(br#"{"outputs": {"a": 1, "a": 2}}"#)
        else {
            panic!("a duplicate inside a free-form value is refused too");
        };
        assert_eq!(list[0].field, "outputs.a");
        assert_eq!(list[0].issue, "duplicate key");
    }

    #[test]
    fn not_json_is_malformed_and_empty_is_an_object() {
        assert!(matches!(
            read::<Outer>(br#"{"name": "#),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            read::<Outer>(b"{} x"),
            Err(Rejection::Malformed(_))
        ));
        assert_eq!(fields("  "), ["name"]);
    }

    #[test]
    fn issues_under_a_reported_path_are_dropped() {
        let mut issues = Issues::default();
        issues.add("plan.subtasks[3]", "must be an object");
        issues.add("plan.subtasks[3].id", "required");
        issues.add("plan.subtasks[31].id", "required");
        issues.add("plan.subtasks[3]", "again");
        let fields: Vec<String> = issues.into_vec().into_iter().map(|i| i.field).collect();
        assert_eq!(fields, ["plan.subtasks[3]", "plan.subtasks[31].id"]);
    }
}
