//! Domain types to wire types, and timestamps to RFC 3339.

use baton_api as api;
use std::collections::HashMap;

use baton_core::{
    workflow, Change, Escalation, Millis, Subtask, SubtaskState, Task, TaskContext, TaskId, Usage,
    Verification,
};
use baton_engine::{AgentInfo, LeaseGrant, NewTask, TaskSnapshot};
use serde_json::{Map, Value};
use time::macros::format_description;
use time::OffsetDateTime;

/// RFC 3339 (UTC, always three fractional digits) for a Unix-epoch millisecond time.
pub fn timestamp(ms: Millis) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The subtask ids of a subtask's dependencies (stored as plan indices).
fn dependency_ids(s: &Subtask, all: &[Subtask]) -> Vec<String> {
    s.depends_on
        .iter()
        .filter_map(|&d| all.get(d as usize))
        .map(|d| d.subtask_id.to_string())
        .collect()
}

pub fn planned(s: &TaskSnapshot) -> api::PlannedTask {
    planned_parts(
        &s.task.task_id,
        s.task.status.as_str(),
        &s.subtasks,
        &s.task.context,
    )
}

/// `POST /plan`: the plan of a submission that was not made (`status: "preview"`).
pub fn preview(new: &NewTask, now: Millis) -> api::PlannedTask {
    let task_id = new
        .task_id
        .clone()
        .unwrap_or_else(|| TaskId::from("preview"));
    let subtasks = new.plan.instantiate(&task_id, now);
    let mut planned = planned_parts(&task_id, "preview", &subtasks, &new.context);
    for (p, s) in planned.subtasks.iter_mut().zip(&subtasks) {
        p.input = Some(s.input.clone());
    }
    planned
}

fn planned_parts(
    task_id: &TaskId,
    status: &str,
    subtasks: &[Subtask],
    context: &TaskContext,
) -> api::PlannedTask {
    api::PlannedTask {
        task_id: task_id.to_string(),
        status: status.to_owned(),
        subtasks: subtasks
            .iter()
            .map(|st| api::PlannedSubtask {
                subtask_id: st.subtask_id.to_string(),
                agent: st.capability.clone(),
                state: st.state.to_string(),
                depends_on: dependency_ids(st, subtasks),
                id: st.key.clone(),
                when: st.rules.as_ref().and_then(|r| r.when.clone()),
                input: None,
            })
            .collect(),
        planner: planner(context),
    }
}

fn planner(context: &TaskContext) -> Option<Value> {
    context
        .planner
        .as_ref()
        .and_then(|p| serde_json::to_value(p).ok())
}

/// The task result as clients see it: the stored summary and metrics, with the outputs (and
/// errors) of every subtask merged in, keyed by subtask id.
fn result_with_outputs(result: Option<Value>, subtasks: &[Subtask]) -> Option<Value> {
    let mut result = result?;
    let Some(obj) = result.as_object_mut() else {
        return Some(result);
    };
    let outputs: Map<String, Value> = subtasks
        .iter()
        .filter_map(|s| Some((s.subtask_id.to_string(), s.outputs.clone()?)))
        .collect();
    let errors: Map<String, Value> = subtasks
        .iter()
        .filter_map(|s| Some((s.subtask_id.to_string(), Value::String(s.error.clone()?))))
        .collect();
    obj.insert("outputs".into(), Value::Object(outputs));
    if !errors.is_empty() {
        obj.insert("errors".into(), Value::Object(errors));
    }
    Some(result)
}

pub fn detail(d: baton_store::TaskDetail, now: Millis) -> api::TaskDetail {
    let baton_store::TaskDetail {
        task,
        subtasks,
        events,
        verifications,
        escalations,
    } = d;
    let result = result_with_outputs(task.result.clone(), &subtasks);
    let mut total = Usage::default();
    for u in subtasks.iter().filter_map(|s| s.usage.as_ref()) {
        total.add(u);
    }
    // Each step's own input, its references resolved once its dependencies are done (they
    // read their outputs). Not the whole agent input: the dependencies' outputs are shown once,
    // on their own subtasks, so a dense plan's answer does not grow with its edges.
    let inputs: Vec<Value> = (0..subtasks.len())
        .map(|i| match subtasks[i].state {
            SubtaskState::Pending | SubtaskState::Skipped | SubtaskState::Cancelled => {
                subtasks[i].input.clone()
            }
            _ => workflow::resolved_input(&task, &subtasks, i),
        })
        .collect();
    // Why each subtask is in its state: the note of the event that put it there.
    let states: HashMap<&str, SubtaskState> = subtasks
        .iter()
        .map(|s| (s.subtask_id.as_str(), s.state))
        .collect();
    let mut reasons: HashMap<&str, &str> = HashMap::new();
    for e in &events {
        if let Change::Subtask { subtask_id, to, .. } = &e.change {
            if states.get(subtask_id.as_str()) == Some(to) {
                match &e.note {
                    Some(note) => reasons.insert(subtask_id.as_str(), note.as_str()),
                    None => reasons.remove(subtask_id.as_str()),
                };
            }
        }
    }
    let reasons: HashMap<String, String> = reasons
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let context = task.context.clone();
    api::TaskDetail {
        verifications: verifications.into_iter().map(verification).collect(),
        escalations: escalations.into_iter().map(escalation).collect(),
        usage: (!total.is_zero()).then(|| usage(&total)),
        budget: context.budget.as_ref().map(|b| api::Budget {
            max_tokens: b.max_tokens,
            max_cost_usd: b.max_cost_usd,
            max_duration_s: b.max_duration_s,
        }),
        planner: planner(&context),
        params: (!context.params.is_empty()).then_some(Value::Object(context.params)),
        objectives: context.objectives,
        constraints: context.constraints,
        acceptance_criteria: context.acceptance_criteria,
        metrics: api::Metrics {
            elapsed_seconds: task.elapsed_seconds(now),
            on_time: task.on_time(now),
        },
        task_id: task.task_id.to_string(),
        title: task.title,
        description: task.description,
        task_type: task.task_type,
        priority: task.priority.value(),
        status: task.status.to_string(),
        created_at: timestamp(task.created_at),
        started_at: task.started_at.map(timestamp),
        finished_at: task.finished_at.map(timestamp),
        subtasks: subtasks
            .iter()
            .zip(inputs)
            .map(|(s, input)| (dependency_ids(s, &subtasks), s.clone(), input))
            .map(|(depends_on, s, input)| api::SubtaskDetail {
                id: s.key,
                input,
                when: s.rules.as_ref().and_then(|r| r.when.clone()),
                verify: s.rules.as_ref().and_then(|r| r.verify.clone()),
                approval: s.rules.as_ref().and_then(|r| r.approval.clone()),
                usage: s.usage.as_ref().map(usage),
                reason: reasons.get(s.subtask_id.as_str()).cloned(),
                subtask_id: s.subtask_id.to_string(),
                agent: s.capability,
                assigned_agent: s.assigned_agent.map(|a| a.to_string()),
                state: s.state.to_string(),
                attempts: s.attempts,
                depends_on,
                outputs: s.outputs,
                error: s.error,
            })
            .collect(),
        result,
        status_history: events
            .into_iter()
            .map(|e| {
                let (from, to) = e.change.names();
                api::HistoryEntry {
                    at: timestamp(e.at),
                    kind: e.change.kind().to_owned(),
                    subtask_id: e.change.subtask_id().map(ToString::to_string),
                    from: from.map(str::to_owned),
                    to: to.to_owned(),
                    agent: e.agent.map(|a| a.to_string()),
                    note: e.note,
                }
            })
            .collect(),
    }
}

fn usage(u: &Usage) -> api::Usage {
    api::Usage {
        tokens_in: Some(u.tokens_in),
        tokens_out: Some(u.tokens_out),
        cost_usd: Some(u.cost_usd),
    }
}

fn verification(v: Verification) -> api::VerificationView {
    api::VerificationView {
        subtask_id: v.subtask_id.to_string(),
        n: v.n,
        attempt: v.attempt,
        author: v.author.to_string(),
        verifier: v.verifier.to_string(),
        verified: v.verified,
        evidence: v.evidence,
        feedback: v.feedback,
        at: timestamp(v.at),
    }
}

pub fn escalation(e: Escalation) -> api::EscalationView {
    api::EscalationView {
        escalation_id: e.escalation_id,
        task_id: e.task_id.to_string(),
        subtask_id: e.subtask_id.map(|s| s.to_string()),
        kind: e.kind.to_string(),
        status: e.status.to_string(),
        reason: e.reason,
        evidence: e.evidence,
        suggestions: e.suggestions,
        created_at: timestamp(e.created_at),
        resolved_at: e.resolved_at.map(timestamp),
        resolution: e.resolution.and_then(|r| serde_json::to_value(r).ok()),
    }
}

pub fn summary(task: Task) -> api::TaskSummary {
    api::TaskSummary {
        task_id: task.task_id.to_string(),
        title: task.title,
        task_type: task.task_type,
        priority: task.priority.value(),
        status: task.status.to_string(),
        created_at: timestamp(task.created_at),
        finished_at: task.finished_at.map(timestamp),
    }
}

pub fn agent(info: AgentInfo) -> api::AgentView {
    let a = info.agent;
    api::AgentView {
        load: info.in_flight as f64 / a.max_concurrency.max(1) as f64,
        agent_id: a.agent_id.to_string(),
        name: a.name,
        kind: a.kind,
        skills: a.capabilities,
        domains: a.domains,
        status: info.status.to_string(),
        in_flight: info.in_flight,
        max_concurrency: a.max_concurrency,
        last_seen: info.last_seen.map(timestamp),
        circuit: api::Circuit {
            state: info.circuit.state.as_str().to_owned(),
            consecutive_failures: info.circuit.consecutive_failures,
            open_until: info.circuit.open_until.map(timestamp),
        },
        routing: a
            .stats
            .into_iter()
            .map(|(capability, s)| {
                let stats = api::RoutingStats {
                    success_rate: s.success_rate,
                    latency_ms: s.latency_ms,
                    samples: s.samples,
                };
                (capability, stats)
            })
            .collect(),
    }
}

pub fn lease(g: LeaseGrant) -> api::Lease {
    let a = g.assignment;
    api::Lease {
        idempotency_key: a.idempotency_key(),
        assignment_id: a.assignment_id.to_string(),
        task_id: a.task_id.to_string(),
        subtask_id: a.subtask_id.to_string(),
        capability: g.capability,
        attempt: a.attempt,
        lease_expires_at: timestamp(a.lease_expires_at),
        input: g.input,
    }
}
