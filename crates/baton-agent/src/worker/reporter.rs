//! The results path of a run: finished jobs hand their result to one reporter task, which posts
//! them in batches and answers each job with the server's verdict on its result.
//!
//! Invariants:
//! - one `results` call is in flight at a time; everything that queued meanwhile (up to
//!   [`RESULTS_PER_CALL`]) goes in the next one, so a busy agent makes one call for many results;
//! - every batch carries the current `held` set, so posting results also renews the leases of
//!   the jobs still running;
//! - transient failures are retried (see [`retrying`]); every pending result gets exactly one
//!   answer: its outcome, or why the batch could not be posted.

use std::sync::Arc;

use baton_api::{ResultItem, ResultOutcome, ResultsRequest};
use tokio::sync::{mpsc, oneshot};

use super::retry::retrying;
use super::Session;

/// Most results posted in one call.
const RESULTS_PER_CALL: usize = 512;

/// A result waiting to be posted, and who waits for the server's answer.
pub(super) struct PendingResult {
    pub(super) item: ResultItem,
    pub(super) answer: oneshot::Sender<Result<ResultOutcome, String>>,
}

/// Posts results as they come: everything that queued while the previous call was in flight
/// goes in the next one, so a busy agent makes one call for many results.
pub(super) async fn reporter_loop(
    session: Arc<Session>,
    mut queue: mpsc::UnboundedReceiver<PendingResult>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < RESULTS_PER_CALL {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let request = ResultsRequest {
            results: batch.iter().map(|p| p.item.clone()).collect(),
            held: Some(session.held()),
        };
        let answer = retrying("results", || {
            session
                .client
                .results(&session.agent_id, &session.token, &request)
        })
        .await;
        match answer {
            Ok(reply) if reply.results.len() == batch.len() => {
                for (pending, outcome) in batch.into_iter().zip(reply.results) {
                    let _ = pending.answer.send(Ok(outcome));
                }
            }
            Ok(reply) => {
                let error = format!(
                    "the server answered {} outcomes for {} results",
                    reply.results.len(),
                    batch.len()
                );
                for pending in batch {
                    let _ = pending.answer.send(Err(error.clone()));
                }
            }
            Err(error) => {
                let error = error.to_string();
                for pending in batch {
                    let _ = pending.answer.send(Err(error.clone()));
                }
            }
        }
    }
}
