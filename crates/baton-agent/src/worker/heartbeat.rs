//! The heartbeat of a run: a task of its own that tells the server the agent is alive (and
//! which assignments it still holds) and tells the event loop what the server answered.
//!
//! Invariants:
//! - it beats every `heartbeat_every`; a late beat delays the next one rather than bursting;
//! - transient failures are retried (see [`retrying`]) until the server answers;
//! - it only reports to the event loop ([`HeartbeatEvent`]); it never touches the jobs itself;
//! - after a [`HeartbeatEvent::Fatal`], or once the event loop is gone, it stops.

use std::sync::Arc;
use std::time::Duration;

use baton_api::HeartbeatRequest;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use super::retry::retrying;
use super::Session;
use crate::client::Error;

/// What the heartbeat task tells the event loop.
pub(super) enum HeartbeatEvent {
    /// Abandon these assignments.
    Revoked(Vec<String>),
    /// The server stopped the agent: take no more work.
    Stopped,
    /// The agent is unknown or its token refused.
    Fatal(Error),
}

/// Heartbeats every `every` until the run ends (the task is aborted) or the agent is refused.
pub(super) async fn heartbeat_loop(
    session: Arc<Session>,
    every: Duration,
    events: mpsc::Sender<HeartbeatEvent>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let answer = retrying("heartbeat", || {
            let request = HeartbeatRequest {
                held: Some(session.held()),
            };
            let session = session.clone();
            async move {
                session
                    .client
                    .heartbeat(&session.agent_id, &session.token, &request)
                    .await
            }
        })
        .await;
        let mut out = Vec::new();
        match answer {
            Ok(reply) => {
                debug!(status = %reply.status, revoked = reply.revoked.len(), "heartbeat");
                if !reply.revoked.is_empty() {
                    out.push(HeartbeatEvent::Revoked(reply.revoked));
                }
                if reply.status == "stopped" {
                    out.push(HeartbeatEvent::Stopped);
                }
            }
            Err(error) if error.is_conflict() => out.push(HeartbeatEvent::Stopped),
            Err(error) if matches!(error.status(), Some(401 | 403 | 404)) => {
                out.push(HeartbeatEvent::Fatal(error));
            }
            Err(error) => warn!(%error, "heartbeat refused"),
        }
        for event in out {
            let fatal = matches!(event, HeartbeatEvent::Fatal(_));
            if events.send(event).await.is_err() || fatal {
                return;
            }
        }
    }
}
