//! Governance from the command line: `baton escalations` (list, `show`), `baton resolve`,
//! `baton approve`, `baton reject` and `baton assign`.
//!
//! The requests are built by pure functions of the parsed arguments ([`resolve_request`],
//! [`gate_decision`]) and the renderings ([`escalation_table`], [`escalation_detail`]) are pure
//! functions of the wire types, all unit-tested without a server. The server validates the
//! requests (which action fits which escalation, what each action needs); its 400 field
//! issues are printed one per line by `main`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use baton_agent::api::{
    Budget, EscalationList, EscalationView, GateDecision, GateReply, ManualAssign, ResolveRequest,
};
use baton_agent::Client;
use serde_json::Value;

use crate::client_cmds::{client, print_json};

/// What an escalation's reason is cut to in the table.
const REASON_WIDTH: usize = 60;

/// `baton escalations`: list, or `show` one.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EscalationsArgs {
    #[command(subcommand)]
    pub command: Option<EscalationsCommand>,
    #[command(flatten)]
    pub list: EscalationListArgs,
}

/// The subcommands of `baton escalations`.
#[derive(clap::Subcommand, Debug)]
pub enum EscalationsCommand {
    /// Show one escalation whole: reason, evidence, suggestions and resolution.
    Show(EscalationShowArgs),
}

#[derive(clap::Args, Debug)]
pub struct EscalationListArgs {
    /// Only open or only resolved escalations; all when absent.
    #[arg(long, value_parser = ["open", "resolved"])]
    pub status: Option<String>,
    /// Only the escalations of this task.
    #[arg(long = "task", value_name = "TASK_ID")]
    pub task_id: Option<String>,
    /// At most this many (1-500; the server's default is 50).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct EscalationShowArgs {
    pub escalation_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `baton resolve`: decide an open escalation.
#[derive(clap::Args, Debug)]
pub struct ResolveArgs {
    pub escalation_id: String,
    /// What to do: retry, skip or fail the step, or provide_output (a subtask's escalation);
    /// raise_budget (a budget escalation); cancel the task (any).
    #[arg(long, value_parser = ["retry", "skip", "fail", "provide_output", "raise_budget", "cancel"])]
    pub action: String,
    /// With provide_output: the step's outputs as JSON ('{"text":"..."}').
    #[arg(long, value_name = "JSON", value_parser = parse_json, conflicts_with = "outputs_file")]
    pub outputs: Option<Value>,
    /// With provide_output: a file holding the outputs as JSON (`-` reads stdin).
    #[arg(long, value_name = "FILE")]
    pub outputs_file: Option<PathBuf>,
    /// With raise_budget: the new token limit.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// With raise_budget: the new cost limit in US dollars.
    #[arg(long, value_name = "USD")]
    pub max_cost_usd: Option<f64>,
    /// With raise_budget: the new duration limit in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub max_duration_s: Option<u64>,
    /// Why; kept with the resolution and in the task's timeline.
    #[arg(long)]
    pub note: Option<String>,
    /// Print the resolved escalation as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `baton approve`: release subtasks waiting for approval.
#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    pub task_id: String,
    /// A subtask to approve, its id as `baton status` shows it (repeatable); every subtask
    /// waiting for approval when absent.
    #[arg(long = "subtask", value_name = "SUBTASK_ID")]
    pub subtasks: Vec<String>,
    /// Who approved and why; kept in the task's timeline.
    #[arg(long)]
    pub note: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `baton reject`: reject subtasks waiting for approval; each becomes an escalation.
#[derive(clap::Args, Debug)]
pub struct RejectArgs {
    pub task_id: String,
    /// A subtask to reject, its id as `baton status` shows it (repeatable); every subtask
    /// waiting for approval when absent.
    #[arg(long = "subtask", value_name = "SUBTASK_ID")]
    pub subtasks: Vec<String>,
    /// Why the step is rejected (required).
    #[arg(long)]
    pub note: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `baton assign`: route a ready or blocked subtask by hand.
#[derive(clap::Args, Debug)]
pub struct AssignArgs {
    pub task_id: String,
    /// The subtask's id as `baton status` shows it.
    pub subtask_id: String,
    /// The live agent to run it (see `baton agents`); it gets it at its next lease call.
    #[arg(long = "agent", value_name = "AGENT_ID")]
    pub agent_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A JSON argument: refused, saying why, when it does not parse.
fn parse_json(arg: &str) -> Result<Value, String> {
    serde_json::from_str(arg).map_err(|e| format!("not JSON: {e}"))
}

/// The JSON in `path` (`-`: stdin).
fn read_json_file(path: &Path) -> anyhow::Result<Value> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the outputs from stdin")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The request `baton resolve` sends: the outputs from `--outputs` or `--outputs-file`, a
/// budget when any `--max-*` flag is given. Whether they fit the action is the server's call.
pub fn resolve_request(args: &ResolveArgs) -> anyhow::Result<ResolveRequest> {
    let outputs = match (&args.outputs, &args.outputs_file) {
        (Some(outputs), _) => Some(outputs.clone()),
        (None, Some(path)) => Some(read_json_file(path)?),
        (None, None) => None,
    };
    let budget = Budget {
        max_tokens: args.max_tokens,
        max_cost_usd: args.max_cost_usd,
        max_duration_s: args.max_duration_s,
    };
    Ok(ResolveRequest {
        action: args.action.clone(),
        outputs,
        budget: (budget != Budget::default()).then_some(budget),
        note: args.note.clone(),
    })
}

/// The body of approve and reject: the named subtasks, or none for all that wait.
pub fn gate_decision(subtasks: &[String], note: Option<&str>) -> GateDecision {
    GateDecision {
        subtask_ids: (!subtasks.is_empty()).then(|| subtasks.to_vec()),
        note: note.map(str::to_owned),
    }
}

pub async fn escalations(server: &str, args: EscalationsArgs) -> anyhow::Result<ExitCode> {
    let client = client(server)?;
    match args.command {
        Some(EscalationsCommand::Show(args)) => show(&client, args).await,
        None => list(&client, args.list).await,
    }
}

async fn list(client: &Client, args: EscalationListArgs) -> anyhow::Result<ExitCode> {
    let list = client
        .escalations(args.status.as_deref(), args.task_id.as_deref(), args.limit)
        .await?;
    if args.json {
        print_json(&list)?;
    } else if list.escalations.is_empty() {
        println!("no escalations");
    } else {
        print!("{}", escalation_table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(client: &Client, args: EscalationShowArgs) -> anyhow::Result<ExitCode> {
    let escalation = client.escalation(&args.escalation_id).await?;
    if args.json {
        print_json(&escalation)?;
    } else {
        print!("{}", escalation_detail(&escalation));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn resolve(server: &str, args: ResolveArgs) -> anyhow::Result<ExitCode> {
    let request = resolve_request(&args)?;
    let resolved = client(server)?
        .resolve(&args.escalation_id, &request)
        .await
        .with_context(|| format!("escalation {} was not resolved", args.escalation_id))?;
    if args.json {
        print_json(&resolved)?;
    } else {
        println!("resolved {}: {}", resolved.escalation_id, request.action);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn approve(server: &str, args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let decision = gate_decision(&args.subtasks, args.note.as_deref());
    let reply = client(server)?
        .approve(&args.task_id, &decision)
        .await
        .with_context(|| format!("task {}: nothing was approved", args.task_id))?;
    report_gate(&reply, "approved", args.json)
}

pub async fn reject(server: &str, args: RejectArgs) -> anyhow::Result<ExitCode> {
    let decision = gate_decision(&args.subtasks, Some(&args.note));
    let reply = client(server)?
        .reject(&args.task_id, &decision)
        .await
        .with_context(|| format!("task {}: nothing was rejected", args.task_id))?;
    report_gate(&reply, "rejected", args.json)
}

fn report_gate(reply: &GateReply, verb: &str, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(reply)?;
    } else {
        print!("{}", gate_lines(reply, verb));
    }
    Ok(ExitCode::SUCCESS)
}

/// `approved x::t::1, y::t::1` then `task t running`.
pub fn gate_lines(reply: &GateReply, verb: &str) -> String {
    format!(
        "{verb} {}\ntask {} {}\n",
        reply.subtask_ids.join(", "),
        reply.task_id,
        reply.status
    )
}

pub async fn assign(server: &str, args: AssignArgs) -> anyhow::Result<ExitCode> {
    let assign = ManualAssign {
        agent_id: args.agent_id.clone(),
    };
    let reply = client(server)?
        .assign_subtask(&args.task_id, &args.subtask_id, &assign)
        .await
        .with_context(|| format!("subtask {} was not assigned", args.subtask_id))?;
    if args.json {
        print_json(&reply)?;
    } else {
        println!("assigned {} to {}", args.subtask_id, args.agent_id);
        println!("task {} {}", reply.task_id, reply.status);
    }
    Ok(ExitCode::SUCCESS)
}

// ----- renderings -----

/// The first line of `text`, cut to `width` characters with an ellipsis (` …` when more
/// lines follow).
fn cut(text: &str, width: usize) -> String {
    let mut lines = text.trim().lines();
    let first = lines.next().unwrap_or("");
    if first.chars().count() > width {
        let end = first
            .char_indices()
            .nth(width.saturating_sub(1))
            .map_or(first.len(), |(i, _)| i);
        format!("{}…", &first[..end])
    } else if lines.next().is_some() {
        format!("{first} …")
    } else {
        first.to_owned()
    }
}

/// The listing as a table: ID, TASK, SUBTASK, KIND, STATUS and the reason's first line, cut.
pub fn escalation_table(list: &EscalationList) -> String {
    let rows: Vec<[String; 6]> = list
        .escalations
        .iter()
        .map(|e| {
            [
                e.escalation_id.clone(),
                e.task_id.clone(),
                e.subtask_id.clone().unwrap_or_else(|| "-".to_owned()),
                e.kind.clone(),
                e.status.clone(),
                cut(&e.reason, REASON_WIDTH),
            ]
        })
        .collect();
    let header = ["ID", "TASK", "SUBTASK", "KIND", "STATUS", "REASON"].map(str::to_owned);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (width, cell) in widths.iter().zip(row) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        line.push_str(&row[5]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `value` as pretty JSON, every line indented by `indent`.
fn indented_json(value: &Value, indent: &str) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.lines()
        .map(|l| format!("{indent}{l}\n"))
        .collect::<String>()
}

/// One escalation whole: what, where, why, the evidence as pretty JSON, the suggestions as a
/// list, and the resolution (or how to give one).
pub fn escalation_detail(e: &EscalationView) -> String {
    let mut out = format!(
        "escalation {} ({}, {})\n",
        e.escalation_id, e.kind, e.status
    );
    out.push_str(&format!("  task:     {}\n", e.task_id));
    if let Some(subtask) = &e.subtask_id {
        out.push_str(&format!("  subtask:  {subtask}\n"));
    }
    out.push_str(&format!("  created:  {}\n", e.created_at));
    if let Some(at) = &e.resolved_at {
        out.push_str(&format!("  resolved: {at}\n"));
    }
    out.push_str("\nReason:\n");
    for line in e.reason.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str("\nEvidence:\n");
    out.push_str(&indented_json(&e.evidence, "  "));
    out.push_str("\nSuggestions:\n");
    if e.suggestions.is_empty() {
        out.push_str("  (none)\n");
    }
    for s in &e.suggestions {
        out.push_str(&format!("  - {s}\n"));
    }
    out.push_str("\nResolution:\n");
    match &e.resolution {
        None => out.push_str(&format!(
            "  (open) baton resolve {} --action <action>\n",
            e.escalation_id
        )),
        Some(Value::Object(fields)) => {
            // The action first, then the rest as the server sent them.
            let action = fields.get("action").map(|a| ("action", a));
            let rest = fields
                .iter()
                .filter(|(k, _)| k.as_str() != "action")
                .map(|(k, v)| (k.as_str(), v));
            for (key, value) in action.into_iter().chain(rest) {
                match value {
                    Value::Null => {}
                    Value::String(s) => out.push_str(&format!("  {key}: {s}\n")),
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("  {key}:\n"));
                        out.push_str(&indented_json(value, "    "));
                    }
                    other => out.push_str(&format!("  {key}: {other}\n")),
                }
            }
        }
        Some(other) => out.push_str(&indented_json(other, "  ")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    /// The governance commands as `main` declares them, parsed from a command line.
    #[derive(Parser, Debug)]
    enum Cmd {
        Resolve(ResolveArgs),
        Approve(ApproveArgs),
        Reject(RejectArgs),
        Escalations(EscalationsArgs),
        Assign(AssignArgs),
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cmd::try_parse_from(std::iter::once("baton").chain(args.iter().copied()))
    }

    fn resolve_args(args: &[&str]) -> ResolveArgs {
        let mut line = vec!["resolve", "esc-1"];
        line.extend_from_slice(args);
        match parse(&line).unwrap() {
            Cmd::Resolve(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outputs_are_parsed_as_json_and_sent_as_given() {
        let args = resolve_args(&[
            "--action",
            "provide_output",
            "--outputs",
            r#"{"ok":true,"n":[1,2]}"#,
            "--note",
            "by hand",
        ]);
        assert_eq!(
            resolve_request(&args).unwrap(),
            ResolveRequest {
                action: "provide_output".into(),
                outputs: Some(json!({"ok": true, "n": [1, 2]})),
                budget: None,
                note: Some("by hand".into()),
            }
        );
        let err = parse(&[
            "resolve",
            "e",
            "--action",
            "provide_output",
            "--outputs",
            "{ok}",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }

    #[test]
    fn outputs_are_read_from_a_file_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("out.json");
        std::fs::write(&good, "{\"text\": \"written by hand\"}\n").unwrap();
        let args = resolve_args(&[
            "--action",
            "provide_output",
            "--outputs-file",
            good.to_str().unwrap(),
        ]);
        assert_eq!(
            resolve_request(&args).unwrap().outputs,
            Some(json!({"text": "written by hand"}))
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "not json").unwrap();
        let mut args = resolve_args(&["--action", "provide_output"]);
        args.outputs_file = Some(bad);
        let err = resolve_request(&args).unwrap_err();
        assert!(
            format!("{err:#}").contains("bad.json is not JSON"),
            "{err:#}"
        );
        args.outputs_file = Some(dir.path().join("missing.json"));
        let err = resolve_request(&args).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
        // One source of outputs only.
        assert!(parse(&[
            "resolve",
            "e",
            "--action",
            "provide_output",
            "--outputs",
            "{}",
            "--outputs-file",
            "f.json",
        ])
        .is_err());
    }

    #[test]
    fn budget_flags_make_a_budget_and_none_make_none() {
        let args = resolve_args(&[
            "--action",
            "raise_budget",
            "--max-tokens",
            "5000",
            "--max-cost-usd",
            "1.5",
        ]);
        let request = resolve_request(&args).unwrap();
        assert_eq!(
            request.budget,
            Some(Budget {
                max_tokens: Some(5000),
                max_cost_usd: Some(1.5),
                max_duration_s: None,
            })
        );
        assert_eq!(request.outputs, None);
        let args = resolve_args(&["--action", "raise_budget", "--max-duration-s", "600"]);
        assert_eq!(
            serde_json::to_value(resolve_request(&args).unwrap()).unwrap(),
            json!({"action": "raise_budget", "budget": {"max_duration_s": 600}})
        );
        let args = resolve_args(&["--action", "retry"]);
        assert_eq!(
            serde_json::to_value(resolve_request(&args).unwrap()).unwrap(),
            json!({"action": "retry"})
        );
    }

    #[test]
    fn an_unknown_action_is_refused_before_any_request() {
        let err = parse(&["resolve", "e", "--action", "shrug"]).unwrap_err();
        assert!(err.to_string().contains("provide_output"), "{err}");
        assert!(parse(&["resolve", "e"]).is_err(), "--action is required");
    }

    #[test]
    fn gate_decisions_name_the_subtasks_or_leave_them_to_the_server() {
        let Cmd::Approve(args) = parse(&["approve", "t1"]).unwrap() else {
            panic!()
        };
        let decision = gate_decision(&args.subtasks, args.note.as_deref());
        assert_eq!(serde_json::to_value(decision).unwrap(), json!({}));
        let Cmd::Approve(args) = parse(&[
            "approve",
            "t1",
            "--subtask",
            "x::t1::1",
            "--subtask",
            "x::t1::2",
            "--note",
            "ok by ana",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            gate_decision(&args.subtasks, args.note.as_deref()),
            GateDecision {
                subtask_ids: Some(vec!["x::t1::1".into(), "x::t1::2".into()]),
                note: Some("ok by ana".into()),
            }
        );
        assert!(parse(&["reject", "t1"]).is_err(), "reject needs a note");
        let Cmd::Reject(args) = parse(&["reject", "t1", "--note", "too risky"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(gate_decision(&args.subtasks, Some(&args.note))).unwrap(),
            json!({"note": "too risky"})
        );
        let reply = GateReply {
            task_id: "t1".into(),
            status: "running".into(),
            subtask_ids: vec!["x::t1::1".into(), "x::t1::2".into()],
        };
        assert_eq!(
            gate_lines(&reply, "approved"),
            "approved x::t1::1, x::t1::2\ntask t1 running\n"
        );
    }

    #[test]
    fn escalations_list_filters_and_show_parse() {
        let Cmd::Escalations(args) =
            parse(&["escalations", "--status", "open", "--task", "t1", "--json"]).unwrap()
        else {
            panic!()
        };
        assert!(args.command.is_none());
        assert_eq!(args.list.status.as_deref(), Some("open"));
        assert_eq!(args.list.task_id.as_deref(), Some("t1"));
        assert!(args.list.json);
        assert!(parse(&["escalations", "--status", "closed"]).is_err());
        let Cmd::Escalations(args) = parse(&["escalations", "show", "esc-1-0"]).unwrap() else {
            panic!()
        };
        assert!(matches!(
            args.command,
            Some(EscalationsCommand::Show(EscalationShowArgs { ref escalation_id, json: false }))
                if escalation_id == "esc-1-0"
        ));
        let Cmd::Assign(args) = parse(&["assign", "t1", "x::t1::1", "--agent", "agent-7"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                args.task_id.as_str(),
                args.subtask_id.as_str(),
                args.agent_id.as_str()
            ),
            ("t1", "x::t1::1", "agent-7")
        );
        assert!(
            parse(&["assign", "t1", "x::t1::1"]).is_err(),
            "--agent is required"
        );
    }

    fn escalation(id: &str, subtask: Option<&str>, reason: &str) -> EscalationView {
        EscalationView {
            escalation_id: id.into(),
            task_id: "t1".into(),
            subtask_id: subtask.map(str::to_owned),
            kind: "attempts".into(),
            status: "open".into(),
            reason: reason.into(),
            evidence: json!({"attempts": [{"attempt": 1, "error": "boom"}]}),
            suggestions: vec![
                "retry: a fresh set of attempts".into(),
                "skip: continue without this step".into(),
            ],
            created_at: "2026-01-01T00:00:00Z".into(),
            resolved_at: None,
            resolution: None,
        }
    }

    #[test]
    fn the_table_aligns_columns_and_cuts_long_reasons() {
        let long = "x".repeat(100);
        let table = escalation_table(&EscalationList {
            escalations: vec![
                escalation("esc-1-1", Some("x::t1::1"), "attempts used up: boom"),
                escalation("esc-10-0", None, &long),
                escalation("esc-2-0", Some("y::t1::2"), "first line\nsecond line"),
            ],
        });
        let expected_long = format!("{}…", "x".repeat(REASON_WIDTH - 1));
        assert_eq!(
            table,
            format!(
                "\
ID        TASK  SUBTASK   KIND      STATUS  REASON
esc-1-1   t1    x::t1::1  attempts  open    attempts used up: boom
esc-10-0  t1    -         attempts  open    {expected_long}
esc-2-0   t1    y::t1::2  attempts  open    first line …
"
            )
        );
        assert_eq!(cut("é".repeat(60).as_str(), 60), "é".repeat(60));
        assert_eq!(cut("", 60), "");
    }

    #[test]
    fn one_escalation_is_shown_whole() {
        let open = escalation("esc-1-0", Some("x::t1::1"), "attempts used up: boom");
        assert_eq!(
            escalation_detail(&open),
            "\
escalation esc-1-0 (attempts, open)
  task:     t1
  subtask:  x::t1::1
  created:  2026-01-01T00:00:00Z

Reason:
  attempts used up: boom

Evidence:
  {
    \"attempts\": [
      {
        \"attempt\": 1,
        \"error\": \"boom\"
      }
    ]
  }

Suggestions:
  - retry: a fresh set of attempts
  - skip: continue without this step

Resolution:
  (open) baton resolve esc-1-0 --action <action>
"
        );
        let resolved = EscalationView {
            status: "resolved".into(),
            resolved_at: Some("2026-01-01T00:01:00Z".into()),
            resolution: Some(json!({"note": "by hand", "outputs": {"ok": true},
                                    "action": "provide_output"})),
            ..open
        };
        let text = escalation_detail(&resolved);
        assert!(text.starts_with("escalation esc-1-0 (attempts, resolved)\n"));
        assert!(
            text.contains("  resolved: 2026-01-01T00:01:00Z\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "\
Resolution:
  action: provide_output
  note: by hand
  outputs:
    {
      \"ok\": true
    }
"
            ),
            "{text}"
        );
    }
}
