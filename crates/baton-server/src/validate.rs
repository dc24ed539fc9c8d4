//! Request validation: turn a JSON body into a domain request, or list every problem with it.
//! Validation is complete before anything is sent to the engine, so a 400 changes nothing.

use baton_api::FieldIssue;
use baton_core::ids::check_name;
use baton_core::model::{DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_MS};
use baton_core::plan::Plan;
use baton_core::{planner, AssignmentId, Millis, Priority, Task, TaskId, TaskStatus};
use baton_engine::{AgentSpec, AttemptOutcome, NewTask};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

const MAX_TITLE: usize = 500;
const MAX_DESCRIPTION: usize = 20_000;
const MAX_CONCURRENCY: u64 = 1024;
const MAX_CAPABILITIES: usize = 64;

/// Collects problems while reading one object.
pub struct Fields<'a> {
    obj: Option<&'a Map<String, Value>>,
    pub issues: Vec<FieldIssue>,
}

impl<'a> Fields<'a> {
    /// Read `body`, which must be an object with only `allowed` keys.
    pub fn new(body: &'a Value, allowed: &[&str]) -> Self {
        let mut issues = Vec::new();
        let obj = body.as_object();
        match obj {
            None => issues.push(issue("body", "must be a JSON object")),
            Some(map) => {
                for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
                    issues.push(issue(key, "unknown field"));
                }
            }
        }
        Self { obj, issues }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj?.get(name).filter(|v| !v.is_null())
    }

    pub fn problem(&mut self, field: &str, text: impl Into<String>) {
        self.issues.push(issue(field, text));
    }

    /// A string of at most `max` characters; `required` ones must also be non-empty.
    pub fn string(&mut self, name: &str, required: bool, max: usize) -> Option<String> {
        match self.get(name) {
            None if required && self.obj.is_some() => {
                self.problem(name, "required");
                None
            }
            None => None,
            Some(Value::String(s)) if required && s.trim().is_empty() => {
                self.problem(name, "must not be empty");
                None
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                self.problem(name, format!("must be at most {max} characters"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problem(name, "must be a string");
                None
            }
        }
    }

    /// An identifier-like string (see [`check_name`]).
    pub fn name(&mut self, name: &str, required: bool, forbid_colon: bool) -> Option<String> {
        let value = self.string(name, required, usize::MAX)?;
        match check_name(&value, forbid_colon) {
            Some(problem) => {
                self.problem(name, problem);
                None
            }
            None => Some(value),
        }
    }

    /// An integer within `range`.
    pub fn integer(&mut self, name: &str, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
        let v = self.get(name)?;
        match v.as_u64() {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                self.problem(
                    name,
                    format!(
                        "must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, name: &str) -> Option<bool> {
        let v = self.get(name)?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.problem(name, "must be true or false");
                None
            }
        }
    }

    /// A list of names.
    pub fn names(&mut self, name: &str, required: bool, forbid_colon: bool) -> Vec<String> {
        let Some(v) = self.get(name) else {
            if required && self.obj.is_some() {
                self.problem(name, "required");
            }
            return Vec::new();
        };
        let Some(list) = v.as_array() else {
            self.problem(name, "must be a list of strings");
            return Vec::new();
        };
        if required && list.is_empty() {
            self.problem(name, "must contain at least one entry");
        }
        if list.len() > MAX_CAPABILITIES {
            self.problem(name, format!("at most {MAX_CAPABILITIES} entries"));
        }
        let mut out = Vec::new();
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                Some(s) => match check_name(s, forbid_colon) {
                    Some(problem) => self.problem(&format!("{name}[{i}]"), problem),
                    None if out.iter().any(|o: &String| o == s) => {}
                    None => out.push(s.to_owned()),
                },
                None => self.problem(&format!("{name}[{i}]"), "must be a string"),
            }
        }
        out
    }

    /// A list of at most `max` strings.
    pub fn strings(&mut self, name: &str, max: usize) -> Option<Vec<String>> {
        let v = self.get(name)?;
        let list = match v.as_array() {
            Some(list) if list.len() <= max => list,
            _ => {
                self.problem(name, format!("must be a list of at most {max} strings"));
                return None;
            }
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.problem(&format!("{name}[{i}]"), "must be a string"),
            }
        }
        Some(out)
    }

    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.get(name)
    }

    pub fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldIssue>> {
        match value {
            Some(v) if self.issues.is_empty() => Ok(v),
            _ => Err(self.issues),
        }
    }
}

fn issue(field: &str, text: impl Into<String>) -> FieldIssue {
    FieldIssue {
        field: field.to_owned(),
        issue: text.into(),
    }
}

/// A body of `POST /orchestrate` or `POST /tasks`, planned.
pub fn submission(body: &Value, execute: bool, now: Millis) -> Result<NewTask, Vec<FieldIssue>> {
    let mut f = Fields::new(
        body,
        &[
            "task_id",
            "title",
            "description",
            "priority",
            "task_type",
            "metadata",
            "payload",
            "plan",
        ],
    );
    let task_id = f.name("task_id", false, false);
    let title = f.string("title", true, MAX_TITLE);
    let description = f.string("description", true, MAX_DESCRIPTION);
    let task_type = f.string("task_type", false, 128);
    if let Some(t) = &task_type {
        if let Some(problem) = check_name(t, true) {
            f.problem("task_type", problem);
        }
    }
    let priority = match f.raw("priority") {
        None => Priority::default(),
        Some(Value::String(s)) => Priority::parse(s).unwrap_or_else(|| {
            f.problem("priority", "must be low, normal, high, critical or 1-10");
            Priority::default()
        }),
        Some(v) => match v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .and_then(Priority::new)
        {
            Some(p) => p,
            None => {
                f.problem("priority", "must be low, normal, high, critical or 1-10");
                Priority::default()
            }
        },
    };
    let mut due_at = None;
    match f.raw("metadata") {
        None => {}
        Some(Value::Object(meta)) => match meta.get("due_date").filter(|v| !v.is_null()) {
            None => {}
            Some(Value::String(s)) => match parse_due(s) {
                Some(at) => due_at = Some(at),
                None => f.problem(
                    "metadata.due_date",
                    "must be a date (YYYY-MM-DD) or an RFC 3339 date-time",
                ),
            },
            Some(_) => f.problem("metadata.due_date", "must be a string"),
        },
        Some(_) => f.problem("metadata", "must be an object"),
    }
    let plan = match f.raw("plan") {
        None => None,
        Some(v) => match Plan::from_json(v, "plan") {
            Ok(plan) => Some(plan),
            Err(issues) => {
                for i in issues {
                    f.problem(&i.field, i.issue);
                }
                None
            }
        },
    };
    let (Some(title), Some(description)) = (title, description) else {
        return Err(f.issues);
    };
    if !f.issues.is_empty() {
        return Err(f.issues);
    }
    let plan = plan.unwrap_or_else(|| planner::plan(task_type.as_deref(), &title, &description));
    let client_chosen_id = task_id.is_some();
    let task_id =
        TaskId(task_id.unwrap_or_else(|| format!("task-{}", uuid::Uuid::now_v7().simple())));
    let brief = if description.trim().is_empty() {
        title.clone()
    } else {
        description.clone()
    };
    let subtasks = plan.instantiate(&task_id, &brief, now);
    let task = Task {
        task_id,
        seq: 0,
        title,
        description,
        task_type,
        priority,
        status: TaskStatus::Planned,
        request: canonical(body),
        due_at,
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        timeout_ms: DEFAULT_TIMEOUT_MS,
        created_at: now,
        started_at: None,
        finished_at: None,
        result: None,
    };
    f.finish(Some(NewTask {
        task,
        subtasks,
        execute,
        client_chosen_id,
    }))
}

/// The end of a due date: a date means the end of that day (UTC).
fn parse_due(s: &str) -> Option<Millis> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1_000_000) as Millis);
    }
    let date = time::Date::parse(s, format_description!("[year]-[month]-[day]")).ok()?;
    let end = date.with_hms_milli(23, 59, 59, 999).ok()?.assume_utc();
    Some((end.unix_timestamp_nanos() / 1_000_000) as Millis)
}

/// JSON with object keys sorted at every level: equal bodies give equal strings.
pub fn canonical(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// A body of `POST /agents`.
pub fn registration(body: &Value) -> Result<AgentSpec, Vec<FieldIssue>> {
    let mut f = Fields::new(
        body,
        &["name", "type", "capabilities", "domains", "max_concurrency"],
    );
    let name = f.string("name", true, 128);
    let kind = f
        .string("type", false, 64)
        .unwrap_or_else(|| "remote".into());
    let capabilities = f.names("capabilities", true, true);
    let domains = f.names("domains", false, false);
    let max_concurrency = f
        .integer("max_concurrency", 1..=MAX_CONCURRENCY)
        .unwrap_or(4) as u32;
    let spec = name.map(|name| AgentSpec {
        name,
        kind,
        capabilities,
        domains,
        max_concurrency,
    });
    f.finish(spec)
}

/// A body of `POST /agents/{id}/results`: `{results: [{assignment_id, outputs} |
/// {assignment_id, error, retryable?}]}`.
pub fn results(
    body: &Value,
    max: usize,
) -> Result<Vec<(AssignmentId, AttemptOutcome)>, Vec<FieldIssue>> {
    let mut f = Fields::new(body, &["results", "held"]);
    let list = match f.raw("results") {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= max => list.as_slice(),
        Some(_) => {
            f.problem("results", format!("must be a list of 1 to {max} results"));
            &[]
        }
        None => {
            f.problem("results", "required");
            &[]
        }
    };
    let mut items = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let mut g = Fields::new(item, &["assignment_id", "outputs", "error", "retryable"]);
        let id = g.string("assignment_id", true, 256);
        let outputs = g.raw("outputs").cloned();
        let error = g.string("error", false, 16_384);
        let retryable = g.boolean("retryable").unwrap_or(true);
        let outcome = match (outputs, error) {
            (Some(o), None) => Some(Ok(o)),
            (None, Some(e)) => Some(Err((e, retryable))),
            _ => {
                g.problem("outputs", "give either outputs or error");
                None
            }
        };
        for issue in g.issues {
            f.problem(&format!("results[{i}].{}", issue.field), issue.issue);
        }
        if let (Some(id), Some(outcome)) = (id, outcome) {
            items.push((AssignmentId(id), outcome));
        }
    }
    f.finish(Some(items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_good_submission_is_planned() {
        let new = submission(
            &json!({"task_id": "t-1", "title": "Blog", "description": "AI ethics",
                    "task_type": "create_blog_post", "priority": "high",
                    "metadata": {"due_date": "2025-11-22"}}),
            false,
            0,
        )
        .unwrap();
        assert_eq!(new.subtasks.len(), 5);
        assert_eq!(new.task.priority, Priority::HIGH);
        assert!(new.client_chosen_id);
        assert_eq!(
            new.task.due_at,
            Some(parse_due("2025-11-22T23:59:59.999Z").unwrap())
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let issues = submission(
            &json!({"task_id": "bad id", "title": "", "priority": 11, "metadata": {"due_date": "soon"},
                    "plan": {"subtasks": [{"id": "a"}]}, "bogus": 1}),
            false,
            0,
        )
        .unwrap_err();
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        for f in [
            "task_id",
            "title",
            "description",
            "priority",
            "metadata.due_date",
            "plan.subtasks[0].capability",
            "bogus",
        ] {
            assert!(fields.contains(&f), "{f} not in {fields:?}");
        }
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[{"q":1,"p":2}]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":[{"p":2,"q":1}],"y":2},"b":1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
    }
}
