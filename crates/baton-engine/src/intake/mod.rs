//! The one intake of every transport: a request arrives as JSON bytes (HTTP today; a managed
//! child's stdio, NATS, A2A and MCP later), is read into its `baton-api` type (`json.rs`), and
//! its rules turn it into what the engine takes (a planned [`NewTask`], an [`AgentSpec`], a
//! lease request, ...), listing every problem at once.
//!
//! Invariants:
//! - A transport never checks fields itself: it calls [`accept`] with the request's rule
//!   function from this module, and answers a [`Rejection`] as its protocol says (HTTP: 400).
//! - What is accepted is exactly what the wire type deserializes (`deny_unknown_fields`) and
//!   the rules below allow; nothing is sent to the engine loop before all of it passed.
//! - The idempotency form of a submission ([`canonical`]) is computed from the typed request,
//!   so two bodies that mean the same request compare equal.

mod json;
pub mod planning;

use baton_api as api;
use baton_core::ids::check_name;
use baton_core::plan::Plan;
use baton_core::{
    AgentId, AssignmentId, Budget, ExhaustedPolicy, Millis, Phase, Priority, ResolveAction,
    SubtaskId, TaskContext, TaskId, Usage,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

pub use json::{Issues, Rejection};
pub use planning::{Catalog, Published};

use crate::handle::{AgentSpec, AttemptOutcome, Gates, Resolve};

const MAX_TITLE: usize = 500;
const MAX_DESCRIPTION: usize = 20_000;
const MAX_TASK_TYPE: usize = 128;
const MAX_AGENT_NAME: usize = 128;
const MAX_AGENT_KIND: usize = 64;
const MAX_CONCURRENCY: u32 = 1024;
const MAX_CAPABILITIES: usize = 64;
const MAX_LEASE_BATCH: u32 = 1024;
const MAX_LEASE_WAIT_MS: u64 = 3_600_000;
const MAX_HELD: usize = 10_000;
const MAX_MESSAGE: usize = 4096;
const MAX_ERROR: usize = 16_384;
const MAX_ASSIGNMENT_ID: usize = 256;
/// Most tasks one batch may carry.
const MAX_BATCH: usize = 1000;
/// Most results one results call may carry.
const MAX_RESULTS: usize = 4096;

/// A task the intake accepted: validated and planned, waiting for the engine to give it a
/// sequence number (and an id, when the client chose none) and create its subtasks.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    /// The client's id (the idempotency key); `None` lets the engine make one.
    pub task_id: Option<TaskId>,
    pub title: String,
    pub description: String,
    pub task_type: Option<String>,
    pub priority: Priority,
    /// `metadata.due_date`, when given.
    pub due_at: Option<Millis>,
    /// The request in canonical form: equal requests are equal strings.
    pub request: String,
    pub plan: Plan,
    /// Params, metadata and how the plan was made.
    pub context: TaskContext,
    /// Start right away (`POST /tasks`), or only plan (`POST /orchestrate`).
    pub execute: bool,
}

/// What a lease call asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAsk {
    pub max: u32,
    pub wait_ms: u64,
    pub held: Option<Vec<AssignmentId>>,
}

/// Read `bytes` as a `T` and apply `rules` to it: the accepted value, or every problem.
/// `rules` reports each problem it finds to the [`Issues`] (and may return `None` then).
pub fn accept<T: DeserializeOwned + Serialize, O>(
    bytes: &[u8],
    rules: impl FnOnce(T, &mut Issues) -> Option<O>,
) -> Result<O, Rejection> {
    let (value, mut issues) = json::read::<T>(bytes)?;
    let out = value.and_then(|v| rules(v, &mut issues));
    match out {
        Some(o) if issues.is_empty() => Ok(o),
        _ => {
            if issues.is_empty() {
                issues.add("body", "invalid request");
            }
            Err(Rejection::Invalid(issues.into_vec()))
        }
    }
}

/// `POST /orchestrate` (`execute: false`) and `POST /tasks` (`execute: true`): the client's
/// plan, else the workflow `task_type` names in `catalog`, else the rule-based plan.
pub fn submission(
    req: api::SubmitTask,
    execute: bool,
    catalog: &Catalog,
    issues: &mut Issues,
) -> Option<NewTask> {
    let request = canonical(&serde_json::to_value(&req).unwrap_or(Value::Null));
    let api::SubmitTask {
        task_id,
        title,
        description,
        priority,
        task_type,
        metadata,
        payload: _,
        plan,
        params,
        budget: limits,
        on_exhausted,
    } = req;
    let on_exhausted = policy(issues, "on_exhausted", on_exhausted);
    let limits = limits.and_then(|b| budget(issues, b));
    let common = common_fields(issues, task_id, &title, priority, &metadata);
    text(issues, "description", &description, MAX_DESCRIPTION);
    if let Some(t) = &task_type {
        if t.chars().count() > MAX_TASK_TYPE {
            issues.add(
                "task_type",
                format!("must be at most {MAX_TASK_TYPE} characters"),
            );
        } else {
            name(issues, "task_type", t, true);
        }
    }
    let planned = match plan {
        Some(p) => planning::client_plan_with(p, params, issues),
        None => planning::plan_for(
            task_type.as_deref(),
            params,
            &title,
            &description,
            catalog,
            issues,
        ),
    };
    let (task_id, priority, due_at) = common?;
    let (plan, context) = planned?;
    if !issues.is_empty() {
        return None;
    }
    Some(NewTask {
        task_id,
        title,
        description,
        task_type,
        priority,
        due_at,
        request,
        plan,
        context: TaskContext {
            metadata,
            on_exhausted,
            budget: limits,
            ..context
        },
        execute,
    })
}

/// `POST /workflows/{id}/execute`: a running task of the `published` version.
pub fn workflow_run(
    req: api::ExecuteWorkflow,
    published: &Published,
    issues: &mut Issues,
) -> Option<NewTask> {
    let mut form = serde_json::to_value(&req).unwrap_or(Value::Null);
    // The same body for the same workflow is the same request, whichever version is the
    // latest by the time it is sent again.
    if let Value::Object(m) = &mut form {
        m.insert(
            "workflow".into(),
            Value::String(published.workflow.name.clone()),
        );
    }
    let request = canonical(&form);
    let wf = &published.workflow;
    let title = req.title.unwrap_or_else(|| wf.name.clone());
    let description = req
        .description
        .or_else(|| wf.description.clone())
        .unwrap_or_default();
    let common = common_fields(issues, req.task_id, &title, req.priority, &req.metadata);
    if description.chars().count() > MAX_DESCRIPTION {
        issues.add(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        );
    }
    let planned = planning::instantiate(published, req.params, issues);
    let (task_id, priority, due_at) = common?;
    let (plan, context) = planned?;
    if !issues.is_empty() {
        return None;
    }
    Some(NewTask {
        task_id,
        title,
        description,
        task_type: Some(wf.name.clone()),
        priority,
        due_at,
        request,
        plan,
        context: TaskContext {
            metadata: req.metadata,
            ..context
        },
        execute: true,
    })
}

/// The fields every submission shares: the id, title, priority and the due date in the
/// metadata.
fn common_fields(
    issues: &mut Issues,
    task_id: Option<String>,
    title: &str,
    priority: Option<api::PriorityInput>,
    metadata: &Option<Value>,
) -> Option<(Option<TaskId>, Priority, Option<Millis>)> {
    let before = issues.len();
    if let Some(id) = &task_id {
        name(issues, "task_id", id, false);
    }
    text(issues, "title", title, MAX_TITLE);
    let priority = match priority {
        None => Priority::default(),
        Some(p) => {
            let parsed = match &p {
                api::PriorityInput::Name(s) => Priority::parse(s),
                api::PriorityInput::Number(n) => Priority::new(*n),
            };
            parsed.unwrap_or_else(|| {
                issues.add("priority", "must be low, normal, high, critical or 1-10");
                Priority::default()
            })
        }
    };
    let due_at = match metadata {
        None | Some(Value::Null) => None,
        Some(Value::Object(meta)) => match meta.get("due_date") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => parse_due(s).or_else(|| {
                issues.add(
                    "metadata.due_date",
                    "must be a date (YYYY-MM-DD) or an RFC 3339 date-time",
                );
                None
            }),
            Some(_) => {
                issues.add("metadata.due_date", "must be a string");
                None
            }
        },
        Some(_) => {
            issues.add("metadata", "must be an object");
            None
        }
    };
    (issues.len() == before).then_some((task_id.map(TaskId), priority, due_at))
}

/// `POST /tasks/batch`: every task checked (problems under `tasks[i]`), nothing accepted
/// unless all are.
pub fn batch(
    req: api::SubmitBatch,
    catalog: &Catalog,
    issues: &mut Issues,
) -> Option<Vec<NewTask>> {
    let execute = req.execute.unwrap_or(true);
    if req.tasks.is_empty() || req.tasks.len() > MAX_BATCH {
        issues.add("tasks", format!("must be a list of 1 to {MAX_BATCH} tasks"));
        return None;
    }
    let mut out = Vec::with_capacity(req.tasks.len());
    for (i, task) in req.tasks.into_iter().enumerate() {
        let mut own = Issues::default();
        match submission(task, execute, catalog, &mut own) {
            Some(t) if own.is_empty() => out.push(t),
            _ => issues.extend_under(&format!("tasks[{i}]"), own),
        }
    }
    issues.is_empty().then_some(out)
}

/// `POST /execute/{task_id}`.
pub fn execute(req: api::ExecuteRequest, issues: &mut Issues) -> Option<Gates> {
    let manual = match req.execution_mode.as_deref() {
        None | Some("auto") => false,
        Some("manual") => true,
        Some(_) => {
            issues.add("execution_mode", "must be auto or manual");
            false
        }
    };
    let checkpoints = req.checkpoints.unwrap_or_default();
    for (i, id) in checkpoints.iter().enumerate() {
        name(issues, &format!("checkpoints[{i}]"), id, false);
    }
    issues.is_empty().then(|| Gates {
        manual,
        checkpoints: checkpoints.into_iter().map(SubtaskId).collect(),
    })
}

/// `POST /tasks/{id}/approve` and `/reject` (`reject` needs a note: why).
pub fn gate_decision(
    req: api::GateDecision,
    reject: bool,
    issues: &mut Issues,
) -> Option<(Option<Vec<SubtaskId>>, Option<String>)> {
    if let Some(ids) = &req.subtask_ids {
        if ids.is_empty() {
            issues.add(
                "subtask_ids",
                "name at least one subtask, or leave it out for all",
            );
        }
        for (i, id) in ids.iter().enumerate() {
            name(issues, &format!("subtask_ids[{i}]"), id, false);
        }
    }
    match &req.note {
        Some(n) if n.chars().count() > MAX_MESSAGE => {
            issues.add("note", format!("must be at most {MAX_MESSAGE} characters"));
        }
        None if reject => issues.add("note", "say why the step is rejected"),
        _ => {}
    }
    let ids = req
        .subtask_ids
        .map(|ids| ids.into_iter().map(SubtaskId).collect());
    issues.is_empty().then_some((ids, req.note))
}

/// `POST /tasks/{id}/subtasks/{sid}/assign`.
pub fn manual_assign(req: api::ManualAssign, issues: &mut Issues) -> Option<AgentId> {
    name(issues, "agent_id", &req.agent_id, false);
    issues.is_empty().then_some(AgentId(req.agent_id))
}

/// `POST /escalations/{id}/resolve`.
pub fn resolution(req: api::ResolveRequest, issues: &mut Issues) -> Option<Resolve> {
    let action = ResolveAction::parse(&req.action);
    if action.is_none() {
        issues.add(
            "action",
            "must be retry, skip, fail, provide_output, raise_budget or cancel",
        );
    }
    if action == Some(ResolveAction::ProvideOutput)
        && req.outputs.as_ref().is_none_or(Value::is_null)
    {
        issues.add("outputs", "provide_output needs the outputs");
    }
    if action == Some(ResolveAction::RaiseBudget) && req.budget.is_none() {
        issues.add("budget", "raise_budget needs the new budget");
    }
    if let Some(n) = &req.note {
        if n.chars().count() > MAX_MESSAGE {
            issues.add("note", format!("must be at most {MAX_MESSAGE} characters"));
        }
    }
    let budget = req.budget.and_then(|b| budget(issues, b));
    let action = action?;
    issues.is_empty().then_some(Resolve {
        action,
        outputs: req.outputs,
        note: req.note,
        budget,
    })
}

/// A budget: a cost limit that is a finite, non-negative number.
fn budget(issues: &mut Issues, b: api::Budget) -> Option<Budget> {
    if b.max_cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) {
        issues.add("budget.max_cost_usd", "must be a non-negative number");
        return None;
    }
    Some(Budget {
        max_tokens: b.max_tokens,
        max_cost_usd: b.max_cost_usd,
        max_duration_s: b.max_duration_s,
    })
}

/// `escalate` or `fail`.
pub(crate) fn policy(
    issues: &mut Issues,
    field: &str,
    value: Option<String>,
) -> Option<ExhaustedPolicy> {
    let v = value?;
    let parsed = ExhaustedPolicy::parse(&v);
    if parsed.is_none() {
        issues.add(field, "must be escalate or fail");
    }
    parsed
}

/// `POST /agents`.
pub fn registration(req: api::RegisterAgent, issues: &mut Issues) -> Option<AgentSpec> {
    text(issues, "name", &req.name, MAX_AGENT_NAME);
    let kind = req.kind.unwrap_or_else(|| "remote".into());
    if kind.chars().count() > MAX_AGENT_KIND {
        issues.add(
            "type",
            format!("must be at most {MAX_AGENT_KIND} characters"),
        );
    }
    if req.capabilities.is_empty() {
        issues.add("capabilities", "must contain at least one entry");
    }
    let capabilities = names(issues, "capabilities", req.capabilities, true);
    let domains = names(issues, "domains", req.domains, false);
    let max_concurrency = req.max_concurrency.unwrap_or(4);
    if !(1..=MAX_CONCURRENCY).contains(&max_concurrency) {
        issues.add(
            "max_concurrency",
            format!("must be an integer from 1 to {MAX_CONCURRENCY}"),
        );
    }
    issues.is_empty().then_some(AgentSpec {
        name: req.name,
        kind,
        capabilities,
        domains,
        max_concurrency,
    })
}

/// `POST /agents/{id}/lease`.
pub fn lease(req: api::LeaseRequest, issues: &mut Issues) -> Option<LeaseAsk> {
    let max = req.max.unwrap_or(1);
    if !(1..=MAX_LEASE_BATCH).contains(&max) {
        issues.add(
            "max",
            format!("must be an integer from 1 to {MAX_LEASE_BATCH}"),
        );
    }
    let wait_ms = req.wait_ms.unwrap_or(0);
    if wait_ms > MAX_LEASE_WAIT_MS {
        issues.add(
            "wait_ms",
            format!("must be an integer from 0 to {MAX_LEASE_WAIT_MS}"),
        );
    }
    let held = held(issues, req.held);
    issues.is_empty().then_some(LeaseAsk { max, wait_ms, held })
}

/// `POST /agents/{id}/heartbeat`: the assignments it holds, when it says.
pub fn heartbeat(
    req: api::HeartbeatRequest,
    issues: &mut Issues,
) -> Option<Option<Vec<AssignmentId>>> {
    let held = held(issues, req.held);
    issues.is_empty().then_some(held)
}

/// `POST /assignments/{id}/progress`: the phase and an optional message.
pub fn progress(req: api::ProgressRequest, issues: &mut Issues) -> Option<(Phase, Option<String>)> {
    if let Some(m) = &req.message {
        if m.chars().count() > MAX_MESSAGE {
            issues.add(
                "message",
                format!("must be at most {MAX_MESSAGE} characters"),
            );
        }
    }
    let phase = match req.phase {
        api::Phase::Reasoning => Phase::Reasoning,
        api::Phase::Executing => Phase::Executing,
        api::Phase::Validating => Phase::Validating,
    };
    issues.is_empty().then_some((phase, req.message))
}

/// `POST /assignments/{id}/complete`: the outputs and what the attempt used.
pub fn complete(req: api::CompleteRequest, issues: &mut Issues) -> Option<(Value, Option<Usage>)> {
    let usage = req.usage.and_then(|u| usage(issues, "usage", u));
    if req.outputs.is_null() {
        issues.add("outputs", "required (null is no output)");
        return None;
    }
    issues.is_empty().then_some((req.outputs, usage))
}

/// Reported usage: a cost that is a finite, non-negative number.
fn usage(issues: &mut Issues, field: &str, u: api::Usage) -> Option<Usage> {
    let cost = u.cost_usd.unwrap_or(0.0);
    if !cost.is_finite() || cost < 0.0 {
        issues.add(format!("{field}.cost_usd"), "must be a non-negative number");
        return None;
    }
    Some(Usage {
        tokens_in: u.tokens_in.unwrap_or(0),
        tokens_out: u.tokens_out.unwrap_or(0),
        cost_usd: cost,
    })
}

/// `POST /assignments/{id}/fail`: the error and whether it is retryable.
pub fn fail(req: api::FailRequest, issues: &mut Issues) -> Option<(String, bool)> {
    text(issues, "error", &req.error, MAX_ERROR);
    issues.is_empty().then_some((req.error, req.retryable))
}

/// `POST /agents/{id}/results`: each result, and what the agent still holds.
pub type Results = (
    Vec<(AssignmentId, AttemptOutcome)>,
    Option<Vec<AssignmentId>>,
);

/// `POST /agents/{id}/results`.
pub fn results(req: api::ResultsRequest, issues: &mut Issues) -> Option<Results> {
    if req.results.is_empty() || req.results.len() > MAX_RESULTS {
        issues.add(
            "results",
            format!("must be a list of 1 to {MAX_RESULTS} results"),
        );
    }
    let mut items = Vec::with_capacity(req.results.len());
    for (i, item) in req.results.into_iter().enumerate() {
        let at = |field: &str| format!("results[{i}].{field}");
        text(
            issues,
            &at("assignment_id"),
            &item.assignment_id,
            MAX_ASSIGNMENT_ID,
        );
        let usage = item.usage.and_then(|u| usage(issues, &at("usage"), u));
        let outcome = match (item.outputs.filter(|o| !o.is_null()), item.error) {
            (Some(outputs), None) if item.retryable.is_none() => Ok((outputs, usage)),
            (None, Some(error)) => {
                text(issues, &at("error"), &error, MAX_ERROR);
                Err((error, item.retryable.unwrap_or(true)))
            }
            (Some(_), None) => {
                issues.add(at("retryable"), "only a failure (error) is retryable");
                continue;
            }
            _ => {
                issues.add(at("outputs"), "give either outputs or error");
                continue;
            }
        };
        items.push((AssignmentId(item.assignment_id), outcome));
    }
    let held = held(issues, req.held);
    issues.is_empty().then_some((items, held))
}

fn held(issues: &mut Issues, held: Option<Vec<String>>) -> Option<Vec<AssignmentId>> {
    let held = held?;
    if held.len() > MAX_HELD {
        issues.add(
            "held",
            format!("must be a list of at most {MAX_HELD} assignment ids"),
        );
    }
    Some(held.into_iter().map(AssignmentId).collect())
}

/// A required, non-blank string of at most `max` characters.
fn text(issues: &mut Issues, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        issues.add(field, "must not be empty");
    } else if value.chars().count() > max {
        issues.add(field, format!("must be at most {max} characters"));
    }
}

/// An identifier (see [`check_name`]).
fn name(issues: &mut Issues, field: &str, value: &str, forbid_colon: bool) {
    if let Some(problem) = check_name(value, forbid_colon) {
        issues.add(field, problem);
    }
}

/// A list of names, deduplicated in order.
fn names(issues: &mut Issues, field: &str, list: Vec<String>, forbid_colon: bool) -> Vec<String> {
    if list.len() > MAX_CAPABILITIES {
        issues.add(field, format!("at most {MAX_CAPABILITIES} entries"));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        match check_name(&item, forbid_colon) {
            Some(problem) => issues.add(format!("{field}[{i}]"), problem),
            None if out.contains(&item) => {}
            None => out.push(item),
        }
    }
    out
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

/// JSON with object keys sorted at every level: equal requests give equal strings.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn submit(body: Value) -> Result<NewTask, Vec<String>> {
        accept(body.to_string().as_bytes(), |r, i| {
            submission(r, false, &Catalog::builtin(), i)
        })
        .map_err(|e| match e {
            Rejection::Invalid(list) => list.into_iter().map(|i| i.field).collect(),
            Rejection::Malformed(m) => vec![m],
        })
    }

    #[test]
    fn a_good_submission_is_planned() {
        let new = submit(
            json!({"task_id": "t-1", "title": "Blog", "description": "AI ethics",
                    "task_type": "create_blog_post", "priority": "high",
                    "metadata": {"due_date": "2025-11-22"}}),
        )
        .unwrap();
        assert_eq!(new.plan.steps.len(), 5);
        assert_eq!(new.priority, Priority::HIGH);
        assert_eq!(new.task_id, Some(TaskId::from("t-1")));
        assert_eq!(new.due_at, parse_due("2025-11-22T23:59:59.999Z"));
    }

    #[test]
    fn every_problem_is_listed() {
        let fields = submit(json!({"task_id": "bad id", "title": "", "priority": 11,
                    "metadata": {"due_date": "soon"},
                    "plan": {"subtasks": [{"id": "a"}]}, "bogus": 1}))
        .unwrap_err();
        for f in [
            "task_id",
            "title",
            "description",
            "priority",
            "metadata.due_date",
            "plan.subtasks[0].capability",
            "bogus",
        ] {
            assert!(fields.contains(&f.to_owned()), "{f} not in {fields:?}");
        }
        assert_eq!(
            submit(json!({"task_id": "..", "title": "t", "description": "d"})).unwrap_err(),
            ["task_id"]
        );
    }

    proptest::proptest! {
        /// Whatever JSON arrives, the intake answers (accepted or every problem listed) and
        /// never panics, for every kind of request.
        #[test]
        fn the_intake_never_panics(v in arb_json()) {
            let bytes = v.to_string().into_bytes();
            let catalog = Catalog::default();
            let _ = accept(&bytes, |r, i| submission(r, true, &catalog, i));
            let _ = accept(&bytes, |r, i| batch(r, &catalog, i));
            let _ = accept(&bytes, registration);
            let _ = accept(&bytes, results);
            let _ = accept(&bytes, progress);
            let wrapped = json!({"title": "t", "description": "d", "plan": {"subtasks": [v]}});
            let _ = accept(wrapped.to_string().as_bytes(), |r, i| {
                submission(r, true, &catalog, i)
            });
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("id".to_string()),
                        Just("capability".to_string()),
                        Just("depends_on".to_string()),
                        Just("input".to_string()),
                        Just("subtasks".to_string()),
                        Just("plan".to_string()),
                        Just("title".to_string()),
                        Just("outputs".to_string()),
                        Just("results".to_string()),
                        "[a-z]{1,3}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn canonical_form_ignores_key_order_and_absent_nulls() {
        let a = submit(json!({"title": "t", "description": "d", "task_type": null,
                              "metadata": {"b": 1, "a": [{"y": 1, "x": 2}]}}))
        .unwrap();
        let b = submit(json!({"metadata": {"a": [{"x": 2, "y": 1}], "b": 1},
                              "description": "d", "title": "t"}))
        .unwrap();
        assert_eq!(a.request, b.request);
    }
}
