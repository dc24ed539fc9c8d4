//! The optional LLM planner's pure half: the request for an OpenAI-compatible
//! `POST {base}/chat/completions`, the JSON schema its answer must follow, and the guardrails
//! that turn an answer into a plan. The HTTP call is made elsewhere.
//!
//! Invariants: [`parse_response`] never panics, whatever the bytes; a plan it returns has 1 to
//! [`MAX_LLM_STEPS`] steps, ids of `[A-Za-z0-9_-]`, only offered capabilities, briefs of 1 to
//! [`MAX_BRIEF`] characters, and passes [`Plan::validate`] (so it is acyclic). Its errors are
//! one short sentence meant for users (`planner.reason`): any text they quote from the answer
//! is escaped and cut to about 100 characters, so a huge or hostile answer cannot flood them.

use crate::ids::MAX_ID_LEN;
use crate::plan::{Plan, PlanStep};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashSet};

/// The most subtasks an LLM plan may have.
pub const MAX_LLM_STEPS: usize = 50;
/// The longest subtask brief, in characters.
pub const MAX_BRIEF: usize = 2_000;
/// The most items in each of `objectives`, `constraints` and `acceptance_criteria`.
pub const MAX_LIST_ITEMS: usize = 20;
/// The longest item of those lists, in characters.
pub const MAX_ITEM_CHARS: usize = 500;
/// The most characters of the answer quoted in an error.
const ECHO_MAX: usize = 100;

/// A plan proposed by the LLM and accepted by [`parse_response`], with its understanding of
/// the task.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmPlan {
    /// One step per subtask, in the answer's order; each input is `{"brief": <brief>}`.
    pub plan: Plan,
    pub objectives: Vec<String>,
    pub constraints: Vec<String>,
    pub acceptance_criteria: Vec<String>,
}

/// The answer schema; with `capabilities`, `capability` is restricted to them.
fn schema(capabilities: Option<&[String]>) -> Value {
    let list = |what: &str| {
        json!({
            "type": "array",
            "description": what,
            "maxItems": MAX_LIST_ITEMS,
            "items": {"type": "string", "maxLength": MAX_ITEM_CHARS},
        })
    };
    let mut capability = json!({
        "type": "string",
        "description": "The capability this subtask needs: one of the offered ones.",
    });
    if let Some(caps) = capabilities.filter(|c| !c.is_empty()) {
        capability["enum"] = json!(caps);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Baton LLM plan",
        "type": "object",
        "required": ["objectives", "constraints", "acceptance_criteria", "subtasks"],
        "properties": {
            "objectives": list("What the task must achieve."),
            "constraints": list("Limits the work must respect."),
            "acceptance_criteria": list("Checks that tell the task is done."),
            "subtasks": {
                "type": "array",
                "description": "A MECE decomposition of the task: a DAG of subtasks.",
                "minItems": 1,
                "maxItems": MAX_LLM_STEPS,
                "items": {
                    "type": "object",
                    "required": ["id", "capability", "depends_on", "brief"],
                    "properties": {
                        "id": {
                            "type": "string",
                            "description": "Unique within the plan.",
                            "pattern": format!("^[A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}$"),
                        },
                        "capability": capability,
                        "depends_on": {
                            "type": "array",
                            "description": "Ids of the subtasks that must finish first; no cycles.",
                            "items": {"type": "string"},
                            "uniqueItems": true,
                        },
                        "brief": {
                            "type": "string",
                            "description": "Self-contained instructions for the agent.",
                            "minLength": 1,
                            "maxLength": MAX_BRIEF,
                        },
                    },
                },
            },
        },
    })
}

/// The JSON schema (draft 2020-12) of the answer the LLM must give, as published.
///
/// [`parse_response`] is slightly more lenient than the schema: a missing or `null` list
/// (`objectives`, `constraints`, `acceptance_criteria`, a subtask's `depends_on`) counts as
/// empty, a repeated dependency counts once, and unknown keys are ignored.
pub fn answer_schema() -> Value {
    schema(None)
}

/// The system message: the task of the model, the schema and the rules.
fn system_prompt(capabilities: &[String]) -> String {
    let schema = serde_json::to_string_pretty(&schema(Some(capabilities)))
        .expect("a Value always serializes");
    format!(
        "You are the planner of Baton, an orchestrator that hands subtasks to specialist \
         agents. Decompose the task in the user message (a JSON object with title, \
         description, metadata and the offered capabilities) into subtasks.\n\
         \n\
         Answer with exactly one JSON object and nothing else: no prose, no Markdown, no code \
         fence. It must match this JSON Schema:\n\
         {schema}\n\
         \n\
         Rules:\n\
         - subtasks: 1 to {MAX_LLM_STEPS} subtasks, mutually exclusive and collectively \
         exhaustive (MECE): together they do the whole task, and no two do the same work.\n\
         - id: unique, 1 to {MAX_ID_LEN} characters from A-Z, a-z, 0-9, _ and -.\n\
         - capability: exactly one of the capabilities in the user message; never invent one.\n\
         - depends_on: ids of other subtasks of this plan that must finish first; the \
         dependencies must be acyclic (no subtask depends on itself, directly or not). \
         Subtasks that do not depend on each other run in parallel.\n\
         - brief: what the subtask's agent must do, self-contained, not empty, at most \
         {MAX_BRIEF} characters.\n\
         - objectives, constraints, acceptance_criteria: the task's goals, its limits, and the \
         checks that tell it is done; at most {MAX_LIST_ITEMS} items each, each at most \
         {MAX_ITEM_CHARS} characters."
    )
}

/// The chat-completions request body: `model`, temperature 0, `response_format`
/// `{"type": "json_object"}`, a system message stating the answer schema (its `capability`
/// restricted to `capabilities`) and the rules (ids of `[A-Za-z0-9_-]`, 1 to
/// [`MAX_LLM_STEPS`] subtasks, acyclic `depends_on`, offered capabilities only, briefs of at
/// most [`MAX_BRIEF`] characters, a MECE decomposition, no prose outside the JSON), and a user
/// message holding the JSON object `{title, description, metadata, capabilities}`.
pub fn request_body(
    model: &str,
    title: &str,
    description: &str,
    metadata: &Value,
    capabilities: &[String],
) -> Value {
    let task = json!({
        "title": title,
        "description": description,
        "metadata": metadata,
        "capabilities": capabilities,
    });
    json!({
        "model": model,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": system_prompt(capabilities)},
            {"role": "user", "content": task.to_string()},
        ],
    })
}

/// `text` as a quoted, escaped excerpt of at most about [`ECHO_MAX`] characters, safe to show.
fn echo(text: &str) -> String {
    let mut shown = String::new();
    for c in text.chars() {
        let escaped = match c {
            '\'' => c.to_string(),
            _ => c.escape_debug().to_string(),
        };
        if shown.chars().count() + escaped.chars().count() > ECHO_MAX {
            shown.push('…');
            break;
        }
        shown.push_str(&escaped);
    }
    format!("\"{shown}\"")
}

/// `text` cut to about [`ECHO_MAX`] characters (for our own messages, which need no escaping).
fn cap(text: &str) -> String {
    match text.char_indices().nth(ECHO_MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// What kind of JSON value `v` is, for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The answer inside a Markdown code fence (```` ```json … ``` ````), or the trimmed content.
fn unfence(content: &str) -> &str {
    let trimmed = content.trim();
    match trimmed.strip_prefix("```") {
        Some(rest) => {
            let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
            rest.strip_suffix("```").unwrap_or(rest).trim()
        }
        None => trimmed,
    }
}

/// An optional list of short strings of the answer (`objectives` …); missing or null is empty.
fn text_list(answer: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let items = match answer.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "{key} must be a list of strings, not {}",
                kind(other)
            ))
        }
    };
    if items.len() > MAX_LIST_ITEMS {
        return Err(format!(
            "{key} has {} items (at most {MAX_LIST_ITEMS})",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => {
                let n = s.chars().count();
                if n > MAX_ITEM_CHARS {
                    Err(format!(
                        "{key}[{i}] is {n} characters long (at most {MAX_ITEM_CHARS})"
                    ))
                } else {
                    Ok(s.clone())
                }
            }
            other => Err(format!("{key}[{i}] must be a string, not {}", kind(other))),
        })
        .collect()
}

/// A required string field of the subtask at `at`.
fn string_field<'a>(
    subtask: &'a Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<&'a str, String> {
    match subtask.get(key) {
        Some(Value::String(s)) => Ok(s),
        None => Err(format!("{at} has no {key}")),
        Some(other) => Err(format!("{at}.{key} must be a string, not {}", kind(other))),
    }
}

/// Why `id` is not an acceptable subtask id, if it is not.
fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Some(format!("is longer than {MAX_ID_LEN} characters"));
    }
    id.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        .map(|c| format!("contains {c:?}; use letters, digits, - and _"))
}

/// The offered capabilities as a short list for an error message.
fn offered_list(offered: &BTreeSet<String>) -> String {
    if offered.is_empty() {
        return "none".into();
    }
    cap(&offered.iter().cloned().collect::<Vec<_>>().join(", "))
}

/// One subtask of the answer, checked on its own.
fn subtask(item: &Value, i: usize, offered: &BTreeSet<String>) -> Result<PlanStep, String> {
    let at = format!("subtasks[{i}]");
    let Value::Object(fields) = item else {
        return Err(format!("{at} must be an object, not {}", kind(item)));
    };
    let id = string_field(fields, &at, "id")?;
    if let Some(problem) = id_problem(id) {
        return Err(format!("{at}.id {} {problem}", echo(id)));
    }
    let capability = string_field(fields, &at, "capability")?;
    if !offered.contains(capability) {
        return Err(format!(
            "{at}.capability {} is not offered (offered: {})",
            echo(capability),
            offered_list(offered)
        ));
    }
    let mut depends_on: Vec<String> = Vec::new();
    match fields.get("depends_on") {
        None | Some(Value::Null) => {}
        Some(Value::Array(deps)) => {
            for (j, dep) in deps.iter().enumerate() {
                match dep {
                    Value::String(d) => {
                        if !depends_on.contains(d) {
                            depends_on.push(d.clone());
                        }
                    }
                    other => {
                        return Err(format!(
                            "{at}.depends_on[{j}] must be a string, not {}",
                            kind(other)
                        ))
                    }
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "{at}.depends_on must be a list of ids, not {}",
                kind(other)
            ))
        }
    }
    let brief = string_field(fields, &at, "brief")?;
    if brief.trim().is_empty() {
        return Err(format!("{at}.brief is empty"));
    }
    let n = brief.chars().count();
    if n > MAX_BRIEF {
        return Err(format!(
            "{at}.brief is {n} characters long (at most {MAX_BRIEF})"
        ));
    }
    Ok(PlanStep {
        key: id.to_owned(),
        capability: capability.to_owned(),
        depends_on,
        input: Map::from_iter([("brief".to_owned(), Value::String(brief.to_owned()))]),
        rules: None,
    })
}

/// Read the body of a chat-completions response and apply every guardrail to the answer in
/// `choices[0].message.content` (a JSON object, possibly in a ```` ```json ```` fence, of the
/// shape of [`answer_schema`]). Capabilities must be among `offered`.
///
/// `Err` is one short sentence saying what is wrong, for users; text quoted from the answer is
/// escaped and cut to about 100 characters.
pub fn parse_response(body: &[u8], offered: &BTreeSet<String>) -> Result<LlmPlan, String> {
    let response: Value =
        serde_json::from_slice(body).map_err(|_| "the LLM response is not JSON".to_owned())?;
    let choice = response.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    let content = match message.and_then(|m| m.get("content")) {
        Some(Value::String(content)) => content,
        _ => {
            if let Some(refusal) = message.and_then(|m| m.get("refusal")?.as_str()) {
                return Err(format!("the LLM refused to plan: {}", echo(refusal)));
            }
            if let Some(error) = response
                .get("error")
                .and_then(|e| e.get("message")?.as_str())
            {
                return Err(format!("the LLM API answered an error: {}", echo(error)));
            }
            return Err(
                "the LLM response is not a chat completion (no choices[0].message.content string)"
                    .into(),
            );
        }
    };
    let answer: Value = match serde_json::from_str(unfence(content)) {
        Ok(answer) => answer,
        Err(_) if choice.and_then(|c| c.get("finish_reason")?.as_str()) == Some("length") => {
            return Err(
                "the LLM answer was cut off (finish_reason \"length\") before its JSON ended"
                    .into(),
            )
        }
        Err(e) => {
            return Err(format!(
                "the LLM answer is not JSON ({})",
                cap(&e.to_string())
            ))
        }
    };
    let Value::Object(answer) = answer else {
        return Err(format!(
            "the LLM answer is not a JSON object but {}",
            kind(&answer)
        ));
    };
    let objectives = text_list(&answer, "objectives")?;
    let constraints = text_list(&answer, "constraints")?;
    let acceptance_criteria = text_list(&answer, "acceptance_criteria")?;
    let items = match answer.get("subtasks") {
        None | Some(Value::Null) => return Err("the LLM answer has no subtasks".into()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("subtasks must be a list, not {}", kind(other))),
    };
    if items.is_empty() {
        return Err("the LLM answer has 0 subtasks (at least 1)".into());
    }
    if items.len() > MAX_LLM_STEPS {
        return Err(format!(
            "{} subtasks (at most {MAX_LLM_STEPS})",
            items.len()
        ));
    }
    let steps = items
        .iter()
        .enumerate()
        .map(|(i, item)| subtask(item, i, offered))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ids = HashSet::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        if !ids.insert(step.key.as_str()) {
            return Err(format!(
                "subtasks[{i}].id {} is a duplicate",
                echo(&step.key)
            ));
        }
    }
    for (i, step) in steps.iter().enumerate() {
        for dep in &step.depends_on {
            if dep == &step.key {
                return Err(format!(
                    "dependency cycle: subtasks[{i}] ({}) depends on itself",
                    echo(dep)
                ));
            }
            if !ids.contains(dep.as_str()) {
                return Err(format!(
                    "subtasks[{i}] ({}) depends on unknown subtask {}",
                    echo(&step.key),
                    echo(dep)
                ));
            }
        }
    }
    let plan = Plan { steps };
    if let Some(cycle) = plan.find_cycle() {
        return Err(format!("dependency cycle: {}", cap(&cycle.join(" -> "))));
    }
    // Belt and braces: whatever is accepted is a valid plan (an offered capability could
    // still be malformed).
    if let Some(issue) = plan.validate("subtasks").into_iter().next() {
        return Err(format!("{}: {}", cap(&issue.field), cap(&issue.issue)));
    }
    Ok(LlmPlan {
        plan,
        objectives,
        constraints,
        acceptance_criteria,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offered() -> BTreeSet<String> {
        ["frontend", "backend", "testing", "review"]
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// A chat-completions response whose answer is `content`.
    fn completion(content: &str) -> Vec<u8> {
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })
        .to_string()
        .into_bytes()
    }

    fn answer(subtasks: Value) -> Value {
        json!({
            "objectives": ["Invoices can be exported as PDF"],
            "constraints": ["No new dependencies"],
            "acceptance_criteria": ["Regression tests pass"],
            "subtasks": subtasks,
        })
    }

    fn good() -> Value {
        answer(json!([
            {"id": "ui", "capability": "frontend", "depends_on": [], "brief": "Add the export button"},
            {"id": "api", "capability": "backend", "depends_on": [], "brief": "Render the PDF"},
            {"id": "tests", "capability": "testing", "depends_on": ["ui", "api"], "brief": "Regression tests"},
            {"id": "review", "capability": "review", "depends_on": ["tests"], "brief": "Review it all"},
        ]))
    }

    fn parse(answer: &Value) -> Result<LlmPlan, String> {
        parse_response(&completion(&answer.to_string()), &offered())
    }

    /// `parse` of `good()` with one subtask field replaced.
    fn with(i: usize, key: &str, value: Value) -> Result<LlmPlan, String> {
        let mut a = good();
        a["subtasks"][i][key] = value;
        parse(&a)
    }

    /// Whatever `parse_response` accepts is a valid plan within the limits.
    fn assert_sound(plan: &LlmPlan, offered: &BTreeSet<String>) {
        assert!(plan.plan.validate("plan.subtasks").is_empty(), "{plan:?}");
        assert!((1..=MAX_LLM_STEPS).contains(&plan.plan.steps.len()));
        for step in &plan.plan.steps {
            assert!(offered.contains(&step.capability));
            let brief = step.input["brief"].as_str().unwrap();
            assert!(!brief.trim().is_empty() && brief.chars().count() <= MAX_BRIEF);
            assert!(id_problem(&step.key).is_none());
        }
        for list in [
            &plan.objectives,
            &plan.constraints,
            &plan.acceptance_criteria,
        ] {
            assert!(list.len() <= MAX_LIST_ITEMS);
            assert!(list.iter().all(|s| s.chars().count() <= MAX_ITEM_CHARS));
        }
    }

    #[test]
    fn request_body_shape() {
        let caps = vec!["frontend".to_owned(), "backend".to_owned()];
        let body = request_body(
            "gpt-x",
            "Implement invoice PDF export",
            "Add PDF export support",
            &json!({"requester": "pm"}),
            &caps,
        );
        assert_eq!(body["model"], "gpt-x");
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[1]["role"], "user");
        let system = messages[0]["content"].as_str().unwrap();
        for needle in [
            "JSON Schema",
            "MECE",
            "A-Z, a-z, 0-9, _ and -",
            "1 to 50 subtasks",
            "acyclic",
            "at most 2000 characters",
            "no prose",
            "\"acceptance_criteria\"",
            "\"depends_on\"",
        ] {
            assert!(system.contains(needle), "system message lacks {needle:?}");
        }
        // The schema in the system message restricts capability to the offered ones.
        let schema_start = system.find('{').unwrap();
        let schema_end = system.rfind("}\n\nRules").unwrap() + 1;
        let schema: Value = serde_json::from_str(&system[schema_start..schema_end]).unwrap();
        assert_eq!(
            schema["properties"]["subtasks"]["items"]["properties"]["capability"]["enum"],
            json!(["frontend", "backend"])
        );
        let user: Value = serde_json::from_str(messages[1]["content"].as_str().unwrap()).unwrap();
        assert_eq!(
            user,
            json!({"title": "Implement invoice PDF export", "description": "Add PDF export support",
                   "metadata": {"requester": "pm"}, "capabilities": ["frontend", "backend"]})
        );
    }

    #[test]
    fn answer_schema_is_published_without_capabilities() {
        let schema = answer_schema();
        assert_eq!(schema["type"], "object");
        let subtasks = &schema["properties"]["subtasks"];
        assert_eq!(subtasks["maxItems"], MAX_LLM_STEPS);
        assert_eq!(subtasks["minItems"], 1);
        let item = &subtasks["items"];
        assert_eq!(
            item["required"],
            json!(["id", "capability", "depends_on", "brief"])
        );
        assert_eq!(item["properties"]["brief"]["maxLength"], MAX_BRIEF);
        assert_eq!(
            item["properties"]["id"]["pattern"],
            "^[A-Za-z0-9_-]{1,128}$"
        );
        assert!(item["properties"]["capability"].get("enum").is_none());
        for list in ["objectives", "constraints", "acceptance_criteria"] {
            assert_eq!(schema["properties"][list]["maxItems"], MAX_LIST_ITEMS);
            assert_eq!(
                schema["properties"][list]["items"]["maxLength"],
                MAX_ITEM_CHARS
            );
        }
    }

    #[test]
    fn a_good_answer_is_a_plan() {
        let planned = parse(&good()).unwrap();
        assert_sound(&planned, &offered());
        assert_eq!(planned.objectives, ["Invoices can be exported as PDF"]);
        assert_eq!(planned.constraints, ["No new dependencies"]);
        assert_eq!(planned.acceptance_criteria, ["Regression tests pass"]);
        let steps = &planned.plan.steps;
        assert_eq!(steps.len(), 4);
        assert_eq!(steps[2].key, "tests");
        assert_eq!(steps[2].capability, "testing");
        assert_eq!(steps[2].depends_on, ["ui", "api"]);
        assert_eq!(
            Value::Object(steps[0].input.clone()),
            json!({"brief": "Add the export button"})
        );
    }

    #[test]
    fn lenient_where_harmless() {
        // Missing lists are empty, unknown keys are ignored, a repeated dependency counts once.
        let a = json!({"subtasks": [
            {"id": "a", "capability": "backend", "brief": "x", "priority": 3},
            {"id": "b", "capability": "review", "depends_on": ["a", "a"], "brief": "y"},
        ], "notes": "whatever", "objectives": null});
        let planned = parse(&a).unwrap();
        assert!(planned.objectives.is_empty() && planned.acceptance_criteria.is_empty());
        assert!(planned.plan.steps[0].depends_on.is_empty());
        assert_eq!(planned.plan.steps[1].depends_on, ["a"]);
        assert_sound(&planned, &offered());
    }

    #[test]
    fn fenced_content_is_unwrapped() {
        let text = good().to_string();
        for fenced in [
            format!("```json\n{text}\n```"),
            format!("```JSON\n{text}\n```\n"),
            format!("  ```\n{text}\n```"),
            format!("```json {text}```"),
        ] {
            let planned = parse_response(&completion(&fenced), &offered()).unwrap();
            assert_eq!(planned, parse(&good()).unwrap());
        }
    }

    #[test]
    fn malformed_responses() {
        let offered = offered();
        assert_eq!(
            parse_response(b"<html>502 Bad Gateway</html>", &offered).unwrap_err(),
            "the LLM response is not JSON"
        );
        let not_chat =
            "the LLM response is not a chat completion (no choices[0].message.content string)";
        for body in [
            json!({}),
            json!({"choices": []}),
            json!({"choices": [{"message": {"content": null}}]}),
            json!({"choices": [{"message": {"content": {"subtasks": []}}}]}),
            json!([1, 2]),
        ] {
            assert_eq!(
                parse_response(body.to_string().as_bytes(), &offered).unwrap_err(),
                not_chat
            );
        }
        let refused = json!({"choices": [{"message": {"content": null, "refusal": "I can't"}}]});
        assert_eq!(
            parse_response(refused.to_string().as_bytes(), &offered).unwrap_err(),
            "the LLM refused to plan: \"I can't\""
        );
        let error = json!({"error": {"message": "Invalid API key", "type": "auth"}});
        assert_eq!(
            parse_response(error.to_string().as_bytes(), &offered).unwrap_err(),
            "the LLM API answered an error: \"Invalid API key\""
        );
        let bad = parse_response(&completion("{\"subtasks\": [}"), &offered).unwrap_err();
        assert!(bad.starts_with("the LLM answer is not JSON ("), "{bad}");
        let prose = parse_response(&completion("Here is your plan: {}"), &offered).unwrap_err();
        assert!(prose.starts_with("the LLM answer is not JSON ("), "{prose}");
        // A truncated answer says so.
        let cut = json!({"choices": [{"finish_reason": "length",
                                      "message": {"content": "{\"subtasks\": [{\"id\""}}]});
        assert!(parse_response(cut.to_string().as_bytes(), &offered)
            .unwrap_err()
            .contains("cut off"));
    }

    #[test]
    fn content_must_be_an_object() {
        for (content, kind) in [
            ("[1, 2]", "a list"),
            ("\"plan\"", "a string"),
            ("42", "a number"),
            ("null", "null"),
        ] {
            assert_eq!(
                parse_response(&completion(content), &offered()).unwrap_err(),
                format!("the LLM answer is not a JSON object but {kind}")
            );
        }
    }

    #[test]
    fn cycles_are_refused() {
        let mut a = good();
        a["subtasks"][0]["depends_on"] = json!(["review"]);
        assert_eq!(
            parse(&a).unwrap_err(),
            // As `Plan::find_cycle` reports it: each step runs before the next.
            "dependency cycle: tests -> review -> ui -> tests"
        );
        assert_eq!(
            with(1, "depends_on", json!(["api"])).unwrap_err(),
            "dependency cycle: subtasks[1] (\"api\") depends on itself"
        );
    }

    #[test]
    fn at_most_fifty_subtasks() {
        let many: Vec<Value> = (0..500)
            .map(|i| json!({"id": format!("s{i}"), "capability": "backend", "depends_on": [], "brief": "b"}))
            .collect();
        assert_eq!(
            parse(&answer(json!(many))).unwrap_err(),
            "500 subtasks (at most 50)"
        );
        assert_sound(&parse(&answer(json!(many[..50]))).unwrap(), &offered());
        assert_eq!(
            parse(&answer(json!([]))).unwrap_err(),
            "the LLM answer has 0 subtasks (at least 1)"
        );
    }

    #[test]
    fn unknown_capability_is_named() {
        assert_eq!(
            with(0, "capability", json!("design")).unwrap_err(),
            "subtasks[0].capability \"design\" is not offered (offered: backend, frontend, review, testing)"
        );
        assert_eq!(
            parse_response(&completion(&good().to_string()), &BTreeSet::new()).unwrap_err(),
            "subtasks[0].capability \"frontend\" is not offered (offered: none)"
        );
    }

    #[test]
    fn missing_fields_and_wrong_types() {
        let cases = [
            (
                with(0, "id", json!(7)),
                "subtasks[0].id must be a string, not a number",
            ),
            (
                with(1, "capability", Value::Null),
                "subtasks[1].capability must be a string, not null",
            ),
            (
                with(2, "depends_on", json!("ui")),
                "subtasks[2].depends_on must be a list of ids, not a string",
            ),
            (
                with(2, "depends_on", json!(["ui", 1])),
                "subtasks[2].depends_on[1] must be a string, not a number",
            ),
            (
                with(3, "brief", json!(["x"])),
                "subtasks[3].brief must be a string, not a list",
            ),
            (with(3, "brief", json!("  ")), "subtasks[3].brief is empty"),
            (
                parse(&answer(json!([1]))),
                "subtasks[0] must be an object, not a number",
            ),
            (
                parse(&answer(json!({"a": 1}))),
                "subtasks must be a list, not an object",
            ),
            (
                parse(&json!({"objectives": []})),
                "the LLM answer has no subtasks",
            ),
            (
                parse(&json!({"objectives": "ship", "subtasks": []})),
                "objectives must be a list of strings, not a string",
            ),
            (
                parse(&json!({"constraints": [true], "subtasks": []})),
                "constraints[0] must be a string, not a boolean",
            ),
            (
                parse(&json!({"acceptance_criteria": vec!["ok"; 21], "subtasks": []})),
                "acceptance_criteria has 21 items (at most 20)",
            ),
            (
                parse(&json!({"objectives": ["x".repeat(501)], "subtasks": []})),
                "objectives[0] is 501 characters long (at most 500)",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.unwrap_err(), want);
        }
        for (i, key) in [(0, "id"), (1, "capability"), (3, "brief")] {
            let mut a = good();
            a["subtasks"][i].as_object_mut().unwrap().remove(key);
            assert_eq!(
                parse(&a).unwrap_err(),
                format!("subtasks[{i}] has no {key}")
            );
        }
        // 500 characters is still fine.
        assert!(
            parse(&json!({"objectives": ["é".repeat(500)], "subtasks": good()["subtasks"]}))
                .is_ok()
        );
    }

    #[test]
    fn ids_must_be_valid_and_unique() {
        assert_eq!(
            with(3, "id", json!("api")).unwrap_err(),
            "subtasks[3].id \"api\" is a duplicate"
        );
        assert_eq!(
            with(0, "id", json!("a b")).unwrap_err(),
            "subtasks[0].id \"a b\" contains ' '; use letters, digits, - and _"
        );
        assert_eq!(
            with(0, "id", json!("x:y")).unwrap_err(),
            "subtasks[0].id \"x:y\" contains ':'; use letters, digits, - and _"
        );
        assert_eq!(
            with(0, "id", json!("")).unwrap_err(),
            "subtasks[0].id \"\" is empty"
        );
        assert!(with(0, "id", json!("x".repeat(129)))
            .unwrap_err()
            .ends_with("is longer than 128 characters"));
        assert_eq!(
            with(2, "depends_on", json!(["ui", "zz"])).unwrap_err(),
            "subtasks[2] (\"tests\") depends on unknown subtask \"zz\""
        );
    }

    #[test]
    fn oversize_brief() {
        assert_eq!(
            with(1, "brief", json!("b".repeat(MAX_BRIEF + 1))).unwrap_err(),
            "subtasks[1].brief is 2001 characters long (at most 2000)"
        );
        // Characters, not bytes.
        assert!(with(1, "brief", json!("é".repeat(MAX_BRIEF))).is_ok());
    }

    #[test]
    fn echoed_text_is_capped_and_escaped() {
        let huge = "A".repeat(100_000);
        let reason = with(0, "capability", json!(huge)).unwrap_err();
        assert!(reason.chars().count() < 250, "{reason}");
        assert!(
            reason.contains(&format!("\"{}…\"", "A".repeat(100))),
            "{reason}"
        );

        let hostile = "\u{1b}[31mrm -rf /\u{202e}\n\"".repeat(50);
        for reason in [
            with(0, "capability", json!(hostile)).unwrap_err(),
            with(0, "id", json!(hostile)).unwrap_err(),
            with(2, "depends_on", json!(["ui", hostile])).unwrap_err(),
            parse_response(
                json!({"error": {"message": hostile}})
                    .to_string()
                    .as_bytes(),
                &offered(),
            )
            .unwrap_err(),
        ] {
            assert!(reason.chars().count() < 250, "{reason}");
            assert!(
                !reason.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{reason:?}"
            );
        }
        // Long cycles are cut too.
        let chain: Vec<Value> = (0..50)
            .map(|i| {
                json!({"id": format!("{i:0>120}"), "capability": "backend",
                       "depends_on": [format!("{:0>120}", (i + 1) % 50)], "brief": "b"})
            })
            .collect();
        let reason = parse(&answer(json!(chain))).unwrap_err();
        assert!(reason.starts_with("dependency cycle: "));
        assert!(reason.chars().count() < 150, "{reason}");
        assert_eq!(echo("ab"), "\"ab\"");
        assert_eq!(cap("ab"), "ab");
    }

    /// Arbitrary JSON values, nested a few levels.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("frontend"),
                Just("backend"),
                Just("a"),
                Just("b"),
                Just("subtasks")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("id".to_owned()),
                        Just("capability".to_owned()),
                        Just("depends_on".to_owned()),
                        Just("brief".to_owned()),
                        Just("subtasks".to_owned()),
                        Just("objectives".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Answers close to valid ones: each field is occasionally broken (a bad or repeated id,
    /// an unknown capability, an empty or oversize brief, a forward, self or unknown
    /// dependency), so that acceptances and every kind of refusal occur.
    fn near_answer() -> impl Strategy<Value = Value> {
        let dep = (0usize..12, 0usize..8);
        let subtask = (
            0usize..24,
            0usize..16,
            proptest::collection::vec(dep, 0..3),
            0usize..24,
        );
        (proptest::collection::vec(subtask, 0..10), any::<bool>()).prop_map(|(subtasks, fenced)| {
            let subtasks: Vec<Value> = subtasks
                .iter()
                .enumerate()
                .map(|(i, (id, cap, deps, brief))| {
                    let id = match id {
                        0 => "bad id".to_owned(),
                        1 => String::new(),
                        2 => "s0".to_owned(),
                        _ => format!("s{i}"),
                    };
                    let cap = match cap {
                        0 => "nope",
                        c => ["frontend", "backend", "review"][c % 3],
                    };
                    let deps: Vec<String> = deps
                        .iter()
                        .filter_map(|&(kind, to)| match kind {
                            0 => Some("zz".to_owned()),
                            1 | 2 => Some(format!("s{to}")),
                            _ => (i > 0).then(|| format!("s{}", to % i)),
                        })
                        .collect();
                    let brief = match brief {
                        0 => String::new(),
                        1 => "x".repeat(MAX_BRIEF + 1),
                        _ => format!("do {i}"),
                    };
                    json!({"id": id, "capability": cap, "depends_on": deps, "brief": brief})
                })
                .collect();
            let a = json!({"objectives": ["o"], "subtasks": subtasks});
            if fenced {
                Value::String(format!("```json\n{a}\n```"))
            } else {
                a
            }
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_response(&body, &offered());
            let text = String::from_utf8_lossy(&body);
            let _ = parse_response(&completion(&text), &offered());
        }

        #[test]
        fn accepted_answers_are_sound(content in prop_oneof![any_json(), near_answer(), near_answer()]) {
            let offered = offered();
            let content = match content {
                Value::String(s) => s,
                other => other.to_string(),
            };
            match parse_response(&completion(&content), &offered) {
                Ok(planned) => assert_sound(&planned, &offered),
                Err(reason) => prop_assert!(!reason.is_empty() && reason.chars().count() < 400, "{}", reason),
            }
        }

        /// A well-formed answer (unique ids, backward dependencies, offered capabilities) is
        /// always accepted, step for step.
        #[test]
        fn well_formed_answers_are_accepted(
            n in 1usize..=MAX_LLM_STEPS,
            edges in proptest::collection::vec((0usize..MAX_LLM_STEPS, 0usize..MAX_LLM_STEPS), 0..80),
            caps in proptest::collection::vec(0usize..4, MAX_LLM_STEPS),
        ) {
            let offered = offered();
            let names: Vec<&String> = offered.iter().collect();
            let mut deps: Vec<Vec<String>> = vec![Vec::new(); n];
            for (a, b) in edges {
                let (a, b) = (a % n, b % n);
                if a > b && !deps[a].contains(&format!("s-{b}")) {
                    deps[a].push(format!("s-{b}"));
                }
            }
            let subtasks: Vec<Value> = (0..n)
                .map(|i| json!({"id": format!("s-{i}"), "capability": names[caps[i]],
                                "depends_on": deps[i], "brief": format!("do {i}")}))
                .collect();
            let planned = parse(&answer(json!(subtasks))).unwrap();
            assert_sound(&planned, &offered);
            prop_assert_eq!(planned.plan.steps.len(), n);
            for (i, step) in planned.plan.steps.iter().enumerate() {
                prop_assert_eq!(&step.depends_on, &deps[i]);
                prop_assert_eq!(&step.capability, names[caps[i]]);
            }
        }
    }
}
