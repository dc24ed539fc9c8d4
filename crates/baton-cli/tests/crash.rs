//! Durability under SIGKILL: the real `baton serve` process is killed while 50 tasks run,
//! restarted on the same data dir and port, and every acknowledged task must complete with
//! no subtask's result accepted twice.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_agent::api::{ClientPlan, ClientStep, SubmitTask, TaskDetail};
use baton_agent::{handler_fn, Client, Job, Worker, WorkerConfig};
use serde_json::json;
use tokio::sync::{watch, Mutex};

const TASKS: usize = 50;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills the server when dropped, so a failing test leaves no process behind.
struct Server(Child);

impl Server {
    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(port: u16, data_dir: &Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--port", &port.to_string(), "--lease-ms", "2000"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("baton serve starts");
    Server(child)
}

async fn wait_healthy(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.health().await.is_err() {
        assert!(Instant::now() < deadline, "server did not become healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A 1 → 2 → 1 plan: outputs flow through dependencies.
fn task(i: usize) -> SubmitTask {
    let step = |id: &str, cap: &str, deps: &[&str]| ClientStep {
        id: id.into(),
        capability: cap.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        input: Some(json!({"n": i})),
        ..ClientStep::default()
    };
    SubmitTask {
        task_id: Some(format!("crash-{i}")),
        title: format!("crash test task {i}"),
        description: "survive a SIGKILL".into(),
        plan: Some(ClientPlan {
            subtasks: vec![
                step("a", "crunch", &[]),
                step("b", "crunch", &["a"]),
                step("c", "crunch", &["a"]),
                step("d", "crunch", &["b", "c"]),
            ],
        }),
        ..SubmitTask::default()
    }
}

async fn details(client: &Client) -> BTreeMap<String, TaskDetail> {
    let mut out = BTreeMap::new();
    for i in 0..TASKS {
        let id = format!("crash-{i}");
        if let Ok(d) = client.task(&id).await {
            out.insert(id, d);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_tasks_run_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::new(&url).unwrap();
    let mut server = spawn_server(port, dir.path());
    wait_healthy(&client).await;

    // Agents in this process; they ride out the restart by retrying.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for n in 0..3 {
        let config = WorkerConfig {
            max_concurrency: 4,
            lease_wait_ms: 500,
            heartbeat_every: Duration::from_millis(300),
            ..WorkerConfig::new(format!("cruncher-{n}"), ["crunch"])
        };
        let handler = handler_fn(|job: Job| async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let upstream: Vec<String> = job.input["dependencies"]
                .as_object()
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default();
            Ok(json!({"subtask": job.subtask_id, "upstream": upstream}))
        });
        let mut rx = stop_rx.clone();
        let worker = Worker::new(client.clone(), config, handler);
        workers.push(tokio::spawn(worker.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }

    // Submit all tasks in the background; remember which submissions were acknowledged.
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let submitter = {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            for i in 0..TASKS {
                if client.submit(&task(i)).await.is_ok() {
                    acknowledged.lock().await.insert(format!("crash-{i}"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Kill once some tasks have finished and others are still running.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = details(&client).await;
        let done = seen.values().filter(|d| d.status == "completed").count();
        let running = seen.values().filter(|d| d.status == "running").count();
        if done >= 5 && running >= 3 {
            eprintln!("killing the server with {done} tasks completed and {running} running");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tasks never got going: {done} done, {running} running"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    submitter.await.unwrap();
    let acked_before_restart = acknowledged.lock().await.clone();
    assert!(
        acked_before_restart.len() >= 8,
        "too few acknowledged before the kill"
    );
    eprintln!(
        "{} submissions acknowledged before the kill",
        acked_before_restart.len()
    );

    let _server = spawn_server(port, dir.path());
    wait_healthy(&client).await;

    // Every acknowledged task must exist; resubmitting every task with the same body is
    // idempotent for those, and creates the ones whose submission was never acknowledged.
    for i in 0..TASKS {
        let id = format!("crash-{i}");
        let submitted = client
            .submit(&task(i))
            .await
            .expect("resubmission accepted");
        if acked_before_restart.contains(&id) {
            assert!(
                !submitted.created,
                "{id} was acknowledged, yet lost by the crash"
            );
        }
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        let seen = details(&client).await;
        if seen.len() == TASKS && seen.values().all(|d| d.status == "completed") {
            break seen;
        }
        if Instant::now() > deadline {
            let stuck: Vec<_> = seen.values().filter(|d| d.status != "completed").collect();
            panic!(
                "{} tasks did not complete after the restart: {stuck:#?}",
                stuck.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    for (id, d) in &finished {
        assert_eq!(d.subtasks.len(), 4, "{id}");
        for s in &d.subtasks {
            assert_eq!(s.state, "completed", "{id} {}", s.subtask_id);
            let accepted = d
                .status_history
                .iter()
                .filter(|e| e.subtask_id.as_deref() == Some(&s.subtask_id) && e.to == "completed")
                .count();
            assert_eq!(accepted, 1, "{} completed {accepted} times", s.subtask_id);
            assert_eq!(
                s.outputs.as_ref().unwrap()["subtask"],
                s.subtask_id.as_str()
            );
        }
        let join = d
            .subtasks
            .iter()
            .find(|s| s.subtask_id.ends_with("::4"))
            .unwrap();
        let upstream = join.outputs.as_ref().unwrap()["upstream"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(upstream, 2, "{id}: the join saw both branches");
        let task_completed = d
            .status_history
            .iter()
            .filter(|e| e.subtask_id.is_none() && e.to == "completed")
            .count();
        assert_eq!(task_completed, 1, "{id}");
    }

    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
}
