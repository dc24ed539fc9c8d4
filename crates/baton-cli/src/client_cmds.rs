//! Client commands against a running server: submit, status, tasks, agents, cancel.

use std::process::ExitCode;

use anyhow::Context;
use baton_agent::api::{PriorityInput, SubmitTask};
use baton_agent::client::{AgentFilter, TaskFilter};
use baton_agent::Client;

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[arg(long)]
    pub title: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// A workflow template (e.g. create_blog_post); otherwise the description is categorized.
    #[arg(long)]
    pub task_type: Option<String>,
    /// low, normal, high, critical or 1-10.
    #[arg(long)]
    pub priority: Option<String>,
    /// Your own task id (the idempotency key).
    #[arg(long)]
    pub task_id: Option<String>,
    /// Only plan it (POST /orchestrate); run it later with POST /execute.
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
pub struct CancelArgs {
    pub task_id: String,
}

fn client(server: &str) -> anyhow::Result<Client> {
    Client::new(server).with_context(|| format!("bad server address {server:?}"))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn submit(server: &str, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = client(server)?;
    let task = SubmitTask {
        task_id: args.task_id,
        title: args.title,
        description: args.description,
        priority: args.priority.map(|p| match p.parse::<u8>() {
            Ok(n) => PriorityInput::Number(n),
            Err(_) => PriorityInput::Name(p),
        }),
        task_type: args.task_type,
        ..SubmitTask::default()
    };
    let submitted = if args.plan_only {
        client.orchestrate(&task).await?
    } else {
        client.submit(&task).await?
    };
    let planned = &submitted.task;
    if args.json && !args.watch {
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
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    let detail = crate::watch::follow(&client, &planned.task_id).await?;
    if args.json {
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

pub async fn cancel(server: &str, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let reply = client(server)?.cancel(&args.task_id).await?;
    println!("task {} {}", reply.task_id, reply.status);
    Ok(ExitCode::SUCCESS)
}
