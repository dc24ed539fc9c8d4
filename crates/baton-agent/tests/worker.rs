//! The worker against the mock server: results, concurrency, revocation, draining, fatal
//! errors, and a server killed and restarted under it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_agent::api::Phase;
use baton_agent::{
    handler_fn, Client, Error, Handler, Job, JobError, Worker, WorkerConfig, WorkerReport,
};
use common::MockServer;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(15);

fn config(max_concurrency: u32) -> WorkerConfig {
    WorkerConfig {
        max_concurrency,
        lease_wait_ms: 500,
        heartbeat_every: Duration::from_millis(50),
        ..WorkerConfig::new("tester", ["work"])
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<WorkerReport, Error>>,
}

impl Running {
    /// Requests shutdown and waits for the report.
    async fn stop(self) -> WorkerReport {
        let _ = self.stop.send(());
        finished(self.handle).await.expect("worker failed")
    }

    /// Waits for the run to end by itself (dropping the sender would request shutdown).
    async fn finished(self) -> Result<WorkerReport, Error> {
        let Running { stop, handle } = self;
        let result = finished(handle).await;
        drop(stop);
        result
    }
}

async fn finished(handle: JoinHandle<Result<WorkerReport, Error>>) -> Result<WorkerReport, Error> {
    tokio::time::timeout(PATIENCE, handle)
        .await
        .expect("the worker did not stop")
        .expect("the worker panicked")
}

fn spawn_worker(url: &str, config: WorkerConfig, handler: impl Handler) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let worker = Worker::new(Client::new(url).unwrap(), config, handler);
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Running { stop, handle }
}

/// Sends the assignment id when dropped: tells the test a job was aborted.
struct DropSignal(mpsc::UnboundedSender<String>, String);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(self.1.clone());
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("timed out")
        .expect("channel closed")
}

#[tokio::test]
async fn results_are_posted_and_counted() {
    let server = MockServer::start();
    let shared = server.shared.clone();
    shared.enqueue("ok", json!({"n": 21}));
    shared.enqueue("bad", json!({}));
    shared.enqueue("boom", json!({"panic": true}));
    let handler = handler_fn(|job: Job| async move {
        job.progress(Phase::Executing, Some("on it".into())).await;
        if job.input.get("panic").is_some() {
            panic!("the handler blew up");
        }
        let n = job.input["n"]
            .as_i64()
            .ok_or_else(|| JobError::permanent("input.n is missing"))?;
        Ok(json!({"double": n * 2}))
    });
    let worker = spawn_worker(&server.url(), config(4), handler);
    shared
        .wait_for("three results", |s| {
            (s.completed.len() + s.failed.len() == 3).then_some(())
        })
        .await;
    let report = worker.stop().await;

    assert_eq!(
        report,
        WorkerReport {
            agent_id: "agent:1@mock/a b".into(),
            completed: 1,
            failed: 2,
            dropped: 0,
        }
    );
    shared.read(|s| {
        let registration = &s.registrations[0];
        assert_eq!(registration.name, "tester");
        assert_eq!(registration.capabilities, ["work"]);
        assert_eq!(registration.max_concurrency, Some(4));
        assert_eq!(s.completed, [("ok".to_string(), json!({"double": 42}))]);
        let failure = |id: &str| &s.failed.iter().find(|(a, _)| a == id).unwrap().1;
        assert_eq!(failure("bad").error, "input.n is missing");
        assert!(!failure("bad").retryable);
        assert!(failure("boom").error.contains("the handler blew up"));
        assert!(failure("boom").retryable);
        assert_eq!(s.progress.len(), 3);
        assert_eq!(s.progress[0].1.phase, Phase::Executing);
        assert!(s.heartbeats >= 1);
    });
}

#[tokio::test]
async fn superseded_results_are_dropped_and_busy_answers_retried() {
    let server = MockServer::start();
    let shared = server.shared.clone();
    shared.update(|s| {
        s.superseded.insert("old".into());
        s.unavailable_results = 2;
    });
    shared.enqueue("old", json!({}));
    let handler = handler_fn(|job: Job| async move { Ok(json!({"id": job.assignment_id})) });
    let worker = spawn_worker(&server.url(), config(1), handler);
    shared.enqueue("new", json!({}));
    shared
        .wait_for("the new result", |s| {
            (!s.completed.is_empty()).then_some(())
        })
        .await;
    let report = worker.stop().await;
    assert_eq!((report.completed, report.failed, report.dropped), (1, 0, 1));
    shared.read(|s| {
        assert_eq!(s.completed, [("new".to_string(), json!({"id": "new"}))]);
        assert_eq!(s.unavailable_results, 0);
    });
}

#[tokio::test]
async fn revoked_jobs_are_aborted_and_post_nothing() {
    let server = MockServer::start();
    let shared = server.shared.clone();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let handler = handler_fn(move |job: Job| {
        let started_tx = started_tx.clone();
        let dropped_tx = dropped_tx.clone();
        async move {
            if job.input.get("block").is_some() {
                let _signal = DropSignal(dropped_tx, job.assignment_id.clone());
                started_tx.send(job.assignment_id.clone()).unwrap();
                std::future::pending::<()>().await;
            }
            Ok(json!({}))
        }
    });
    shared.enqueue("stuck", json!({"block": true}));
    let worker = spawn_worker(&server.url(), config(2), handler);
    assert_eq!(recv(&mut started).await, "stuck");
    shared.update(|s| s.revoke_next.push("stuck".into()));
    assert_eq!(recv(&mut dropped).await, "stuck");

    shared.enqueue("after", json!({}));
    shared
        .wait_for("the next result", |s| {
            (!s.completed.is_empty()).then_some(())
        })
        .await;
    let report = worker.stop().await;
    assert_eq!((report.completed, report.failed, report.dropped), (1, 0, 1));
    shared.read(|s| {
        assert_eq!(s.completed.len(), 1);
        assert_eq!(s.completed[0].0, "after");
        assert!(s.failed.is_empty());
    });
}

#[tokio::test]
async fn no_more_than_max_concurrency_jobs_run_at_once() {
    let server = MockServer::start();
    let shared = server.shared.clone();
    for i in 0..5 {
        shared.enqueue(&format!("a{i}"), json!({}));
    }
    let gate = Arc::new(Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handler = {
        let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
        handler_fn(move |job: Job| {
            let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
            let started_tx = started_tx.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                started_tx.send(job.assignment_id).unwrap();
                gate.acquire().await.unwrap().forget();
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(json!({}))
            }
        })
    };
    let worker = spawn_worker(&server.url(), config(2), handler);
    recv(&mut started).await;
    recv(&mut started).await;
    // Both slots are busy: the worker does not lease, so the rest stays queued.
    assert_eq!(shared.read(|s| s.queue.len()), 3);

    gate.add_permits(5);
    shared
        .wait_for("five results", |s| (s.completed.len() == 5).then_some(()))
        .await;
    let report = worker.stop().await;
    assert_eq!(report.completed, 5);
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    shared.read(|s| {
        assert!(s
            .lease_requests
            .iter()
            .all(|r| matches!(r.max, Some(1 | 2)) && r.wait_ms == Some(500)));
    });
}

#[tokio::test]
async fn shutdown_lets_running_jobs_finish_and_report() {
    let server = MockServer::start();
    let shared = server.shared.clone();
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handler = {
        let gate = gate.clone();
        handler_fn(move |job: Job| {
            let gate = gate.clone();
            let started_tx = started_tx.clone();
            async move {
                started_tx.send(job.assignment_id).unwrap();
                gate.acquire().await.unwrap().forget();
                Ok(json!({"done": true}))
            }
        })
    };
    shared.enqueue("slow", json!({}));
    let worker = spawn_worker(&server.url(), config(2), handler);
    recv(&mut started).await;
    let _ = worker.stop.send(());
    gate.add_permits(1);
    let report = finished(worker.handle).await.unwrap();
    assert_eq!((report.completed, report.dropped), (1, 0));
    shared.read(|s| assert_eq!(s.completed[0].0, "slow"));
}

#[tokio::test]
async fn the_drain_timeout_abandons_stuck_jobs() {
    let server = MockServer::start();
    let shared = server.shared.clone();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handler = handler_fn(move |job: Job| {
        let started_tx = started_tx.clone();
        async move {
            started_tx.send(job.assignment_id).unwrap();
            std::future::pending::<()>().await;
            Ok(json!({}))
        }
    });
    shared.enqueue("stuck", json!({}));
    let config = WorkerConfig {
        drain_timeout: Duration::from_millis(100),
        ..config(1)
    };
    let worker = spawn_worker(&server.url(), config, handler);
    recv(&mut started).await;
    let report = worker.stop().await;
    assert_eq!((report.completed, report.failed, report.dropped), (0, 0, 1));
    shared.read(|s| assert!(s.completed.is_empty() && s.failed.is_empty()));
}

#[tokio::test]
async fn the_worker_stops_when_the_server_stops_the_agent() {
    let server = MockServer::start();
    let shared = server.shared.clone();
    shared.update(|s| s.agent_status = Some("stopped".into()));
    let handler = handler_fn(|_job: Job| async { Ok(json!({})) });
    let worker = spawn_worker(&server.url(), config(1), handler);
    // Never told to stop: the heartbeat's `stopped` ends the run.
    let report = worker.finished().await.unwrap();
    assert_eq!(report.agent_id, "agent:1@mock/a b");
}

#[tokio::test]
async fn an_unknown_agent_or_a_refused_token_is_fatal() {
    let server = MockServer::start();
    let handler = handler_fn(|_job: Job| async { Ok(json!({})) });
    let ghost = WorkerConfig {
        credentials: Some(("ghost".into(), "token".into())),
        ..config(1)
    };
    let err = spawn_worker(&server.url(), ghost, handler.clone())
        .finished()
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    let registered = Client::new(&server.url())
        .unwrap()
        .register_agent(&baton_agent::api::RegisterAgent {
            name: "other".into(),
            capabilities: vec!["work".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let forged = WorkerConfig {
        credentials: Some((registered.agent_id, "forged".into())),
        ..config(1)
    };
    let err = spawn_worker(&server.url(), forged, handler)
        .finished()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
}

#[tokio::test]
async fn registration_waits_for_the_server_and_can_be_cancelled() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let handler = handler_fn(|_job: Job| async { Ok(json!({})) });
    let worker = spawn_worker(&format!("http://127.0.0.1:{port}"), config(1), handler);
    let report = worker.stop().await;
    assert_eq!(report, WorkerReport::default());
}

#[tokio::test]
async fn register_exposes_the_credentials_before_running() {
    let server = MockServer::start();
    let handler = handler_fn(|_job: Job| async { Ok(json!({})) });
    let mut worker = Worker::new(Client::new(&server.url()).unwrap(), config(1), handler);
    assert_eq!(worker.agent_id(), None);
    let registered = worker.register().await.unwrap();
    assert_eq!(worker.agent_id(), Some(registered.agent_id.as_str()));
    assert_eq!(worker.token(), Some(registered.token.as_str()));
    // Registering again reuses the registration.
    assert_eq!(worker.register().await.unwrap(), registered);
    assert_eq!(server.shared.read(|s| s.registrations.len()), 1);
}

#[tokio::test]
async fn a_killed_and_restarted_server_is_ridden_out() {
    let server = MockServer::start();
    let shared = server.shared.clone();
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let handler = {
        let gate = gate.clone();
        handler_fn(move |job: Job| {
            let gate = gate.clone();
            let (started_tx, finished_tx) = (started_tx.clone(), finished_tx.clone());
            async move {
                if job.input.get("gated").is_some() {
                    started_tx.send(job.assignment_id.clone()).unwrap();
                    gate.acquire().await.unwrap().forget();
                    finished_tx.send(job.assignment_id.clone()).unwrap();
                }
                Ok(json!({"id": job.assignment_id}))
            }
        })
    };
    shared.enqueue("before", json!({}));
    let worker = spawn_worker(&server.url(), config(2), handler);
    shared
        .wait_for("the first result", |s| {
            (s.completed.len() == 1).then_some(())
        })
        .await;

    // Killed while the worker long-polls; work arrives while it is down.
    let (shared, port) = server.kill().await;
    shared.enqueue("gated", json!({"gated": true}));
    let server = MockServer::start_on(shared.clone(), port);
    assert_eq!(recv(&mut started).await, "gated");

    // Killed while a job runs: its result waits for the next incarnation.
    let (shared, port) = server.kill().await;
    gate.add_permits(1);
    assert_eq!(recv(&mut finished).await, "gated");
    let _server = MockServer::start_on(shared.clone(), port);
    shared
        .wait_for("the second result", |s| {
            (s.completed.len() == 2).then_some(())
        })
        .await;

    let report = worker.stop().await;
    assert_eq!((report.completed, report.failed, report.dropped), (2, 0, 0));
    shared.read(|s| {
        assert_eq!(s.registrations.len(), 1);
        assert_eq!(
            s.completed[1],
            ("gated".to_string(), json!({"id": "gated"}))
        );
    });
}
