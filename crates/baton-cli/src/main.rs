//! `baton`: the command-line face of Baton. `serve` runs the orchestrator, `demo` runs the
//! whole blog-post example end to end in one process, and the client commands (tasks,
//! agents, workflows, plan previews, and governance: escalations, approvals, manual routing)
//! talk to a running server (`--server` / `BATON_URL`).

mod bench;
mod client_cmds;
mod demo;
mod governance_cmds;
mod serve;
mod watch;
mod workflow_cmds;

use clap::{Parser, Subcommand};

/// mimalloc: the orchestrator allocates many small, short-lived objects across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Baton: an agent orchestrator.
#[derive(Parser, Debug)]
#[command(name = "baton", version, about)]
struct Cli {
    /// The server client commands talk to.
    #[arg(
        long,
        env = "BATON_URL",
        global = true,
        default_value = "http://127.0.0.1:8003"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the orchestrator (embedded SQLite).
    Serve(serve::ServeArgs),
    /// Run the blog-post example end to end with built-in demo agents, then exit.
    Demo(demo::DemoArgs),
    /// Submit a task (and run it).
    Submit(client_cmds::SubmitArgs),
    /// Start a planned task (`submit --plan-only`), optionally gated by approvals.
    Execute(client_cmds::ExecuteArgs),
    /// Show one task: subtasks, result and timeline.
    Status(client_cmds::StatusArgs),
    /// List tasks, newest first.
    Tasks(client_cmds::TasksArgs),
    /// List registered agents.
    Agents(client_cmds::AgentsArgs),
    /// Cancel a task.
    Cancel(client_cmds::CancelArgs),
    /// List escalations (what humans are asked to decide), or `show <id>` one whole.
    Escalations(governance_cmds::EscalationsArgs),
    /// Decide an open escalation: retry, skip, fail, provide_output, raise_budget or cancel.
    Resolve(governance_cmds::ResolveArgs),
    /// Approve subtasks waiting for approval, so they run.
    Approve(governance_cmds::ApproveArgs),
    /// Reject subtasks waiting for approval (each becomes an escalation).
    Reject(governance_cmds::RejectArgs),
    /// Route a ready or blocked subtask by hand to a live agent.
    Assign(governance_cmds::AssignArgs),
    /// Publish, list, show and run workflows.
    Workflows(workflow_cmds::WorkflowsArgs),
    /// Preview the plan a task would get, as a tree, and why; nothing is created.
    Plan(workflow_cmds::PlanArgs),
    /// Measure throughput, latency and memory (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Submit(args) => client_cmds::submit(&cli.server, args).await,
            Command::Execute(args) => client_cmds::execute(&cli.server, args).await,
            Command::Status(args) => client_cmds::status(&cli.server, args).await,
            Command::Tasks(args) => client_cmds::tasks(&cli.server, args).await,
            Command::Agents(args) => client_cmds::agents(&cli.server, args).await,
            Command::Cancel(args) => client_cmds::cancel(&cli.server, args).await,
            Command::Escalations(args) => governance_cmds::escalations(&cli.server, args).await,
            Command::Resolve(args) => governance_cmds::resolve(&cli.server, args).await,
            Command::Approve(args) => governance_cmds::approve(&cli.server, args).await,
            Command::Reject(args) => governance_cmds::reject(&cli.server, args).await,
            Command::Assign(args) => governance_cmds::assign(&cli.server, args).await,
            Command::Workflows(args) => workflow_cmds::workflows(&cli.server, args).await,
            Command::Plan(args) => workflow_cmds::plan(&cli.server, args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            for issue in field_issues(&e) {
                eprintln!("  {}: {}", issue.field, issue.issue);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The fields a refused request names (a 400's `fields`), one per problem.
fn field_issues(error: &anyhow::Error) -> &[baton_agent::api::FieldIssue] {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<baton_agent::Error>())
        .and_then(baton_agent::Error::body)
        .map_or(&[], |body| body.fields.as_slice())
}

/// Log to stderr, filtered by `RUST_LOG` (default `default`).
fn init_logging(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
