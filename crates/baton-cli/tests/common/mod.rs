//! The harness of the CLI tests: a real `baton serve` child process on a temp data dir and a
//! free port, and the `baton` binary run as child processes against it.

#![allow(dead_code)] // each test file uses its own part of it

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_agent::api::{
    CompleteRequest, FailRequest, Lease, LeaseRequest, RegisterAgent, TaskDetail,
};
use baton_agent::Client;
use serde_json::Value;
use tempfile::TempDir;

pub const PATIENCE: Duration = Duration::from_secs(30);

/// `baton serve` on its own data dir; killed when dropped, so a failing test leaves no
/// process behind.
pub struct Server {
    child: Child,
    pub url: String,
    dir: TempDir,
}

impl Server {
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .env_remove("BATON_LLM_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("baton serve starts");
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = server.client();
        let deadline = Instant::now() + PATIENCE;
        while client.health().await.is_err() {
            assert!(Instant::now() < deadline, "server did not become healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url).unwrap()
    }

    /// Write `text` to `name` in the test's temp dir; returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Run `baton --server <url> args…` to its end.
    pub async fn baton(&self, args: &[&str]) -> Output {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("--server")
            .arg(&self.url)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("baton runs");
        Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Like [`Server::baton`], failing the test unless the command succeeds.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.baton(args).await;
        assert!(out.success, "baton {args:?} failed: {out:?}");
        out.stdout
    }

    /// Like [`Server::baton`], failing the test unless the command fails.
    pub async fn fails(&self, args: &[&str]) -> Output {
        let out = self.baton(args).await;
        assert!(!out.success, "baton {args:?} succeeded: {out:?}");
        out
    }

    /// `baton status <id> --json`.
    pub async fn status(&self, task_id: &str) -> TaskDetail {
        serde_json::from_str(&self.ok(&["status", task_id, "--json"]).await).unwrap()
    }

    /// Waits, by long polls on the task, until it has `status`; fails at once if it ends
    /// otherwise, or after [`PATIENCE`].
    pub async fn wait_for_status(&self, task_id: &str, status: &str) -> TaskDetail {
        let client = self.client();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let detail = client
                .wait_task(task_id, Duration::from_millis(250))
                .await
                .unwrap();
            if detail.status == status {
                return detail;
            }
            let terminal = ["completed", "failed", "cancelled"].contains(&detail.status.as_str());
            assert!(
                !terminal && Instant::now() < deadline,
                "task {task_id} is {} while waiting for {status}: {detail:#?}",
                detail.status
            );
        }
    }

    /// A plain agent registered over HTTP, driven by hand.
    pub async fn hand_agent(&self, capabilities: &[&str]) -> HandAgent {
        let client = self.client();
        let registered = client
            .register_agent(&RegisterAgent {
                name: "hand".into(),
                kind: Some("test".into()),
                capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
                ..RegisterAgent::default()
            })
            .await
            .expect("register an agent");
        HandAgent {
            client,
            agent_id: registered.agent_id,
            token: registered.token,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A plain agent registered over HTTP, driven by hand.
pub struct HandAgent {
    pub client: Client,
    pub agent_id: String,
    pub token: String,
}

impl HandAgent {
    /// One assignment, by lease long polls of up to 2 s, within [`PATIENCE`].
    pub async fn lease_one(&self) -> Lease {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let request = LeaseRequest {
                max: Some(1),
                wait_ms: Some(2_000),
                held: None,
            };
            let mut got = self
                .client
                .lease(&self.agent_id, &self.token, &request)
                .await
                .unwrap()
                .assignments;
            if let Some(lease) = got.pop() {
                return lease;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} got no assignment",
                self.agent_id
            );
        }
    }

    pub async fn fail(&self, lease: &Lease, error: &str) {
        let request = FailRequest {
            error: error.into(),
            retryable: false,
        };
        self.client
            .fail(&lease.assignment_id, &self.token, &request)
            .await
            .unwrap();
    }

    pub async fn complete(&self, lease: &Lease, outputs: Value) {
        let request = CompleteRequest {
            outputs,
            usage: None,
        };
        self.client
            .complete(&lease.assignment_id, &self.token, &request)
            .await
            .unwrap();
    }
}
