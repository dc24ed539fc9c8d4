//! Baton's HTTP API (axum): the seed-compatible REST surface for clients and the HTTP pull
//! protocol for agents.
//!
//! Invariants: only this crate knows axum. Handlers hand every body to the engine's intake
//! (`baton_engine::intake`), which reads it into its `baton-api` type and lists every bad
//! field in one 400 before anything changes; they send writes through the engine [`Handle`]
//! (so a 2xx answer means committed) and serve task reads from the store's committed state.
//! No client input can cause a panic or a 500.

mod convert;
mod error;
mod extract;
mod http;
mod planning;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use baton_engine::Handle;
use baton_store::{SqliteStore, Store};

pub use error::ApiError;
pub use planning::{LlmConfig, Planning, DEFAULT_LLM_TIMEOUT};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Handle,
    pub store: Arc<dyn Store>,
    pub planning: Arc<Planning>,
}

/// The router with every route of the API.
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Settings of an embedded server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the SQLite database lives.
    pub data_dir: PathBuf,
    pub engine: baton_engine::Config,
    /// The LLM planner; off when `None`.
    pub llm: Option<LlmConfig>,
}

/// Failures while starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] baton_store::Error),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// An opened store with a running engine, ready to serve.
pub struct Server {
    state: AppState,
    engine: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Open (or create) the database under `options.data_dir`, recover, and start the engine.
    pub async fn open(options: Options) -> Result<Server, Error> {
        let dir = options.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let store: Arc<dyn Store> = Arc::new(store);
        Self::with_store(store, options.engine, options.llm).await
    }

    /// Start an engine on any store.
    pub async fn with_store(
        store: Arc<dyn Store>,
        config: baton_engine::Config,
        llm: Option<LlmConfig>,
    ) -> Result<Server, Error> {
        let planning = Arc::new(Planning::load(store.as_ref(), llm).await?);
        let (engine, join) = baton_engine::start(config, store.clone()).await?;
        Ok(Server {
            state: AppState {
                engine,
                store,
                planning,
            },
            engine: join,
        })
    }

    /// The state handlers use (for tests that drive the router directly).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serve on `listener` until `shutdown` resolves, then stop the engine after it has
    /// committed what it accepted.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let engine = self.state.engine.clone();
        let quiesce = engine.clone();
        let router = app(self.state);
        // Parked long polls are answered as soon as shutdown starts, so it never waits them out.
        let shutdown = async move {
            shutdown.await;
            quiesce.quiesce().await;
        };
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        engine.shutdown().await;
        drop(engine);
        let _ = self.engine.await;
        Ok(())
    }
}
