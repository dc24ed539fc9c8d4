//! Where a task's plan comes from, as intake rules: a client plan, a published workflow (by
//! `task_type` or `POST /workflows/{id}/execute`), or the rule-based planner; and the rules of
//! a workflow definition itself.
//!
//! Invariants:
//! - A client plan, a workflow's steps and a replaced plan are read by one conversion
//!   ([`steps`]) and checked by one rule set ([`workflow::check_steps`]), so a step means the
//!   same wherever it is written.
//! - The [`Catalog`] holds the latest version of each workflow; a task copies the plan of the
//!   version it started with, so publishing never disturbs running tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use baton_api as api;
use baton_core::plan::{Plan, PlanStep};
use baton_core::workflow::{self, ParamSpec, ParamType, Workflow};
use baton_core::{planner, Millis, PlannerRecord, StepRules, TaskContext};
use serde_json::{Map, Value};

use super::{accept, Issues, Rejection};

/// Longest accepted per-step timeout (7 days).
const MAX_STEP_TIMEOUT_S: u64 = 7 * 24 * 3600;
/// Most attempts a step may ask for.
const MAX_STEP_ATTEMPTS: u32 = 100;
/// Longest workflow description.
const MAX_WORKFLOW_DESCRIPTION: usize = 20_000;

/// One published version of a workflow, validated.
#[derive(Clone, Debug)]
pub struct Published {
    pub workflow: Arc<Workflow>,
    pub version: u32,
    pub created_at: Millis,
    /// The definition as published (what `GET /workflows/{id}` shows).
    pub definition: Arc<api::WorkflowDef>,
}

/// The latest version of every workflow, by name: what `task_type` resolves against.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    latest: HashMap<String, Published>,
}

impl Catalog {
    /// Record `p` unless a newer version of its name is known.
    pub fn insert(&mut self, p: Published) {
        let name = p.workflow.name.clone();
        match self.latest.get(&name) {
            Some(known) if known.version >= p.version => {}
            _ => {
                self.latest.insert(name, p);
            }
        }
    }

    /// The built-in workflows as version 1 each: what a new store starts with.
    pub fn builtin() -> Catalog {
        let mut catalog = Catalog::default();
        for definition in builtins() {
            let bytes = serde_json::to_vec(&definition).unwrap_or_default();
            if let Ok((workflow, definition)) = read_definition(&bytes) {
                catalog.insert(Published {
                    workflow: Arc::new(workflow),
                    version: 1,
                    created_at: 0,
                    definition: Arc::new(definition),
                });
            }
        }
        catalog
    }

    pub fn get(&self, name: &str) -> Option<&Published> {
        self.latest.get(name)
    }

    /// Every capability some workflow step names.
    pub fn capabilities(&self) -> impl Iterator<Item = &str> {
        self.latest
            .values()
            .flat_map(|p| p.workflow.steps.iter().map(|s| s.capability.as_str()))
    }
}

/// Read the steps of a client plan or a workflow (at `at`: `plan.subtasks`, `steps`):
/// input must be an object, `verify` and `approval` `true`/`false` or an object, limits in
/// range. The graph and references are checked by [`workflow::check_steps`].
pub fn steps(list: Vec<api::ClientStep>, at: &str, issues: &mut Issues) -> Vec<PlanStep> {
    let mut out = Vec::with_capacity(list.len());
    for (i, step) in list.into_iter().enumerate() {
        let here = format!("{at}[{i}]");
        let input = match step.input {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                issues.add(format!("{here}.input"), "must be an object");
                Map::new()
            }
        };
        for (field, value) in [("verify", &step.verify), ("approval", &step.approval)] {
            if value
                .as_ref()
                .is_some_and(|v| !(v.is_boolean() || v.is_object()))
            {
                issues.add(
                    format!("{here}.{field}"),
                    "must be true, false or an object",
                );
            }
        }
        if let Some(t) = step.timeout_s {
            if !(1..=MAX_STEP_TIMEOUT_S).contains(&t) {
                issues.add(
                    format!("{here}.timeout_s"),
                    format!("must be an integer from 1 to {MAX_STEP_TIMEOUT_S}"),
                );
            }
        }
        if let Some(n) = step.max_attempts {
            if !(1..=MAX_STEP_ATTEMPTS).contains(&n) {
                issues.add(
                    format!("{here}.max_attempts"),
                    format!("must be an integer from 1 to {MAX_STEP_ATTEMPTS}"),
                );
            }
        }
        let on_exhausted =
            super::policy(issues, &format!("{here}.on_exhausted"), step.on_exhausted);
        let rules = StepRules {
            when: step.when,
            // `false` means no verification / no gate: stored as absent.
            verify: step.verify.filter(|v| v != &Value::Bool(false)),
            approval: step.approval.filter(|v| v != &Value::Bool(false)),
            timeout_ms: step.timeout_s.map(|s| s.saturating_mul(1000)),
            max_attempts: step.max_attempts,
            on_exhausted,
        };
        out.push(PlanStep {
            key: step.id,
            capability: step.capability,
            depends_on: step.depends_on,
            input,
            rules: (rules != StepRules::default()).then(|| Box::new(rules)),
        });
    }
    out
}

/// The body of `PUT /tasks/{id}/plan`: its steps may reference metadata, the task, upstream
/// steps and the task's `params` (fixed at submission).
pub fn replacement_plan(
    plan: api::ClientPlan,
    params: &Map<String, Value>,
    issues: &mut Issues,
) -> Option<Plan> {
    let declared: BTreeMap<String, ParamSpec> = params
        .keys()
        .map(|k| (k.clone(), ParamSpec::default()))
        .collect();
    checked_plan(plan, &declared, issues)
}

/// The `plan` of a submission with its `params` (an object, or absent), which its steps may
/// reference as `${params.<name>}`.
pub fn client_plan_with(
    plan: api::ClientPlan,
    params: Option<Value>,
    issues: &mut Issues,
) -> Option<(Plan, TaskContext)> {
    let params = match params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            issues.add("params", "must be an object");
            return None;
        }
    };
    let plan = replacement_plan(plan, &params, issues)?;
    let context = TaskContext {
        params,
        planner: Some(PlannerRecord::Client),
        ..TaskContext::default()
    };
    Some((plan, context))
}

fn checked_plan(
    plan: api::ClientPlan,
    params: &BTreeMap<String, ParamSpec>,
    issues: &mut Issues,
) -> Option<Plan> {
    let steps = steps(plan.subtasks, "plan.subtasks", issues);
    let before = issues.len();
    for problem in workflow::check_steps(&steps, "plan.subtasks", params) {
        issues.add(problem.field, problem.issue);
    }
    (issues.len() == before).then_some(Plan { steps })
}

/// `POST /workflows`: the definition, validated, with the definition as published.
pub fn workflow(
    req: api::WorkflowDef,
    issues: &mut Issues,
) -> Option<(Workflow, api::WorkflowDef)> {
    let definition = req.clone();
    if let Some(d) = &req.description {
        if d.chars().count() > MAX_WORKFLOW_DESCRIPTION {
            issues.add(
                "description",
                format!("must be at most {MAX_WORKFLOW_DESCRIPTION} characters"),
            );
        }
    }
    let mut params = BTreeMap::new();
    for (name, def) in req.params {
        let kind = def.kind.as_deref().and_then(|k| {
            let parsed = ParamType::parse(k);
            if parsed.is_none() {
                issues.add(
                    format!("params.{name}.type"),
                    "must be string, number, integer, boolean, object or array",
                );
            }
            parsed
        });
        let spec = ParamSpec {
            kind,
            default: def.default.filter(|v| !v.is_null()),
            required: def.required.unwrap_or(false),
        };
        params.insert(name, spec);
    }
    let steps = steps(req.steps, "steps", issues);
    let workflow = Workflow {
        name: req.name,
        description: req.description,
        params,
        steps,
    };
    for problem in workflow.validate() {
        issues.add(problem.field, problem.issue);
    }
    issues.is_empty().then_some((workflow, definition))
}

/// The plan of a submission that brought none: the workflow `task_type` names (with `params`),
/// else the rule-based planner. Returns the plan and the context it sets.
pub fn plan_for(
    task_type: Option<&str>,
    params: Option<Value>,
    title: &str,
    description: &str,
    catalog: &Catalog,
    issues: &mut Issues,
) -> Option<(Plan, TaskContext)> {
    if let Some(published) = task_type.and_then(|t| catalog.get(t)) {
        return instantiate(published, params, issues);
    }
    if params.is_some() {
        issues.add(
            "params",
            "params are for a task_type that names a workflow (see GET /workflows)",
        );
        return None;
    }
    let rules = planner::rules(title, description);
    let context = TaskContext {
        planner: Some(PlannerRecord::Rules {
            matched: rules.matched,
        }),
        ..TaskContext::default()
    };
    Some((rules.plan, context))
}

/// The plan of one run of `published` with `params` (an object, or absent).
pub fn instantiate(
    published: &Published,
    params: Option<Value>,
    issues: &mut Issues,
) -> Option<(Plan, TaskContext)> {
    let given = match params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            issues.add("params", "must be an object");
            return None;
        }
    };
    match published.workflow.instantiate(&given) {
        Ok((plan, params)) => Some((
            plan,
            TaskContext {
                params,
                planner: Some(PlannerRecord::Workflow {
                    name: published.workflow.name.clone(),
                    version: published.version,
                }),
                ..TaskContext::default()
            },
        )),
        Err(problems) => {
            for p in problems {
                issues.add(p.field, p.issue);
            }
            None
        }
    }
}

/// The workflows every Baton has from its first start (`crates/baton-engine/workflows/`).
const BUILTIN: [&str; 3] = [
    include_str!("../../workflows/create_blog_post.yaml"),
    include_str!("../../workflows/feature_development.yaml"),
    include_str!("../../workflows/bug_fix.yaml"),
];

/// The built-in workflows' definitions, as `POST /workflows` would read them.
pub fn builtins() -> Vec<api::WorkflowDef> {
    BUILTIN
        .iter()
        .filter_map(
            |text| match read_definition(&yaml_to_json(text.as_bytes()).ok()?) {
                Ok((_, def)) => Some(def),
                Err(e) => {
                    // Only a broken build gets here; a unit test keeps the files valid.
                    tracing::error!(error = ?e, "invalid built-in workflow");
                    None
                }
            },
        )
        .collect()
}

/// Read and validate a workflow definition from JSON bytes.
pub fn read_definition(bytes: &[u8]) -> Result<(Workflow, api::WorkflowDef), Rejection> {
    accept(bytes, workflow)
}

impl Published {
    /// A stored version, validated again (it was valid when published).
    pub fn from_stored(stored: &baton_store::StoredWorkflow) -> Result<Published, Rejection> {
        let bytes = serde_json::to_vec(&stored.definition)
            .map_err(|e| Rejection::Malformed(e.to_string()))?;
        let (workflow, definition) = read_definition(&bytes)?;
        Ok(Published {
            workflow: Arc::new(workflow),
            version: stored.version,
            created_at: stored.created_at,
            definition: Arc::new(definition),
        })
    }
}

/// A YAML document as JSON bytes, for [`accept`] (`Content-Type: application/yaml`), so the
/// same rules apply to both. Duplicate keys and several documents are refused; scalar keys
/// become strings, as JSON has them.
pub fn yaml_to_json(bytes: &[u8]) -> Result<Vec<u8>, Rejection> {
    // Through YAML's own value first: it refuses duplicate keys (serde_json's map would keep
    // the last one silently).
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_slice(bytes)
        .map_err(|e| Rejection::Malformed(format!("invalid YAML: {e}")))?;
    serde_json::to_vec(&value).map_err(|e| Rejection::Malformed(format!("invalid YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid() {
        let names: Vec<String> = builtins().into_iter().map(|d| d.name).collect();
        assert_eq!(
            names,
            ["create_blog_post", "feature_development", "bug_fix"]
        );
    }

    #[test]
    fn the_example_workflows_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/workflows");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).expect("examples/workflows") {
            let path = entry.unwrap().path();
            let text = std::fs::read(&path).unwrap();
            let json = match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => yaml_to_json(&text).unwrap(),
                _ => text,
            };
            let (wf, _) = read_definition(&json).unwrap_or_else(|e| panic!("{path:?}: {e:?}"));
            names.push(wf.name);
        }
        names.sort();
        assert_eq!(names, ["release_notes", "research_brief"]);
    }

    #[test]
    fn yaml_reads_like_json_and_refuses_what_json_cannot_say() {
        let json = yaml_to_json(b"name: w\nsteps:\n  - id: a\n    capability: c\n").unwrap();
        let (wf, _) = read_definition(&json).unwrap();
        assert_eq!(wf.steps[0].capability, "c");
        for bad in [
            &b"name: w\nname: x\n"[..],
            b"a: [unclosed\n",
            b"---\na: 1\n---\nb: 2\n",
        ] {
            assert!(
                matches!(yaml_to_json(bad), Err(Rejection::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
