//! The scenarios. Each starts its own embedded server on a fresh database, so figures never
//! depend on what ran before.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use baton_agent::api::{ClientPlan, ClientStep, LeaseRequest, RegisterAgent, SubmitTask};
use baton_agent::client::TaskFilter;
use baton_agent::{handler_fn, Client, Job, Worker, WorkerConfig};
use futures::{stream, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::report::quantile;
use super::{BenchArgs, Figure, Scenario, Sizes};

/// Concurrent registrations in the agents scenario.
const REGISTRARS: usize = 64;

pub async fn run(
    scenario: Scenario,
    args: &BenchArgs,
    sizes: Sizes,
) -> anyhow::Result<Vec<Figure>> {
    match scenario {
        Scenario::Independent => independent(args, sizes.independent).await,
        Scenario::Dag => dag(args, sizes.dag).await,
        Scenario::Latency => latency(args, sizes.latency).await,
        Scenario::Inflight => inflight(args, sizes.inflight, sizes.in_flight).await,
        Scenario::Agents => agents(sizes.idle_agents).await,
        Scenario::Api => api(args, sizes.dag, sizes.api_rate).await,
        Scenario::Routing => super::routing::run(sizes.routing_chain, args.seed).await,
        Scenario::All | Scenario::Smoke => bail!("not a single scenario"),
    }
}

/// An embedded server with no-op agents.
struct Harness {
    client: Client,
    stop: watch::Sender<bool>,
    serving: JoinHandle<Result<(), baton_server::Error>>,
    workers: Vec<JoinHandle<Result<baton_agent::WorkerReport, baton_agent::Error>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn start(args: &BenchArgs) -> anyhow::Result<Harness> {
        let (dir, data_dir) = match &args.data_dir {
            Some(d) => {
                let d = d.join(format!("run-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&d);
                (None, d)
            }
            None => {
                let t = tempfile::tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let server = baton_server::Server::open(baton_server::Options {
            data_dir,
            engine: baton_engine::Config::default(),
            llm: None,
        })
        .await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stop_rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let serving = tokio::spawn(server.serve(listener, until(stop_rx.clone())));
        let client = Client::new(&url)?;
        let mut workers = Vec::new();
        for n in 0..args.agents {
            let config = WorkerConfig {
                max_concurrency: args.agent_concurrency,
                lease_wait_ms: 1_000,
                heartbeat_every: Duration::from_secs(5),
                ..WorkerConfig::new(format!("noop-{n}"), ["noop"])
            };
            let handler = handler_fn(|_job: Job| async move { Ok(json!({"ok": true})) });
            let worker = Worker::new(client.clone(), config, handler);
            workers.push(tokio::spawn(worker.run(until(stop_rx.clone()))));
        }
        // Work submitted before the agents registered would start blocked: wait for them.
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.agents(&Default::default()).await?.agents.len() < args.agents {
            ensure!(
                Instant::now() < deadline,
                "the no-op agents did not register"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Harness {
            client,
            stop,
            serving,
            workers,
            _dir: dir,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for w in self.workers {
            w.await??;
        }
        self.serving.await??;
        Ok(())
    }
}

fn step(id: &str, deps: &[&str]) -> ClientStep {
    ClientStep {
        id: id.into(),
        capability: "noop".into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        ..ClientStep::default()
    }
}

fn one_step_task(i: usize) -> SubmitTask {
    SubmitTask {
        title: format!("bench {i}"),
        description: "no-op".into(),
        plan: Some(ClientPlan {
            subtasks: vec![step("only", &[])],
        }),
        ..SubmitTask::default()
    }
}

/// 1 → 4 parallel → join → 1: seven subtasks.
fn dag_task(i: usize) -> SubmitTask {
    SubmitTask {
        title: format!("bench dag {i}"),
        description: "no-op DAG".into(),
        plan: Some(ClientPlan {
            subtasks: vec![
                step("start", &[]),
                step("p1", &["start"]),
                step("p2", &["start"]),
                step("p3", &["start"]),
                step("p4", &["start"]),
                step("join", &["p1", "p2", "p3", "p4"]),
                step("end", &["join"]),
            ],
        }),
        ..SubmitTask::default()
    }
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Submit every task through `POST /tasks`, `submitters` at a time; returns each task id
/// with the wall-clock time its submission started.
async fn submit_all(
    client: &Client,
    tasks: Vec<SubmitTask>,
    submitters: usize,
) -> anyhow::Result<Vec<(String, f64)>> {
    let results: Vec<anyhow::Result<(String, f64)>> = stream::iter(tasks)
        .map(|t| async move {
            let at = wall_ms();
            let s = client.submit(&t).await?;
            Ok((s.task.task_id, at))
        })
        .buffer_unordered(submitters)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Wait until no task is running, then read every task's status and finish time.
async fn finish_times(
    client: &Client,
    expected: usize,
) -> anyhow::Result<HashMap<String, (String, f64)>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let running = client
            .list_tasks(&TaskFilter {
                status: Some("running".into()),
                limit: Some(1),
                ..TaskFilter::default()
            })
            .await?;
        if running.tasks.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "tasks still running after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut out = HashMap::with_capacity(expected);
    let mut cursor = None;
    loop {
        let page = client
            .list_tasks(&TaskFilter {
                limit: Some(500),
                cursor: cursor.take(),
                ..TaskFilter::default()
            })
            .await?;
        for t in page.tasks {
            let finished = t
                .finished_at
                .as_deref()
                .map(parse_ms)
                .transpose()?
                .unwrap_or(f64::NAN);
            out.insert(t.task_id, (t.status, finished));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    ensure!(
        out.len() == expected,
        "expected {expected} tasks, found {}",
        out.len()
    );
    let failed = out.values().filter(|(s, _)| s != "completed").count();
    ensure!(failed == 0, "{failed} tasks did not complete");
    Ok(out)
}

fn parse_ms(text: &str) -> anyhow::Result<f64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("bad timestamp {text}"))?;
    Ok(t.unix_timestamp_nanos() as f64 / 1e6)
}

/// Throughput and latency of a bulk run: `(tasks/s, subtasks/s, sorted latencies in ms)`.
fn bulk_figures(
    submitted: &[(String, f64)],
    finished: &HashMap<String, (String, f64)>,
    subtasks_per_task: usize,
) -> (f64, f64, Vec<f64>) {
    let first = submitted.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let last = finished.values().map(|f| f.1).fold(0.0, f64::max);
    let secs = ((last - first) / 1000.0).max(1e-9);
    let n = submitted.len() as f64;
    let mut latencies: Vec<f64> = submitted
        .iter()
        .filter_map(|(id, at)| finished.get(id).map(|f| (f.1 - at).max(0.0)))
        .collect();
    latencies.sort_by(f64::total_cmp);
    (n / secs, n * subtasks_per_task as f64 / secs, latencies)
}

/// Tasks per call and calls in flight when submitting in batches (`POST /tasks/batch`).
const BATCH: usize = 100;
const BATCHES_IN_FLIGHT: usize = 8;

/// Submit through `POST /tasks/batch`; every task of a call gets the call's start time.
async fn submit_batched(
    client: &Client,
    tasks: Vec<SubmitTask>,
) -> anyhow::Result<Vec<(String, f64)>> {
    let chunks: Vec<Vec<SubmitTask>> = tasks.chunks(BATCH).map(<[SubmitTask]>::to_vec).collect();
    let results: Vec<anyhow::Result<Vec<(String, f64)>>> = stream::iter(chunks)
        .map(|tasks| async move {
            let at = wall_ms();
            let reply = client
                .submit_batch(&baton_agent::api::SubmitBatch {
                    tasks,
                    execute: None,
                })
                .await?;
            reply
                .tasks
                .into_iter()
                .map(|o| match (o.status, o.task) {
                    (201, Some(t)) => Ok((t.task_id, at)),
                    (status, _) => bail!("a batched submission answered {status}"),
                })
                .collect()
        })
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .collect()
        .await;
    Ok(results
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?
        .concat())
}

async fn independent(args: &BenchArgs, n: usize) -> anyhow::Result<Vec<Figure>> {
    let h = Harness::start(args).await?;
    let submitted = submit_all(
        &h.client,
        (0..n).map(one_step_task).collect(),
        args.submitters,
    )
    .await?;
    let finished = finish_times(&h.client, n).await?;
    h.stop().await?;
    let (_, subtasks_per_s, lat) = bulk_figures(&submitted, &finished, 1);
    let note = format!(
        "{n} one-step tasks, one POST /tasks each, {} at a time",
        args.submitters
    );
    // The same load submitted in batches, on a fresh database.
    let h = Harness::start(args).await?;
    let batched = submit_batched(&h.client, (0..n).map(one_step_task).collect()).await?;
    let finished = finish_times(&h.client, n).await?;
    h.stop().await?;
    let (_, batched_per_s, batched_lat) = bulk_figures(&batched, &finished, 1);
    let batched_note = format!(
        "{n} one-step tasks, POST /tasks/batch of {BATCH}, {BATCHES_IN_FLIGHT} calls at a time"
    );
    Ok(vec![
        Figure::new("independent", "subtasks/s", subtasks_per_s, "/s")
            .at_least(30_000.0)
            .note(&note),
        Figure::new(
            "independent",
            "p50 submit->completed",
            quantile(&lat, 0.5),
            "ms",
        )
        .note(&note),
        Figure::new(
            "independent",
            "p99 submit->completed",
            quantile(&lat, 0.99),
            "ms",
        )
        .note(&note),
        Figure::new(
            "independent",
            "subtasks/s (batch submit)",
            batched_per_s,
            "/s",
        )
        .at_least(30_000.0)
        .note(&batched_note),
        Figure::new(
            "independent",
            "p99 (batch submit)",
            quantile(&batched_lat, 0.99),
            "ms",
        )
        .note(&batched_note),
    ])
}

async fn dag(args: &BenchArgs, n: usize) -> anyhow::Result<Vec<Figure>> {
    let h = Harness::start(args).await?;
    let submitted = submit_all(&h.client, (0..n).map(dag_task).collect(), args.submitters).await?;
    let finished = finish_times(&h.client, n).await?;
    h.stop().await?;
    Ok(dag_figures("dag", n, &submitted, &finished))
}

fn dag_figures(
    scenario: &'static str,
    n: usize,
    submitted: &[(String, f64)],
    finished: &HashMap<String, (String, f64)>,
) -> Vec<Figure> {
    let (per_s, subtasks_per_s, lat) = bulk_figures(submitted, finished, 7);
    let note = format!("{n} DAGs (1 -> 4 -> join -> 1) submitted at once");
    vec![
        Figure::new(scenario, "workflows/s", per_s, "/s")
            .at_least(4_000.0)
            .note(&note),
        Figure::new(scenario, "subtasks/s", subtasks_per_s, "/s")
            .at_least(28_000.0)
            .note(&note),
        Figure::new(scenario, "p50 end-to-end", quantile(&lat, 0.5), "ms").note(&note),
        Figure::new(scenario, "p99 end-to-end", quantile(&lat, 0.99), "ms")
            .at_most(2_500.0)
            .note(&note),
    ]
}

/// Submit one DAG and wait for it (long-polling the task); returns the latency in ms.
async fn one_dag(client: &Client, i: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let s = client.submit(&dag_task(i)).await?;
    let detail = client
        .wait_task(&s.task.task_id, Duration::from_secs(30))
        .await?;
    ensure!(
        detail.status == "completed",
        "task {} ended {}",
        detail.task_id,
        detail.status
    );
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

async fn latency(args: &BenchArgs, n: usize) -> anyhow::Result<Vec<Figure>> {
    let h = Harness::start(args).await?;
    // A few unmeasured runs warm connections and caches.
    for i in 0..3 {
        one_dag(&h.client, i).await?;
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        lat.push(one_dag(&h.client, i).await?);
    }
    h.stop().await?;
    lat.sort_by(f64::total_cmp);
    let note =
        format!("{n} DAGs one at a time, measured by the client (submit -> completion seen)");
    Ok(vec![
        Figure::new("latency", "p50 end-to-end", quantile(&lat, 0.5), "ms")
            .at_most(5.0)
            .note(&note),
        Figure::new("latency", "p99 end-to-end", quantile(&lat, 0.99), "ms")
            .at_most(15.0)
            .note(&note),
    ])
}

async fn inflight(args: &BenchArgs, n: usize, in_flight: usize) -> anyhow::Result<Vec<Figure>> {
    let h = Harness::start(args).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let loops: Vec<_> = (0..in_flight)
        .map(|_| {
            let client = h.client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(lat);
                    }
                    lat.push(one_dag(&client, i).await?);
                }
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    for l in loops {
        lat.extend(l.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    h.stop().await?;
    lat.sort_by(f64::total_cmp);
    let note = format!("{n} DAGs, {in_flight} in flight (closed loop), measured by the client");
    Ok(vec![
        Figure::new("inflight", "p50 end-to-end", quantile(&lat, 0.5), "ms").note(&note),
        Figure::new("inflight", "p99 end-to-end", quantile(&lat, 0.99), "ms")
            .at_most(20.0)
            .note(&note),
        Figure::new("inflight", "workflows/s", n as f64 / secs, "/s").note(&note),
    ])
}

/// Kills the child server when dropped.
struct ChildServer(Child);

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?;
    Ok(kib)
}

/// Idle agents are measured on a separate `baton serve` process, so the RSS is the server's
/// alone, not the load generator's.
async fn agents(n: usize) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe: PathBuf = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["serve", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting baton serve")?;
    let server = ChildServer(child);
    let pid = server.0.id();
    let client = Client::new(&format!("http://127.0.0.1:{port}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.health().await.is_err() {
        ensure!(Instant::now() < deadline, "baton serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_kib(pid)?;
    let registered: Vec<anyhow::Result<(String, String)>> = stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let r = client
                    .register_agent(&RegisterAgent {
                        name: format!("idle-{i}"),
                        capabilities: vec!["idle".into()],
                        ..RegisterAgent::default()
                    })
                    .await?;
                Ok((r.agent_id, r.token))
            }
        })
        .buffer_unordered(REGISTRARS)
        .collect()
        .await;
    let registered: Vec<(String, String)> =
        registered.into_iter().collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_registration = rss_kib(pid)?;
    let polls: Vec<_> = registered
        .into_iter()
        .map(|(id, token)| {
            let client = client.clone();
            tokio::spawn(async move {
                let request = LeaseRequest {
                    max: Some(1),
                    wait_ms: Some(60_000),
                    held: None,
                };
                client.lease(&id, &token, &request).await
            })
        })
        .collect();
    // Let every poll reach the server and park, then read the server's memory.
    let mut last = 0.0;
    let mut rss = rss_kib(pid)?;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = rss;
        rss = rss_kib(pid)?;
        if (rss - last).abs() < 64.0 && polls.iter().filter(|p| p.is_finished()).count() == 0 {
            break;
        }
    }
    let _ = last;
    let parked = polls.iter().filter(|p| !p.is_finished()).count();
    ensure!(parked == n, "only {parked} of {n} long polls stayed parked");
    for p in polls {
        p.abort();
    }
    drop(server);
    let mb = rss / 1024.0;
    let per_agent = (rss - baseline) / n as f64;
    let note = format!(
        "{n} agents long-polling; separate server process; {:.1} MB at start, {:.1} MB registered",
        baseline / 1024.0,
        after_registration / 1024.0
    );
    Ok(vec![
        Figure::new("agents", "server RSS", mb, "MB")
            .at_most(50.0 + 10.0 * n as f64 / 1024.0)
            .note(&note),
        Figure::new("agents", "RSS per idle agent", per_agent, "KB")
            .at_most(10.0)
            .note(&note),
    ])
}

async fn api(args: &BenchArgs, n: usize, rate: u32) -> anyhow::Result<Vec<Figure>> {
    let h = Harness::start(args).await?;
    // A few tasks exist before the load starts, so there is always something to read.
    let seed = submit_all(&h.client, (0..10).map(dag_task).collect(), args.submitters).await?;
    let ids: Vec<String> = seed.into_iter().map(|s| s.0).collect();
    let (done_tx, done_rx) = watch::channel(false);
    let reader = {
        let client = h.client.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = 0usize;
            while !*done_rx.borrow() {
                tick.tick().await;
                let id = &ids[i % ids.len()];
                i += 1;
                let t0 = Instant::now();
                client.task(id).await?;
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(lat)
        })
    };
    let submitted = submit_all(&h.client, (0..n).map(dag_task).collect(), args.submitters).await?;
    let finished = finish_times(&h.client, n + 10).await?;
    let _ = done_tx.send(true);
    let mut lat = reader.await??;
    h.stop().await?;
    lat.sort_by(f64::total_cmp);
    let mut figures = vec![
        Figure::new("api", "p50 GET /tasks/{id}", quantile(&lat, 0.5), "ms").note(format!(
            "{} reads at {rate}/s during the dag scenario",
            lat.len()
        )),
        Figure::new("api", "p99 GET /tasks/{id}", quantile(&lat, 0.99), "ms")
            .at_most(5.0)
            .note(format!(
                "{} reads at {rate}/s during the dag scenario",
                lat.len()
            )),
    ];
    let under_load = dag_figures("api/dag", n, &submitted, &finished);
    figures.push(under_load[0].clone());
    Ok(figures)
}
