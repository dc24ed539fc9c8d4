//! Client commands against a running server: submit, execute, status, tasks, agents, cancel;
//! and the pieces the workflow and governance commands share with them (`--param`, printing a
//! submission, `--watch`).

use std::process::ExitCode;

use anyhow::{bail, Context};
use baton_agent::api::{ExecuteRequest, PriorityInput, SubmitTask};
use baton_agent::client::{AgentFilter, Submitted, TaskFilter};
use baton_agent::Client;
use serde_json::{Map, Value};

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[arg(long)]
    pub title: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// A published workflow to run (see `baton workflows list`); without one the rule-based
    /// planner plans the task from its title and description.
    #[arg(long)]
    pub task_type: Option<String>,
    /// A parameter of the workflow, KEY=VALUE (repeatable); VALUE is read as JSON when it
    /// parses (3, true, "007", {"a":1}) and as a string otherwise.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, Value)>,
    /// low, normal, high, critical or 1-10.
    #[arg(long)]
    pub priority: Option<String>,
    /// Your own task id (the idempotency key).
    #[arg(long)]
    pub task_id: Option<String>,
    /// Only plan it (POST /orchestrate); run it later with `baton execute`.
    #[arg(long)]
    pub plan_only: bool,
    /// Follow the task live until it finishes.
    #[arg(long)]
    pub watch: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    pub task_id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct TasksArgs {
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub task_type: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct AgentsArgs {
    #[arg(long)]
    pub capability: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ExecuteArgs {
    pub task_id: String,
    /// Every subtask waits for approval (`baton approve`) before it runs.
    #[arg(long)]
    pub manual: bool,
    /// A subtask that waits for approval before it runs, its id as `baton status` shows it
    /// (repeatable).
    #[arg(long = "checkpoint", value_name = "SUBTASK_ID")]
    pub checkpoints: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    pub task_id: String,
}

pub(crate) fn client(server: &str) -> anyhow::Result<Client> {
    Client::new(server).with_context(|| format!("bad server address {server:?}"))
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One `--param KEY=VALUE`: VALUE as JSON when it parses, else as the string it is.
pub(crate) fn parse_param(arg: &str) -> Result<(String, Value), String> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got {arg:?}"));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("the key of {arg:?} is empty"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// The `params` object of the given `--param`s; `None` when there are none. A key given twice
/// is refused rather than silently overwritten.
pub(crate) fn params_object(params: Vec<(String, Value)>) -> anyhow::Result<Option<Value>> {
    if params.is_empty() {
        return Ok(None);
    }
    let mut object = Map::new();
    for (key, value) in params {
        if object.insert(key.clone(), value).is_some() {
            bail!("--param {key} is given more than once");
        }
    }
    Ok(Some(Value::Object(object)))
}

/// `low|normal|high|critical` or a number.
pub(crate) fn priority(p: String) -> PriorityInput {
    match p.parse::<u8>() {
        Ok(n) => PriorityInput::Number(n),
        Err(_) => PriorityInput::Name(p),
    }
}

pub async fn submit(server: &str, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = client(server)?;
    let task = SubmitTask {
        task_id: args.task_id,
        title: args.title,
        description: args.description,
        priority: args.priority.map(priority),
        task_type: args.task_type,
        params: params_object(args.params)?,
        ..SubmitTask::default()
    };
    let submitted = if args.plan_only {
        client.orchestrate(&task).await?
    } else {
        client.submit(&task).await?
    };
    report_submitted(&client, &submitted, args.json, args.watch).await
}

/// Print a submission's answer (JSON, or the task and its subtasks); with `watch`, follow the
/// task until it finishes and exit with success only when it completed.
pub(crate) async fn report_submitted(
    client: &Client,
    submitted: &Submitted,
    json: bool,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let planned = &submitted.task;
    if json && !watch {
        print_json(planned)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "task {} {} ({})",
        planned.task_id,
        planned.status,
        if submitted.created {
            "created"
        } else {
            "already submitted"
        }
    );
    for s in &planned.subtasks {
        println!("  {:<44} {}", s.subtask_id, s.state);
    }
    if !watch {
        return Ok(ExitCode::SUCCESS);
    }
    let detail = crate::watch::follow(client, &planned.task_id).await?;
    if json {
        print_json(&detail)?;
    } else {
        crate::watch::print_outcome(&detail);
    }
    Ok(exit_for(&detail.status))
}

fn exit_for(status: &str) -> ExitCode {
    if status == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub async fn status(server: &str, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let detail = client(server)?.task(&args.task_id).await?;
    if args.json {
        print_json(&detail)?;
    } else {
        for s in &detail.subtasks {
            println!(
                "  {:<44} {:<12} attempts {} {}",
                s.subtask_id,
                s.state,
                s.attempts,
                s.assigned_agent.as_deref().unwrap_or("")
            );
        }
        crate::watch::print_outcome(&detail);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tasks(server: &str, args: TasksArgs) -> anyhow::Result<ExitCode> {
    let list = client(server)?
        .list_tasks(&TaskFilter {
            status: args.status,
            task_type: args.task_type,
            limit: Some(args.limit),
            ..TaskFilter::default()
        })
        .await?;
    if args.json {
        print_json(&list)?;
    } else {
        for t in &list.tasks {
            println!(
                "{:<40} {:<10} p{:<2} {:<20} {}",
                t.task_id,
                t.status,
                t.priority,
                t.task_type.as_deref().unwrap_or("-"),
                t.title
            );
        }
        if let Some(cursor) = &list.next_cursor {
            println!("(more: cursor {cursor})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn agents(server: &str, args: AgentsArgs) -> anyhow::Result<ExitCode> {
    let list = client(server)?
        .agents(&AgentFilter {
            capability: args.capability,
            ..AgentFilter::default()
        })
        .await?;
    if args.json {
        print_json(&list)?;
    } else {
        for a in &list.agents {
            println!(
                "{:<44} {:<20} {:<9} load {:.2}  {}",
                a.agent_id,
                a.name,
                a.status,
                a.load,
                a.skills.join(",")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The body of `baton execute`: `manual` only when asked, checkpoints only when named, so a
/// plain `baton execute` sends `{}` (the server's defaults).
pub(crate) fn execute_request(manual: bool, checkpoints: Vec<String>) -> ExecuteRequest {
    ExecuteRequest {
        execution_mode: manual.then(|| "manual".to_owned()),
        checkpoints: (!checkpoints.is_empty()).then_some(checkpoints),
    }
}

pub async fn execute(server: &str, args: ExecuteArgs) -> anyhow::Result<ExitCode> {
    let request = execute_request(args.manual, args.checkpoints);
    let reply = client(server)?.execute(&args.task_id, &request).await?;
    if args.json {
        print_json(&reply)?;
    } else {
        println!("task {} {}", reply.task_id, reply.status);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(server: &str, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let reply = client(server)?.cancel(&args.task_id).await?;
    println!("task {} {}", reply.task_id, reply.status);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(arg: &str) -> (String, Value) {
        parse_param(arg).unwrap()
    }

    #[test]
    fn param_values_are_json_when_they_parse_and_strings_otherwise() {
        assert_eq!(param("n=3"), ("n".into(), json!(3)));
        assert_eq!(param("ratio=0.5"), ("ratio".into(), json!(0.5)));
        assert_eq!(param("draft=true"), ("draft".into(), json!(true)));
        assert_eq!(param("gone=null"), ("gone".into(), Value::Null));
        assert_eq!(param(r#"code="007""#), ("code".into(), json!("007")));
        assert_eq!(
            param(r#"o={"a":[1,2]}"#),
            ("o".into(), json!({"a": [1, 2]}))
        );
        assert_eq!(
            param("topic=Rust async"),
            ("topic".into(), json!("Rust async"))
        );
        assert_eq!(param("True=True"), ("True".into(), json!("True")));
        assert_eq!(param("broken={\"a\":"), ("broken".into(), json!("{\"a\":")));
        assert_eq!(param("empty="), ("empty".into(), json!("")));
        // Only the first `=` separates; the value keeps the rest.
        assert_eq!(param("q=a=b"), ("q".into(), json!("a=b")));
        assert_eq!(param(" k =1"), ("k".into(), json!(1)));
    }

    #[test]
    fn a_param_needs_a_key_and_an_equals_sign() {
        assert!(parse_param("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_param("=3").unwrap_err().contains("empty"));
    }

    #[test]
    fn execute_sends_only_what_was_asked() {
        let body = |manual, checkpoints: &[&str]| {
            let checkpoints = checkpoints.iter().map(|c| (*c).to_owned()).collect();
            serde_json::to_value(execute_request(manual, checkpoints)).unwrap()
        };
        assert_eq!(body(false, &[]), json!({}));
        assert_eq!(body(true, &[]), json!({"execution_mode": "manual"}));
        assert_eq!(
            body(false, &["x::t::1", "y::t::2"]),
            json!({"checkpoints": ["x::t::1", "y::t::2"]})
        );
    }

    #[test]
    fn params_make_one_object_and_a_repeated_key_is_refused() {
        assert_eq!(params_object(Vec::new()).unwrap(), None);
        let object = params_object(vec![param("a=1"), param("b=x")]).unwrap();
        assert_eq!(object, Some(json!({"a": 1, "b": "x"})));
        let err = params_object(vec![param("a=1"), param("a=2")]).unwrap_err();
        assert!(err.to_string().contains("--param a"), "{err}");
    }
}
