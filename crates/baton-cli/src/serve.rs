//! `baton serve`: the orchestrator on an embedded SQLite database.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use baton_core::retry::RetryPolicy;

/// Settings of `baton serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Port to listen on.
    #[arg(long, env = "AGENT_ORCHESTRATOR_PORT", default_value_t = 8003)]
    pub port: u16,
    /// Address to bind; only loopback addresses until authentication exists.
    #[arg(long, env = "BATON_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Where the database lives.
    #[arg(long, env = "BATON_DATA_DIR", default_value = "baton-data")]
    pub data_dir: PathBuf,
    /// Lease duration without a heartbeat, in milliseconds.
    #[arg(long, env = "BATON_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Default per-subtask timeout, in seconds.
    #[arg(long, env = "AGENT_TIMEOUT_SECONDS", default_value_t = 300)]
    pub timeout_seconds: u64,
    /// Attempts per subtask, the first included (the seed's name: "auto-retries (up to 3
    /// attempts)"); 3 when neither this nor `--max-attempts` is given.
    #[arg(long, env = "MAX_RETRIES")]
    pub max_retries: Option<u32>,
    /// The clearer name of `--max-retries`: total attempts per subtask. Wins when both are set.
    #[arg(long, env = "MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// How subtasks are routed among capable agents: `learned` (by each agent's success rate
    /// and latency for the capability, against its load) or `round-robin`.
    #[arg(long, env = "BATON_ROUTING", default_value = "learned")]
    pub routing: baton_engine::RoutingMode,
    /// Share of learned routing decisions that try another eligible agent at random, 0–1.
    #[arg(long, env = "BATON_EXPLORE_SHARE", default_value_t = 0.05)]
    pub explore_share: f64,
    /// Consecutive failures (failed attempts, lost leases, timeouts) that open an agent's
    /// circuit.
    #[arg(long, env = "BATON_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// How long an open circuit gives its agent no work before one probe may go, in seconds.
    #[arg(long, env = "BATON_BREAKER_COOLDOWN_SECONDS", default_value_t = 30)]
    pub breaker_cooldown_seconds: u64,
    /// Log as JSON lines.
    #[arg(long)]
    pub json_logs: bool,
    /// Base URL of an OpenAI-compatible API for the LLM planner (Baton posts to
    /// `{url}/chat/completions`); the planner is off without it.
    #[arg(long, env = "BATON_LLM_URL")]
    pub llm_url: Option<String>,
    /// The model the LLM planner asks for.
    #[arg(long, env = "BATON_LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,
    /// Bearer token for the LLM API (never logged or shown).
    #[arg(long, env = "BATON_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// How long the LLM planner may take before the rule-based plan is used, in milliseconds.
    #[arg(long, env = "BATON_LLM_TIMEOUT_MS", default_value_t = 20_000)]
    pub llm_timeout_ms: u64,
}

impl ServeArgs {
    /// Total attempts per subtask: `--max-attempts`, else `--max-retries`, else 3.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
            .or(self.max_retries)
            .unwrap_or(baton_core::model::DEFAULT_MAX_ATTEMPTS)
            .max(1)
    }

    /// The LLM planner's settings, when a URL is configured.
    pub fn llm(&self) -> Option<baton_server::LlmConfig> {
        let url = self.llm_url.as_ref().filter(|u| !u.trim().is_empty())?;
        Some(baton_server::LlmConfig {
            url: url.clone(),
            model: self.llm_model.clone(),
            api_key: self.llm_api_key.clone().filter(|k| !k.is_empty()),
            timeout: Duration::from_millis(self.llm_timeout_ms.max(1)),
        })
    }

    pub fn engine_config(&self) -> baton_engine::Config {
        baton_engine::Config {
            lease: Duration::from_millis(self.lease_ms.max(1)),
            subtask_timeout: Duration::from_secs(self.timeout_seconds.max(1)),
            retry: RetryPolicy {
                max_attempts: self.attempts(),
                ..RetryPolicy::default()
            },
            routing: self.routing,
            explore_share: self.explore_share.clamp(0.0, 1.0),
            breaker_failures: self.breaker_failures.max(1),
            breaker_cooldown: Duration::from_secs(self.breaker_cooldown_seconds),
            ..baton_engine::Config::default()
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("info", args.json_logs);
    if !args.host.is_loopback() {
        bail!(
            "refusing to listen on {}: authentication is not configured, so Baton only binds loopback addresses",
            args.host
        );
    }
    let server = baton_server::Server::open(baton_server::Options {
        data_dir: args.data_dir.clone(),
        engine: args.engine_config(),
        llm: args.llm(),
    })
    .await
    .with_context(|| format!("opening the data dir {}", args.data_dir.display()))?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "baton listening");
    server.serve(listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn attempts(args: &[&str]) -> u32 {
        let mut argv = vec!["baton"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).serve.attempts()
    }

    #[test]
    fn max_retries_counts_attempts_and_max_attempts_is_its_clearer_alias() {
        // Env vars of the machine running the tests would leak in; none of these set here.
        if std::env::var_os("MAX_RETRIES").is_some() || std::env::var_os("MAX_ATTEMPTS").is_some() {
            return;
        }
        assert_eq!(attempts(&[]), 3);
        assert_eq!(attempts(&["--max-retries", "5"]), 5);
        assert_eq!(attempts(&["--max-attempts", "2"]), 2);
        assert_eq!(attempts(&["--max-retries", "5", "--max-attempts", "2"]), 2);
        assert_eq!(attempts(&["--max-attempts", "0"]), 1);
    }
}
