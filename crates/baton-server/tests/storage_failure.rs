//! Fail-stop after a storage failure: when a commit fails, the request is answered 503,
//! nothing of it becomes visible, the engine refuses every later change (its memory may be
//! ahead of the store) and `/readyz` says so; a restart recovers from what was committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use baton_core::{AssignmentId, Event, Subtask, Task, TaskId};
use baton_server::Server;
use baton_store::{Recovery, SqliteStore, Store, TaskQuery, WriteBatch};
use serde_json::json;

/// The real SQLite store, with commits that fail on demand (a disk that went bad).
struct FailingStore {
    inner: SqliteStore,
    fail: Arc<AtomicBool>,
}

#[async_trait]
impl Store for FailingStore {
    async fn commit(&self, batch: WriteBatch) -> baton_store::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(baton_store::Error::backend_msg("injected write failure"));
        }
        self.inner.commit(batch).await
    }
    async fn recover(&self) -> baton_store::Result<Recovery> {
        self.inner.recover().await
    }
    async fn task(&self, id: &TaskId) -> baton_store::Result<Option<(Task, Vec<Subtask>)>> {
        self.inner.task(id).await
    }
    async fn timeline(&self, id: &TaskId) -> baton_store::Result<Vec<Event>> {
        self.inner.timeline(id).await
    }
    async fn list_tasks(&self, q: &TaskQuery) -> baton_store::Result<Vec<Task>> {
        self.inner.list_tasks(q).await
    }
    async fn assignment(
        &self,
        id: &AssignmentId,
    ) -> baton_store::Result<Option<baton_core::Assignment>> {
        self.inner.assignment(id).await
    }
    async fn publish_workflow(
        &self,
        name: &str,
        definition: &serde_json::Value,
        now: baton_core::Millis,
    ) -> baton_store::Result<baton_store::StoredWorkflow> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(baton_store::Error::backend_msg("injected write failure"));
        }
        self.inner.publish_workflow(name, definition, now).await
    }
    async fn workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> baton_store::Result<Option<baton_store::StoredWorkflow>> {
        self.inner.workflow(name, version).await
    }
    async fn workflows(&self) -> baton_store::Result<Vec<baton_store::StoredWorkflow>> {
        self.inner.workflows().await
    }
    async fn task_detail(
        &self,
        id: &TaskId,
    ) -> baton_store::Result<Option<baton_store::TaskDetail>> {
        self.inner.task_detail(id).await
    }
    async fn escalations(
        &self,
        query: &baton_store::EscalationQuery,
    ) -> baton_store::Result<Vec<baton_core::Escalation>> {
        self.inner.escalations(query).await
    }
    async fn escalation(&self, id: &str) -> baton_store::Result<Option<baton_core::Escalation>> {
        self.inner.escalation(id).await
    }
}

async fn start(
    dir: &std::path::Path,
    fail: Arc<AtomicBool>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let store = FailingStore {
        inner: SqliteStore::open(dir).unwrap(),
        fail,
    };
    let server = Server::with_store(Arc::new(store), baton_engine::Config::default(), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

fn task(id: &str) -> serde_json::Value {
    json!({"task_id": id, "title": "t", "description": "d",
           "plan": {"subtasks": [{"id": "s", "capability": "nobody"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_stops_changes_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let (url, stop) = start(dir.path(), fail.clone()).await;
    let http = reqwest::Client::new();
    let post =
        |path: &str, body: serde_json::Value| http.post(format!("{url}{path}")).json(&body).send();

    assert_eq!(
        post("/orchestrate", task("kept")).await.unwrap().status(),
        201
    );
    fail.store(true, Ordering::SeqCst);
    let refused = post("/orchestrate", task("lost")).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");

    // The disk is fine again, but the engine stays stopped: its memory may be ahead of the store.
    fail.store(false, Ordering::SeqCst);
    assert_eq!(
        post("/orchestrate", task("after")).await.unwrap().status(),
        503
    );
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    // Committed reads still work; nothing of the failed commit is visible.
    assert_eq!(
        http.get(format!("{url}/tasks/kept"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{url}/tasks/lost"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let _ = stop.send(());

    // A restart recovers from the store and accepts changes again.
    let (url, stop) = start(dir.path(), fail).await;
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let again = http
        .post(format!("{url}/orchestrate"))
        .json(&task("lost"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        201,
        "the failed submission was never stored"
    );
    let kept = http
        .post(format!("{url}/orchestrate"))
        .json(&task("kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 200, "the committed task survived");
    let _ = stop.send(());
}
