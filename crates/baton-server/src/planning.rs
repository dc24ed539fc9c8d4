//! Planning at the edge: the workflow catalog the intake resolves `task_type` against, and the
//! optional LLM planner that replaces a rule-based plan before the task reaches the engine.
//!
//! Invariants:
//! - The catalog holds the latest published version of each workflow; the built-in workflows
//!   are published as version 1 the first time a store is opened, so they are listed and
//!   versioned like any other.
//! - The LLM planner is asked at most once per task: a submission of a client-chosen id waits
//!   for any other submission of the same id being planned, and one that finds the task
//!   already stored is not planned again. Every failure falls back to the rule-based plan.
//! - The API key is only ever put in the request's `Authorization` header: it is not in any
//!   log line, error or response (`LlmConfig`'s `Debug` prints it redacted).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use baton_core::planner::llm;
use baton_core::{PlannerRecord, TaskContext, TaskId};
use baton_engine::intake::{Catalog, NewTask, Published};
use baton_engine::Handle;
use baton_store::Store;

/// Default time the LLM planner may take (`BATON_LLM_TIMEOUT_MS`).
pub const DEFAULT_LLM_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest LLM answer read.
const MAX_LLM_ANSWER: usize = 1024 * 1024;
/// LLM requests in flight at once (a batch of many tasks queues behind these).
const MAX_LLM_IN_FLIGHT: usize = 16;

/// Where the LLM planner is (any OpenAI-compatible chat-completions API).
#[derive(Clone)]
pub struct LlmConfig {
    /// Base URL; Baton posts to `{url}/chat/completions`.
    pub url: String,
    pub model: String,
    /// Sent as a bearer token; never logged.
    pub api_key: Option<String>,
    pub timeout: Duration,
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The catalog, the LLM planner, and the submissions being planned.
pub struct Planning {
    catalog: RwLock<Catalog>,
    llm: Option<Llm>,
    /// Client-chosen task ids whose submission is being planned by the LLM.
    planning: tokio::sync::Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
}

struct Llm {
    config: LlmConfig,
    http: reqwest::Client,
    in_flight: tokio::sync::Semaphore,
}

impl Planning {
    /// Publish the built-in workflows the store does not have yet, and load the catalog.
    pub async fn load(
        store: &dyn Store,
        llm: Option<LlmConfig>,
    ) -> Result<Planning, baton_store::Error> {
        for definition in baton_engine::intake::planning::builtins() {
            if store.workflow(&definition.name, None).await?.is_none() {
                let value = serde_json::to_value(&definition)
                    .map_err(|e| baton_store::Error::backend("encoding a workflow", e))?;
                store
                    .publish_workflow(&definition.name, &value, baton_engine::now_ms())
                    .await?;
                tracing::info!(workflow = %definition.name, "built-in workflow published");
            }
        }
        let mut catalog = Catalog::default();
        for stored in store.workflows().await? {
            match Published::from_stored(&stored) {
                Ok(p) => catalog.insert(p),
                Err(e) => {
                    tracing::error!(workflow = %stored.name, version = stored.version, error = ?e, "stored workflow no longer valid; not loaded")
                }
            }
        }
        let llm = llm.map(|config| Llm {
            http: reqwest::Client::builder()
                .timeout(config.timeout)
                .build()
                .unwrap_or_default(),
            config,
            in_flight: tokio::sync::Semaphore::new(MAX_LLM_IN_FLIGHT),
        });
        if let Some(l) = &llm {
            tracing::info!(url = %l.config.url, model = %l.config.model, "LLM planner configured");
        }
        Ok(Planning {
            catalog: RwLock::new(catalog),
            llm,
            planning: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Run `f` with the catalog.
    pub fn with_catalog<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        let catalog = self.catalog.read().unwrap_or_else(|e| e.into_inner());
        f(&catalog)
    }

    /// Record a newly published version.
    pub fn published(&self, p: Published) {
        let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        catalog.insert(p);
    }

    /// Submit `new` through the engine, after the LLM planner had its say on a rule-based
    /// plan (at most once per task id).
    pub async fn submit(
        &self,
        engine: &Handle,
        store: &dyn Store,
        mut new: NewTask,
    ) -> Result<baton_engine::Submitted, baton_engine::Error> {
        if self.llm.is_none() || !matches!(new.context.planner, Some(PlannerRecord::Rules { .. })) {
            return engine.submit(new).await;
        }
        let Some(task_id) = new.task_id.clone() else {
            self.plan_with_llm(engine, &mut new).await;
            return engine.submit(new).await;
        };
        let lock = {
            let mut planning = self.planning.lock().await;
            planning.entry(task_id.clone()).or_default().clone()
        };
        let result = {
            let _held = lock.lock().await;
            // Planned before (or by a submission this one waited for): the engine compares the
            // bodies; the LLM is not asked again.
            let known = store
                .task(&task_id)
                .await
                .map_err(|e| baton_engine::Error::Unavailable(e.to_string()))?;
            if known.is_none() {
                self.plan_with_llm(engine, &mut new).await;
            }
            engine.submit(new).await
        };
        let mut planning = self.planning.lock().await;
        if Arc::strong_count(&lock) == 2 {
            planning.remove(&task_id);
        }
        result
    }

    /// The plan `new` would run with (the LLM asked as a submission would), creating nothing.
    pub async fn preview(&self, engine: &Handle, mut new: NewTask) -> NewTask {
        if matches!(new.context.planner, Some(PlannerRecord::Rules { .. })) {
            self.plan_with_llm(engine, &mut new).await;
        }
        new
    }

    /// Ask the LLM for a plan of `new`; on success it replaces the rule-based plan, on any
    /// failure the rule-based plan stays and the reason is recorded.
    async fn plan_with_llm(&self, engine: &Handle, new: &mut NewTask) {
        let Some(llm) = &self.llm else { return };
        let mut offered: BTreeSet<String> =
            self.with_catalog(|c| c.capabilities().map(str::to_owned).collect());
        if let Ok(agents) = engine.agents().await {
            for a in agents {
                offered.extend(a.agent.capabilities);
            }
        }
        let matched = match new.context.planner.take() {
            Some(PlannerRecord::Rules { matched }) => matched,
            _ => Default::default(),
        };
        let task = new
            .task_id
            .as_ref()
            .map_or("(new)", |t| t.as_str())
            .to_owned();
        match llm.ask(new, &offered).await {
            Ok(plan) => {
                tracing::info!(task_id = %task, steps = plan.plan.steps.len(), "LLM plan accepted");
                new.plan = plan.plan;
                new.context = TaskContext {
                    planner: Some(PlannerRecord::Llm {
                        model: llm.config.model.clone(),
                    }),
                    objectives: plan.objectives,
                    constraints: plan.constraints,
                    acceptance_criteria: plan.acceptance_criteria,
                    ..std::mem::take(&mut new.context)
                };
            }
            Err(reason) => {
                tracing::warn!(task_id = %task, reason = %reason, "LLM planner failed; using the rule-based plan");
                new.context.planner = Some(PlannerRecord::LlmFallback { reason, matched });
            }
        }
    }
}

impl Llm {
    /// One request; the reason on any failure (without the key, which only the header holds).
    async fn ask(&self, new: &NewTask, offered: &BTreeSet<String>) -> Result<llm::LlmPlan, String> {
        let capabilities: Vec<String> = offered.iter().cloned().collect();
        let metadata = new
            .context
            .metadata
            .clone()
            .unwrap_or(serde_json::Value::Null);
        let body = llm::request_body(
            &self.config.model,
            &new.title,
            &new.description,
            &metadata,
            &capabilities,
        );
        let url = format!("{}/chat/completions", self.config.url.trim_end_matches('/'));
        // The timeout runs from the request on, not while waiting for a turn.
        let _turn = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| "the LLM planner is shutting down".to_owned())?;
        let mut request = self.http.post(&url).json(&body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let timeout_ms = self.config.timeout.as_millis();
        let mut response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {timeout_ms} ms")
            } else if e.is_connect() {
                "could not connect to the LLM endpoint".to_owned()
            } else {
                "the request to the LLM endpoint failed".to_owned()
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "the LLM endpoint answered HTTP {}",
                status.as_u16()
            ));
        }
        let mut answer = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if answer.len() + chunk.len() > MAX_LLM_ANSWER {
                        return Err(format!("the answer is larger than {MAX_LLM_ANSWER} bytes"));
                    }
                    answer.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(format!("no answer within {timeout_ms} ms"))
                }
                Err(_) => return Err("the answer was cut off".to_owned()),
            }
        }
        llm::parse_response(&answer, offered)
    }
}
