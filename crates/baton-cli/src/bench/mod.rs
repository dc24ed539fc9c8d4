//! `baton bench`: measures Baton honestly. Every scenario runs an embedded server with default
//! durability (SQLite in WAL mode, `synchronous=FULL`, every acknowledged change committed)
//! and no-op agents on the `baton-agent` SDK over loopback HTTP, then prints a table (and
//! JSON with `--json`) with the target beside each figure. The exception is `routing`, which
//! drives the engine on virtual time with simulated agents of known speed and reliability
//! (see `routing.rs`).

mod report;
mod routing;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

pub use report::{Figure, Report};

/// Which scenario to run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// 100,000 one-step tasks: subtasks/s and submit → completed latency.
    Independent,
    /// 10,000 seven-step DAGs submitted at once: workflows/s, subtasks/s, latency.
    Dag,
    /// One DAG at a time, no load: end-to-end latency.
    Latency,
    /// 10,000 DAGs, 50 in flight (closed loop): end-to-end latency.
    Inflight,
    /// 10,000 idle agents long-polling: server RSS.
    Agents,
    /// `GET /tasks/{id}` at a fixed rate while the dag scenario runs.
    Api,
    /// 1,000 subtasks on a simulated fleet (fast, slow, flaky agents), on virtual time:
    /// learned routing against round robin (makespan, failed attempts).
    Routing,
    /// Every scenario above.
    All,
    /// A few seconds of every scenario at toy sizes: checks that the harness works.
    Smoke,
}

/// `baton bench` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Also print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Smaller sizes (a tenth), for a quick look.
    #[arg(long)]
    pub quick: bool,
    /// No-op agents to start.
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
    /// Concurrency of each no-op agent.
    #[arg(long, default_value_t = 256)]
    pub agent_concurrency: u32,
    /// Concurrent submitters (HTTP connections) in the bulk scenarios.
    #[arg(long, default_value_t = 128)]
    pub submitters: usize,
    /// Run on a Postgres backend (not built yet).
    #[arg(long)]
    pub postgres: Option<String>,
    /// Keep the database here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed of the routing scenario (its engine and its simulated agents).
    #[arg(long, default_value_t = routing::SEED)]
    pub seed: u64,
}

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub independent: usize,
    pub dag: usize,
    pub latency: usize,
    pub inflight: usize,
    pub in_flight: usize,
    pub idle_agents: usize,
    pub api_rate: u32,
    /// Steps per chain of the routing scenario (it runs `routing::CHAINS` chains).
    pub routing_chain: usize,
}

impl Sizes {
    fn for_args(args: &BenchArgs) -> Sizes {
        let full = Sizes {
            independent: 100_000,
            dag: 10_000,
            latency: 300,
            inflight: 10_000,
            in_flight: 50,
            idle_agents: 10_000,
            api_rate: 200,
            routing_chain: 125,
        };
        if args.scenario == Scenario::Smoke {
            Sizes {
                independent: 300,
                dag: 50,
                latency: 5,
                inflight: 60,
                in_flight: 10,
                idle_agents: 50,
                api_rate: 50,
                // The --quick size.
                routing_chain: full.routing_chain / 5,
            }
        } else if args.quick {
            Sizes {
                independent: full.independent / 10,
                dag: full.dag / 10,
                latency: full.latency / 3,
                inflight: full.inflight / 10,
                idle_agents: full.idle_agents / 10,
                routing_chain: full.routing_chain / 5,
                ..full
            }
        } else {
            full
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn", false);
    if args.postgres.is_some() {
        bail!("the Postgres backend does not exist yet; --postgres becomes available with it");
    }
    let sizes = Sizes::for_args(&args);
    let which: Vec<Scenario> = match args.scenario {
        Scenario::All | Scenario::Smoke => vec![
            Scenario::Independent,
            Scenario::Dag,
            Scenario::Latency,
            Scenario::Inflight,
            Scenario::Agents,
            Scenario::Api,
            Scenario::Routing,
        ],
        one => vec![one],
    };
    let mut report = Report::new(&args);
    report.print_header();
    for scenario in which {
        let figures = scenarios::run(scenario, &args, sizes).await?;
        for f in &figures {
            report.print_row(f);
        }
        report.figures.extend(figures);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    }
    Ok(ExitCode::SUCCESS)
}
