//! `baton demo`: an embedded server, five deterministic demo agents (content generator,
//! enhancer, examiner, drafter, publisher) on the agent SDK over loopback HTTP, and the seeds'
//! example "Generate a blog post about AI ethics and publish it", followed live to the end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_agent::api::{Phase, SubmitTask};
use baton_agent::{handler_fn, Client, Job, JobError, Worker, WorkerConfig};
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the database here instead of a temporary directory.
    #[arg(long, env = "BATON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long each demo agent works on a step, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub step_ms: u64,
    /// Print the final task as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// The demo agents: (name, capability, what it does).
const AGENTS: [(&str, &str); 5] = [
    ("content-generator", "generate_content"),
    ("enhancer", "enhance_content"),
    ("examiner", "review_content"),
    ("drafter", "export_document"),
    ("publisher", "publish_content"),
];

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn", false);
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary data dir")?;
            temp.path().to_path_buf()
        }
    };
    let server = baton_server::Server::open(baton_server::Options {
        data_dir: data_dir.clone(),
        engine: baton_engine::Config::default(),
        llm: None,
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let serving = tokio::spawn(server.serve(listener, stopped(stop_rx.clone())));
    let url = format!("http://{addr}");
    println!(
        "Baton demo: server on {url}, data in {}",
        data_dir.display()
    );

    let client = Client::new(&url)?;
    let mut workers = Vec::new();
    for (name, capability) in AGENTS {
        let config = WorkerConfig {
            kind: Some("demo".into()),
            lease_wait_ms: 5_000,
            heartbeat_every: Duration::from_secs(5),
            ..WorkerConfig::new(name, [capability])
        };
        let step = Duration::from_millis(args.step_ms);
        let handler = handler_fn(move |job: Job| async move { work(job, step).await });
        let worker = Worker::new(client.clone(), config, handler);
        workers.push(tokio::spawn(worker.run(stopped(stop_rx.clone()))));
    }
    println!(
        "Started {} demo agents: {}",
        AGENTS.len(),
        AGENTS.map(|a| a.0).join(", ")
    );

    let task = SubmitTask {
        title: "Generate a blog post about AI ethics and publish it".into(),
        description: "Write, polish, review, format and publish a blog post about AI ethics."
            .into(),
        task_type: Some("create_blog_post".into()),
        priority: Some(baton_agent::api::PriorityInput::Name("high".into())),
        metadata: Some(json!({"requester": "baton-demo", "topic": "AI ethics"})),
        ..SubmitTask::default()
    };
    let submitted = client.submit(&task).await?;
    println!(
        "Submitted task {} ({}):",
        submitted.task.task_id, submitted.task.status
    );
    for s in &submitted.task.subtasks {
        println!(
            "  {:<44} depends on [{}]",
            s.subtask_id,
            s.depends_on.join(", ")
        );
    }
    println!("Progress:");
    let detail = tokio::time::timeout(
        Duration::from_secs(120),
        crate::watch::follow(&client, &submitted.task.task_id),
    )
    .await
    .context("the demo task did not finish within 120 s")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        crate::watch::print_outcome(&detail);
    }

    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    serving.await??;
    Ok(if detail.status == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The deterministic work of each demo agent.
async fn work(job: Job, step: Duration) -> Result<Value, JobError> {
    job.progress(
        Phase::Reasoning,
        Some(format!("planning {}", job.capability)),
    )
    .await;
    tokio::time::sleep(step / 2).await;
    job.progress(Phase::Executing, None).await;
    tokio::time::sleep(step / 2).await;
    let brief = job.input["brief"].as_str().unwrap_or("").to_owned();
    let upstream = |key: &str| -> String {
        job.input["dependencies"]
            .as_object()
            .and_then(|deps| deps.values().find_map(|o| o[key].as_str()))
            .unwrap_or("")
            .to_owned()
    };
    let out = match job.capability.as_str() {
        "generate_content" => json!({
            "title": "AI Ethics: Building Systems People Can Trust",
            "draft": "AI systems shape decisions about credit, health and work. Fairness, transparency and accountability must be designed in, not added later.",
            "words": 21,
            "brief": brief,
        }),
        "enhance_content" => {
            let draft = upstream("draft");
            json!({
                "title": "AI Ethics: Building Systems People Can Trust",
                "text": format!("{draft} This post explains how teams can put those principles into practice."),
                "changes": ["tightened the opening", "added a closing sentence"],
            })
        }
        "review_content" => json!({
            "approved": true,
            "score": 0.92,
            "notes": ["claims are general and accurate", "tone is neutral and clear"],
            "text": upstream("text"),
        }),
        "export_document" => {
            let text = upstream("text");
            json!({
                "format": "markdown",
                "document": format!("# AI Ethics: Building Systems People Can Trust\n\n{text}\n"),
            })
        }
        "publish_content" => json!({
            "published": true,
            "url": "https://blog.example.com/posts/ai-ethics-building-systems-people-can-trust",
            "idempotency_key": job.idempotency_key,
        }),
        other => return Err(JobError::permanent(format!("unknown capability {other}"))),
    };
    job.progress(Phase::Validating, None).await;
    Ok(out)
}
