//! Group commit. The engine hands over one [`Flush`] per loop turn; the committer merges every
//! flush that queued up while the previous transaction was running into one transaction (one
//! fsync), and only then runs their deferred replies. After a failed commit it refuses all
//! later flushes, since they were built on state that never became durable (fail-stop).

use std::sync::Arc;

use baton_store::{Store, WriteBatch};
use tokio::sync::mpsc;

/// A deferred reply: called with `None` once its writes are durable, or with the error.
pub(crate) type Deferred = Box<dyn FnOnce(Option<&str>) + Send>;

/// The writes and replies of one engine turn.
pub(crate) struct Flush {
    pub no: u64,
    pub batch: WriteBatch,
    pub replies: Vec<Deferred>,
}

/// What the committer tells the engine.
pub(crate) enum Outcome {
    /// Everything up to and including flush `no` is durable.
    Durable(u64),
    /// A commit failed; the engine must stop accepting changes.
    Failed(String),
}

pub(crate) async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Flush>,
    engine: mpsc::UnboundedSender<Outcome>,
) {
    let mut failed: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut last = first.no;
        let mut batch = first.batch;
        let mut replies = first.replies;
        while let Ok(more) = rx.try_recv() {
            last = more.no;
            batch.extend(more.batch);
            replies.extend(more.replies);
        }
        if failed.is_none() && !batch.is_empty() {
            let rows = batch.events.len();
            if let Err(e) = store.commit(batch).await {
                tracing::error!(error = %e, flush = last, events = rows, "commit failed; refusing further changes");
                failed = Some(e.to_string());
                let _ = engine.send(Outcome::Failed(e.to_string()));
            }
        }
        match &failed {
            None => {
                for reply in replies {
                    reply(None);
                }
                let _ = engine.send(Outcome::Durable(last));
            }
            Some(error) => {
                for reply in replies {
                    reply(Some(error));
                }
            }
        }
    }
}
