//! Workflows: named plan templates with parameters, conditions and references, and the rules
//! that turn a step into what its agent receives.
//!
//! A workflow (or a client plan, which is checked by the same rules) is a list of
//! [`PlanStep`]s whose `input` may hold `${...}` references (see [`crate::expr`]) and whose
//! `rules.when` is a condition over the same values. Validation lists every problem at once;
//! at run time a step's condition and input are resolved against the task's context and the
//! outputs of the steps it references.
//!
//! Invariants:
//! - A step references only params the workflow declares and steps upstream of it (reachable
//!   through `depends_on`), so at run time every referenced step is terminal: references are
//!   checked when a workflow is published, never discovered when a task runs.
//! - Resolution is a pure function of the task, its subtasks' stored outputs and the step, so
//!   the engine (dispatching) and a reader (`GET /tasks/{id}`) compute the same input.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use crate::expr::{self, Expr, Ref};
use crate::ids::check_name;
use crate::plan::{Plan, PlanIssue, PlanStep};
use crate::{Subtask, Task};

/// Longest workflow name.
pub const MAX_NAME: usize = 128;

/// The type a parameter's value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
}

impl ParamType {
    /// `string | number | integer | boolean | object | array`.
    pub fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "string" => ParamType::String,
            "number" => ParamType::Number,
            "integer" => ParamType::Integer,
            "boolean" => ParamType::Boolean,
            "object" => ParamType::Object,
            "array" => ParamType::Array,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Number => "number",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
            ParamType::Object => "object",
            ParamType::Array => "array",
        }
    }

    /// Whether `value` has this type.
    pub fn matches(self, value: &Value) -> bool {
        match self {
            ParamType::String => value.is_string(),
            ParamType::Number => value.is_number(),
            ParamType::Integer => value.is_i64() || value.is_u64(),
            ParamType::Boolean => value.is_boolean(),
            ParamType::Object => value.is_object(),
            ParamType::Array => value.is_array(),
        }
    }
}

/// One declared parameter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamSpec {
    pub kind: Option<ParamType>,
    pub default: Option<Value>,
    pub required: bool,
}

/// A validated workflow definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub params: BTreeMap<String, ParamSpec>,
    pub steps: Vec<PlanStep>,
}

fn issue(field: impl Into<String>, issue: impl Into<String>) -> PlanIssue {
    PlanIssue {
        field: field.into(),
        issue: issue.into(),
    }
}

impl Workflow {
    /// Every problem of the definition: its name, its parameters, and its steps (see
    /// [`check_steps`]); empty when it is valid.
    pub fn validate(&self) -> Vec<PlanIssue> {
        let mut issues = Vec::new();
        if self.name.chars().count() > MAX_NAME {
            issues.push(issue(
                "name",
                format!("must be at most {MAX_NAME} characters"),
            ));
        } else if let Some(problem) = check_name(&self.name, true) {
            issues.push(issue("name", problem));
        }
        for (name, spec) in &self.params {
            let at = format!("params.{name}");
            if !is_ref_segment(name) {
                issues.push(issue(
                    at.clone(),
                    "a parameter name uses only letters, digits, - and _",
                ));
            }
            if let (Some(kind), Some(default)) = (spec.kind, &spec.default) {
                if !kind.matches(default) {
                    issues.push(issue(
                        format!("{at}.default"),
                        format!("must be of type {}", kind.as_str()),
                    ));
                }
            }
        }
        issues.extend(check_steps(&self.steps, "steps", &self.params));
        issues
    }

    /// The plan of one run with the `given` parameters, and the parameters with defaults
    /// applied; or every problem with them, under `params.<name>`.
    pub fn instantiate(
        &self,
        given: &Map<String, Value>,
    ) -> Result<(Plan, Map<String, Value>), Vec<PlanIssue>> {
        let mut issues = Vec::new();
        for name in given.keys() {
            if !self.params.contains_key(name) {
                let declared: Vec<&str> = self.params.keys().map(String::as_str).collect();
                let known = if declared.is_empty() {
                    "this workflow declares no parameters".to_owned()
                } else {
                    format!("declared: {}", declared.join(", "))
                };
                issues.push(issue(
                    format!("params.{name}"),
                    format!("unknown parameter ({known})"),
                ));
            }
        }
        let mut params = Map::new();
        for (name, spec) in &self.params {
            let value = match given.get(name).filter(|v| !v.is_null()) {
                Some(v) => Some(v.clone()),
                None => spec.default.clone(),
            };
            match value {
                Some(v) => {
                    if let Some(kind) = spec.kind.filter(|k| !k.matches(&v)) {
                        issues.push(issue(
                            format!("params.{name}"),
                            format!("must be of type {}", kind.as_str()),
                        ));
                    }
                    params.insert(name.clone(), v);
                }
                None if spec.required => {
                    issues.push(issue(format!("params.{name}"), "is required"));
                }
                None => {}
            }
        }
        if issues.is_empty() {
            let plan = Plan {
                steps: self.steps.clone(),
            };
            Ok((plan, params))
        } else {
            Err(issues)
        }
    }
}

/// Whether `s` can be one segment of a reference (`[A-Za-z0-9_-]+`).
fn is_ref_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Every problem of a list of steps at `list` (`steps`, `plan.subtasks`): the graph (see
/// [`Plan::validate`]), each `${...}` reference of an input, each `when` expression, and what
/// they reference: a param not in `params`, a step that does not exist or is not upstream.
pub fn check_steps(
    steps: &[PlanStep],
    list: &str,
    params: &BTreeMap<String, ParamSpec>,
) -> Vec<PlanIssue> {
    let plan = Plan {
        steps: steps.to_vec(),
    };
    let mut issues = plan.validate(list);
    let graph_ok = issues.is_empty();
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key.as_str(), i))
        .collect();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{list}[{i}]");
        let mut refs: Vec<(String, Ref)> = Vec::new();
        for (path, parsed) in expr::template_refs(&Value::Object(step.input.clone())) {
            match parsed {
                Ok(r) => refs.push((format!("{at}.{path}"), r)),
                Err(problem) => issues.push(issue(format!("{at}.{path}"), problem)),
            }
        }
        if let Some(when) = step.rules.as_ref().and_then(|r| r.when.as_deref()) {
            match Expr::parse(when) {
                Ok(e) => refs.extend(
                    e.refs()
                        .into_iter()
                        .map(|r| (format!("{at}.when"), r.clone())),
                ),
                Err(problem) => issues.push(issue(format!("{at}.when"), problem)),
            }
        }
        let mut upstream: Option<HashSet<usize>> = None;
        for (field, r) in refs {
            if let Some(name) = r.param() {
                if !params.contains_key(name) {
                    issues.push(issue(
                        field,
                        format!("${{{r}}}: unknown parameter {name:?}"),
                    ));
                }
            } else if let Some(name) = r.step() {
                match index.get(name) {
                    None => issues.push(issue(field, format!("${{{r}}}: unknown step {name:?}"))),
                    Some(&j) if graph_ok => {
                        let ancestors = upstream.get_or_insert_with(|| ancestors(steps, &index, i));
                        if !ancestors.contains(&j) {
                            issues.push(issue(
                                field,
                                format!(
                                    "${{{r}}}: step {name:?} is not upstream of {:?} \
                                     (add it to depends_on)",
                                    step.key
                                ),
                            ));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
    issues
}

/// The steps `i` waits for, directly or through others. Assumes a valid graph.
fn ancestors(steps: &[PlanStep], index: &HashMap<&str, usize>, i: usize) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut stack = vec![i];
    while let Some(k) = stack.pop() {
        for dep in &steps[k].depends_on {
            if let Some(&d) = index.get(dep.as_str()) {
                if seen.insert(d) {
                    stack.push(d);
                }
            }
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Run time

/// The references of a subtask's condition and input that parse (bad ones were refused when the
/// plan was accepted).
fn references(sub: &Subtask) -> Vec<Ref> {
    let mut refs: Vec<Ref> = expr::template_refs(&sub.input)
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .collect();
    if let Some(e) = when_of(sub) {
        refs.extend(e.refs().into_iter().cloned());
    }
    refs
}

fn when_of(sub: &Subtask) -> Option<Expr> {
    let text = sub.rules.as_ref()?.when.as_deref()?;
    Expr::parse(text).ok()
}

/// What a subtask's references read: `{params, metadata, task: {title, description},
/// steps: {<key>: {outputs}}}`, with only the steps it references.
pub fn context_of<S: AsRef<Subtask>>(task: &Task, subs: &[S], idx: usize) -> Value {
    let mut steps = Map::new();
    if let Some(sub) = subs.get(idx) {
        for r in references(sub.as_ref()) {
            let Some(name) = r.step() else { continue };
            if steps.contains_key(name) {
                continue;
            }
            if let Some(s) = subs.iter().map(AsRef::as_ref).find(|s| s.key == name) {
                let outputs = s.outputs.clone().unwrap_or(Value::Null);
                let mut entry = Map::new();
                entry.insert("outputs".into(), outputs);
                steps.insert(name.to_owned(), Value::Object(entry));
            }
        }
    }
    let mut task_fields = Map::new();
    task_fields.insert("title".into(), Value::String(task.title.clone()));
    task_fields.insert(
        "description".into(),
        Value::String(task.description.clone()),
    );
    let mut ctx = Map::new();
    ctx.insert("params".into(), Value::Object(task.context.params.clone()));
    ctx.insert(
        "metadata".into(),
        task.context.metadata.clone().unwrap_or(Value::Null),
    );
    ctx.insert("task".into(), Value::Object(task_fields));
    ctx.insert("steps".into(), Value::Object(steps));
    Value::Object(ctx)
}

/// Whether subtask `idx` should run: its `when` holds (or it has none). `Err` carries the
/// condition's text when it is false.
pub fn condition_holds<S: AsRef<Subtask>>(
    task: &Task,
    subs: &[S],
    idx: usize,
) -> Result<(), String> {
    let Some(sub) = subs.get(idx).map(AsRef::as_ref) else {
        return Ok(());
    };
    let Some(e) = when_of(sub) else {
        return Ok(());
    };
    if e.eval(&context_of(task, subs, idx)) {
        Ok(())
    } else {
        Err(e.to_string())
    }
}

/// The step's own input with its references resolved.
pub fn resolved_input<S: AsRef<Subtask>>(task: &Task, subs: &[S], idx: usize) -> Value {
    let Some(sub) = subs.get(idx).map(AsRef::as_ref) else {
        return Value::Null;
    };
    if expr::template_refs(&sub.input).is_empty() {
        return sub.input.clone();
    }
    expr::resolve(&sub.input, &context_of(task, subs, idx))
}

/// What the agent of subtask `idx` receives (context partitioning): the step's resolved
/// input, `brief` (the task's description, or its title, unless the step sets one), the
/// task's objectives, constraints and acceptance criteria when it has any, and
/// `dependencies`: the outputs of its direct dependencies only, by subtask id.
pub fn agent_input<S: AsRef<Subtask>>(task: &Task, subs: &[S], idx: usize) -> Value {
    let Some(sub) = subs.get(idx).map(AsRef::as_ref) else {
        return Value::Null;
    };
    let mut input = match resolved_input(task, subs, idx) {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => Map::from_iter([("input".to_owned(), other)]),
    };
    let brief = if task.description.trim().is_empty() {
        &task.title
    } else {
        &task.description
    };
    input
        .entry("brief")
        .or_insert_with(|| Value::String(brief.clone()));
    let ctx = &task.context;
    for (key, list) in [
        ("objectives", &ctx.objectives),
        ("constraints", &ctx.constraints),
        ("acceptance_criteria", &ctx.acceptance_criteria),
    ] {
        if !list.is_empty() {
            input
                .entry(key)
                .or_insert_with(|| Value::from(list.clone()));
        }
    }
    let mut dependencies = Map::new();
    for &d in &sub.depends_on {
        if let Some(dep) = subs.get(d as usize).map(AsRef::as_ref) {
            dependencies.insert(
                dep.subtask_id.to_string(),
                dep.outputs.clone().unwrap_or(Value::Null),
            );
        }
    }
    input.insert("dependencies".into(), Value::Object(dependencies));
    Value::Object(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StepRules, SubtaskState, TaskContext, TaskId};
    use serde_json::json;

    fn step(key: &str, deps: &[&str], input: Value, when: Option<&str>) -> PlanStep {
        PlanStep {
            key: key.into(),
            capability: "cap".into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            input: input.as_object().cloned().unwrap_or_default(),
            rules: when.map(|w| {
                Box::new(StepRules {
                    when: Some(w.into()),
                    ..StepRules::default()
                })
            }),
        }
    }

    fn params(names: &[&str]) -> BTreeMap<String, ParamSpec> {
        names
            .iter()
            .map(|n| (n.to_string(), ParamSpec::default()))
            .collect()
    }

    fn fields(issues: &[PlanIssue]) -> Vec<&str> {
        issues.iter().map(|i| i.field.as_str()).collect()
    }

    #[test]
    fn references_must_name_declared_params_and_upstream_steps() {
        let steps = vec![
            step("a", &[], json!({ "q": "${params.topic}" }), None),
            step("b", &[], json!({}), Some("params.lang == 'en'")),
            step(
                "c",
                &["a"],
                json!({ "x": "${steps.a.outputs.text}", "y": ["${steps.b.outputs.t}"] }),
                Some("exists(steps.zz.outputs.v)"),
            ),
            step(
                "d",
                &["c"],
                json!({ "z": "${steps.a.outputs.deep.0}" }),
                None,
            ),
        ];
        let issues = check_steps(&steps, "steps", &params(&["topic"]));
        assert_eq!(
            fields(&issues),
            ["steps[1].when", "steps[2].input.y[0]", "steps[2].when"],
            "{issues:?}"
        );
        assert!(issues[0].issue.contains("unknown parameter \"lang\""));
        assert!(issues[1].issue.contains("not upstream"));
        assert!(issues[2].issue.contains("unknown step \"zz\""));
    }

    #[test]
    fn bad_expressions_and_templates_are_named() {
        let steps = vec![
            step(
                "a",
                &[],
                json!({ "q": "${nope.x}", "r": "${params.p" }),
                Some("a =="),
            ),
            step("b", &["b"], json!({}), None),
        ];
        let issues = check_steps(&steps, "steps", &params(&["p"]));
        let f = fields(&issues);
        assert!(f.contains(&"steps[0].input.q"), "{issues:?}");
        assert!(f.contains(&"steps[0].input.r"), "{issues:?}");
        assert!(f.contains(&"steps[0].when"), "{issues:?}");
        assert!(f.contains(&"steps[1].depends_on[0]"), "{issues:?}");
    }

    #[test]
    fn instantiation_checks_and_defaults_params() {
        let mut declared = params(&["topic"]);
        declared.insert(
            "n".into(),
            ParamSpec {
                kind: Some(ParamType::Integer),
                default: Some(json!(3)),
                required: false,
            },
        );
        declared.get_mut("topic").unwrap().required = true;
        let wf = Workflow {
            name: "w".into(),
            description: None,
            params: declared,
            steps: vec![step("a", &[], json!({ "t": "${params.topic}" }), None)],
        };
        assert!(wf.validate().is_empty());
        let (_, p) = wf
            .instantiate(json!({ "topic": "ai" }).as_object().unwrap())
            .unwrap();
        assert_eq!(Value::Object(p), json!({ "topic": "ai", "n": 3 }));
        let issues = wf
            .instantiate(json!({ "n": "x", "extra": 1 }).as_object().unwrap())
            .unwrap_err();
        assert_eq!(
            fields(&issues),
            ["params.extra", "params.n", "params.topic"]
        );
    }

    #[test]
    fn bad_default_and_name_are_refused() {
        let mut declared = BTreeMap::new();
        declared.insert(
            "n".to_owned(),
            ParamSpec {
                kind: Some(ParamType::Number),
                default: Some(json!("x")),
                required: false,
            },
        );
        let wf = Workflow {
            name: "bad:name".into(),
            description: None,
            params: declared,
            steps: vec![step("a", &[], json!({}), None)],
        };
        assert_eq!(fields(&wf.validate()), ["name", "params.n.default"]);
    }

    fn run_state() -> (Task, Vec<Subtask>) {
        let task = Task {
            task_id: TaskId::from("t"),
            seq: 1,
            title: "Title".into(),
            description: "Describe".into(),
            task_type: None,
            priority: crate::Priority::NORMAL,
            status: crate::TaskStatus::Running,
            request: "{}".into(),
            due_at: None,
            max_attempts: 3,
            timeout_ms: 1000,
            created_at: 0,
            started_at: None,
            finished_at: None,
            result: None,
            context: TaskContext {
                params: json!({ "lang": "en" }).as_object().cloned().unwrap(),
                metadata: Some(json!({ "requester": "ana" })),
                objectives: vec!["ship".into()],
                ..TaskContext::default()
            },
        };
        let plan = Plan {
            steps: vec![
                step("draft", &[], json!({}), None),
                step(
                    "edit",
                    &["draft"],
                    json!({ "text": "${steps.draft.outputs.text}", "by": "${metadata.requester} for ${params.lang}" }),
                    Some("steps.draft.outputs.words > 100 and params.lang == 'en'"),
                ),
            ],
        };
        let mut subs = plan.instantiate(&task.task_id, 0);
        subs[0].state = SubtaskState::Completed;
        subs[0].outputs = Some(json!({ "text": "hello", "words": 150 }));
        (task, subs)
    }

    #[test]
    fn conditions_and_inputs_resolve_against_upstream_outputs() {
        let (task, mut subs) = run_state();
        assert_eq!(condition_holds(&task, &subs, 1), Ok(()));
        assert_eq!(
            agent_input(&task, &subs, 1),
            json!({
                "text": "hello",
                "by": "ana for en",
                "brief": "Describe",
                "objectives": ["ship"],
                "dependencies": { "cap::t::1": { "text": "hello", "words": 150 } },
            })
        );
        subs[0].outputs = Some(json!({ "text": "hi", "words": 2 }));
        assert!(condition_holds(&task, &subs, 1).is_err());
        // A step without references gets its input as it is.
        assert_eq!(resolved_input(&task, &subs, 0), json!({}));
    }

    use proptest::prelude::*;

    /// Whether `j` is reachable upstream from `i` (by walking `depends_on`), without cycles.
    fn upstream_of(steps: &[PlanStep], i: usize, j: usize) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![i];
        while let Some(k) = stack.pop() {
            for d in &steps[k].depends_on {
                if let Some(x) = steps.iter().position(|s| &s.key == d) {
                    if x == j {
                        return true;
                    }
                    if seen.insert(x) {
                        stack.push(x);
                    }
                }
            }
        }
        false
    }

    /// Random steps, mostly well-formed (edges and references pointing back, declared params,
    /// parseable conditions) with some of each kind of defect: forward edges, references to
    /// later or unknown steps, undeclared params, broken conditions.
    fn arb_steps() -> impl Strategy<Value = Vec<PlanStep>> {
        (1usize..12).prop_flat_map(|n| {
            proptest::collection::vec(
                (
                    proptest::collection::vec((0..n, proptest::bool::weighted(0.05)), 0..3),
                    proptest::option::of((0..n, proptest::bool::weighted(0.05))),
                    proptest::bool::weighted(0.05),
                    proptest::option::of(prop_oneof![
                        8 => Just("params.p == 1 or not exists(metadata.x)"),
                        1 => Just("params.p =="),
                    ]),
                ),
                n,
            )
            .prop_map(|specs| {
                let back = |i: usize, d: usize, anywhere: bool| {
                    if anywhere {
                        Some(d)
                    } else if i == 0 {
                        None
                    } else {
                        Some(d % i)
                    }
                };
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (deps, reference, undeclared, when))| {
                        let param = if undeclared { "q" } else { "p" };
                        let mut input = json!({ "p": format!("${{params.{param}}}") });
                        if let Some(r) = reference.and_then(|(r, any)| back(i, r, any)) {
                            input["r"] = json!(format!("${{steps.s{r}.outputs.v}}"));
                        }
                        let mut deps: Vec<String> = deps
                            .into_iter()
                            .filter_map(|(d, any)| back(i, d, any))
                            .map(|d| format!("s{d}"))
                            .collect();
                        deps.dedup();
                        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                        step(&format!("s{i}"), &deps, input, when)
                    })
                    .collect()
            })
        })
    }

    proptest! {
        /// Whatever is accepted is acyclic and reads only declared params and upstream steps;
        /// whatever is refused says where, at a path that exists.
        #[test]
        fn accepted_workflows_are_acyclic_and_refusals_name_their_field(steps in arb_steps()) {
            let declared = params(&["p"]);
            let issues = check_steps(&steps, "steps", &declared);
            if issues.is_empty() {
                let plan = Plan { steps: steps.clone() };
                prop_assert!(plan.find_cycle().is_none());
                for (i, s) in steps.iter().enumerate() {
                    prop_assert!(!s.depends_on.contains(&s.key));
                    for (_, r) in expr::template_refs(&Value::Object(s.input.clone())) {
                        let r = r.expect("accepted references parse");
                        if let Some(name) = r.step() {
                            let j = steps.iter().position(|x| x.key == name).expect("known step");
                            prop_assert!(upstream_of(&steps, i, j), "{} reads {}", s.key, name);
                        }
                        if let Some(p) = r.param() {
                            prop_assert!(declared.contains_key(p));
                        }
                    }
                }
            } else {
                for issue in &issues {
                    prop_assert!(!issue.issue.is_empty());
                    let at = issue.field.strip_prefix("steps").expect("under steps");
                    if let Some(rest) = at.strip_prefix('[') {
                        let index: usize = rest.split(']').next().unwrap().parse().unwrap();
                        prop_assert!(index < steps.len(), "{issue:?}");
                    } else {
                        prop_assert_eq!(at, "", "{:?}", issue);
                    }
                }
            }
        }

        /// A valid chain with one defect put in: refused, naming the defect's field.
        #[test]
        fn one_defect_is_named(n in 2usize..10, at in 0usize..10, defect in 0usize..7) {
            let at = at % n;
            let mut steps: Vec<PlanStep> = (0..n)
                .map(|i| {
                    let deps = if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] };
                    let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                    step(&format!("s{i}"), &deps, json!({ "p": "${params.p}" }), None)
                })
                .collect();
            prop_assert!(check_steps(&steps, "steps", &params(&["p"])).is_empty());
            let expected = match defect {
                0 => {
                    steps[at].depends_on.push("nowhere".into());
                    format!("steps[{at}].depends_on[{}]", steps[at].depends_on.len() - 1)
                }
                1 => {
                    steps[at].depends_on.push(format!("s{at}"));
                    format!("steps[{at}].depends_on[{}]", steps[at].depends_on.len() - 1)
                }
                2 => {
                    let other = (at + 1) % n;
                    steps[other].key = format!("s{at}");
                    format!("steps[{}].id", other.max(at))
                }
                3 => {
                    // s0 waits for the last step: a loop through the whole chain.
                    steps[0].depends_on.push(format!("s{}", n - 1));
                    "steps".to_owned()
                }
                4 => {
                    // A later step is not upstream.
                    let (from, to) = (at.min(n - 2), at.min(n - 2) + 1);
                    steps[from].input.insert("x".into(), json!(format!("${{steps.s{to}.outputs.v}}")));
                    format!("steps[{from}].input.x")
                }
                5 => {
                    steps[at].input.insert("y".into(), json!("${params.undeclared}"));
                    format!("steps[{at}].input.y")
                }
                _ => {
                    steps[at].rules = Some(Box::new(StepRules {
                        when: Some("params.p ==".into()),
                        ..StepRules::default()
                    }));
                    format!("steps[{at}].when")
                }
            };
            let issues = check_steps(&steps, "steps", &params(&["p"]));
            prop_assert!(
                issues.iter().any(|i| i.field == expected),
                "expected {} in {:?}", expected, issues
            );
        }
    }
}
