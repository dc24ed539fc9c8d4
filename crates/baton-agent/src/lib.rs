//! The Rust client of Baton's REST API and the SDK for agent authors.
//!
//! - [`Client`]: one typed async method per endpoint (tasks, agents, the agent protocol),
//!   used by the CLI, by tests and by any Rust program that talks to Baton.
//! - [`Worker`]: an agent of the HTTP pull protocol around your [`Handler`]: it registers,
//!   long-polls for assignments, runs them concurrently, heartbeats, posts results, and rides
//!   out server restarts.
//!
//! The wire types are re-exported as [`api`].
//!
//! # Writing an agent
//!
//! ```no_run
//! use baton_agent::api::Phase;
//! use baton_agent::{handler_fn, Client, Job, JobError, Worker, WorkerConfig};
//!
//! # async fn example() -> Result<(), baton_agent::Error> {
//! let client = Client::new("http://127.0.0.1:8003")?;
//! let config = WorkerConfig {
//!     max_concurrency: 8,
//!     ..WorkerConfig::new("summarizer-1", ["summarize"])
//! };
//! let handler = handler_fn(|job: Job| async move {
//!     job.progress(Phase::Executing, Some("reading".into())).await;
//!     let text = job.input["text"]
//!         .as_str()
//!         .ok_or_else(|| JobError::permanent("input.text is missing"))?;
//!     Ok(serde_json::json!({ "summary": text.chars().take(100).collect::<String>() }))
//! });
//!
//! let mut worker = Worker::new(client, config, handler);
//! let registered = worker.register().await?;
//! println!("agent {} registered", registered.agent_id);
//!
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! let report = worker.run(shutdown).await?;
//! println!("{} completed, {} failed, {} dropped", report.completed, report.failed, report.dropped);
//! # Ok(())
//! # }
//! ```
//!
//! # Calling the API
//!
//! ```no_run
//! use baton_agent::api::SubmitTask;
//! use baton_agent::Client;
//!
//! # async fn example() -> Result<(), baton_agent::Error> {
//! let client = Client::new("http://127.0.0.1:8003")?;
//! let submitted = client
//!     .submit(&SubmitTask {
//!         title: "Add login".into(),
//!         description: "Build a login form with a REST backend".into(),
//!         ..SubmitTask::default()
//!     })
//!     .await?;
//! let detail = client.task(&submitted.task.task_id).await?;
//! println!("{} is {}", detail.task_id, detail.status);
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod worker;

pub use baton_api as api;
pub use client::{AgentFilter, Client, Error, Submitted, TaskFilter};
pub use worker::{
    handler_fn, Handler, HandlerFn, Job, JobError, Worker, WorkerConfig, WorkerReport,
};
