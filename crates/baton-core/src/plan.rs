//! Plans: a DAG of steps, each naming a capability. Validation, and instantiation into
//! subtasks with seed-shaped ids. (Reading a plan from JSON is the engine's intake.)
//!
//! A valid plan has 1 to [`MAX_SUBTASKS`] steps, unique ids, a well-formed capability on every
//! step, dependencies that name existing steps (not themselves), and no cycle. Every problem is
//! reported, not just the first.

use crate::ids::check_name;
use crate::{Millis, StepRules, Subtask, SubtaskId, SubtaskState, TaskId};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// The largest plan accepted.
pub const MAX_SUBTASKS: usize = 1000;

/// One step of a plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanStep {
    /// The step's id within the plan.
    pub key: String,
    pub capability: String,
    /// Keys of the steps this one waits for.
    pub depends_on: Vec<String>,
    /// Parameters for the agent; an object.
    pub input: Map<String, Value>,
    /// Workflow rules; `None` for a plain step.
    pub rules: Option<Box<StepRules>>,
}

/// A DAG of steps in plan order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
}

/// One problem with a plan: where (a JSON path below the plan) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanIssue {
    pub field: String,
    pub issue: String,
}

fn issue(field: impl Into<String>, issue: impl Into<String>) -> PlanIssue {
    PlanIssue {
        field: field.into(),
        issue: issue.into(),
    }
}

impl Plan {
    /// Every structural problem of the plan; empty when it is valid. `list` is the path of the
    /// steps in the request (`plan.subtasks`, `steps`); problems are reported below it.
    pub fn validate(&self, list: &str) -> Vec<PlanIssue> {
        let mut issues = Vec::new();
        let n = self.steps.len();
        if n == 0 {
            issues.push(issue(list.to_owned(), "must contain at least one step"));
        }
        if n > MAX_SUBTASKS {
            issues.push(issue(
                list.to_owned(),
                format!("at most {MAX_SUBTASKS} subtasks, got {n}"),
            ));
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(n);
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("{list}[{i}]");
            if let Some(problem) = check_name(&step.key, false) {
                issues.push(issue(format!("{at}.id"), problem));
            } else if index.insert(step.key.as_str(), i).is_some() {
                issues.push(issue(
                    format!("{at}.id"),
                    format!("duplicate step id {:?}", step.key),
                ));
            }
            if let Some(problem) = check_name(&step.capability, true) {
                issues.push(issue(format!("{at}.capability"), problem));
            }
        }
        let mut edges_ok = true;
        for (i, step) in self.steps.iter().enumerate() {
            let mut seen = HashSet::new();
            for (j, dep) in step.depends_on.iter().enumerate() {
                let at = format!("{list}[{i}].depends_on[{j}]");
                if dep == &step.key {
                    issues.push(issue(at, "a step cannot depend on itself"));
                    edges_ok = false;
                } else if !index.contains_key(dep.as_str()) {
                    issues.push(issue(at, format!("unknown step id {dep:?}")));
                    edges_ok = false;
                } else if !seen.insert(dep) {
                    issues.push(issue(at, format!("duplicate dependency {dep:?}")));
                }
            }
        }
        if edges_ok && issues.is_empty() {
            if let Some(cycle) = self.find_cycle() {
                issues.push(issue(
                    list.to_owned(),
                    format!("dependency cycle: {}", cycle.join(" -> ")),
                ));
            }
        }
        issues
    }

    /// A cycle among the steps, as step keys, if there is one (Kahn's algorithm; the leftovers
    /// contain a cycle, which is then walked to report it). Assumes dependencies name steps.
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        let index: HashMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.as_str(), i))
            .collect();
        let n = self.steps.len();
        let mut indegree = vec![0usize; n];
        let mut dependents = vec![Vec::new(); n];
        for (i, step) in self.steps.iter().enumerate() {
            for dep in &step.depends_on {
                let d = *index.get(dep.as_str())?;
                indegree[i] += 1;
                dependents[d].push(i);
            }
        }
        let mut queue: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut done = 0;
        while let Some(i) = queue.pop() {
            done += 1;
            for &k in &dependents[i] {
                indegree[k] -= 1;
                if indegree[k] == 0 {
                    queue.push(k);
                }
            }
        }
        if done == n {
            return None;
        }
        // Every leftover step has a leftover dependency: walk them until a step repeats.
        let start = (0..n).find(|&i| indegree[i] > 0)?;
        let mut path = vec![start];
        let mut pos: HashMap<usize, usize> = HashMap::from([(start, 0)]);
        let mut cur = start;
        loop {
            let next = self.steps[cur]
                .depends_on
                .iter()
                .map(|d| index[d.as_str()])
                .find(|&d| indegree[d] > 0)?;
            if let Some(&p) = pos.get(&next) {
                let mut cycle: Vec<String> = path[p..]
                    .iter()
                    .rev()
                    .map(|&i| self.steps[i].key.clone())
                    .collect();
                cycle.push(cycle[0].clone());
                return Some(cycle);
            }
            pos.insert(next, path.len());
            path.push(next);
            cur = next;
        }
    }

    /// Turn a valid plan into subtasks of `task_id`, in plan order, all `pending`.
    ///
    /// Ids are `<capability>::<task_id>::<n>` with `n` counting that capability's steps from 1.
    /// Dependencies become plan indices. The brief is not copied into each step's input: the
    /// engine adds the task's description when it hands a step to an agent.
    pub fn instantiate(&self, task_id: &TaskId, now: Millis) -> Vec<Subtask> {
        let mut per_capability: HashMap<&str, u32> = HashMap::new();
        let by_key: HashMap<&str, u32> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.as_str(), i as u32))
            .collect();
        self.steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let n = per_capability.entry(step.capability.as_str()).or_insert(0);
                *n += 1;
                Subtask {
                    subtask_id: SubtaskId::compose(&step.capability, task_id, *n),
                    task_id: task_id.clone(),
                    index: i as u32,
                    key: step.key.clone(),
                    capability: step.capability.clone(),
                    depends_on: step.depends_on.iter().map(|d| by_key[d.as_str()]).collect(),
                    input: Value::Object(step.input.clone()),
                    state: SubtaskState::Pending,
                    attempts: 0,
                    assigned_agent: None,
                    outputs: None,
                    error: None,
                    updated_at: now,
                    rules: step.rules.clone(),
                    usage: None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn step(key: &str, cap: &str, deps: &[&str]) -> PlanStep {
        PlanStep {
            key: key.into(),
            capability: cap.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            input: Map::new(),
            rules: None,
        }
    }

    #[test]
    fn instantiates_ids_indices_and_inputs() {
        let mut b = step("b", "gen", &["a"]);
        b.input.insert("x".into(), json!(1));
        let plan = Plan {
            steps: vec![step("a", "gen", &[]), b],
        };
        assert!(plan.validate("plan.subtasks").is_empty());
        let subtasks = plan.instantiate(&TaskId::from("t1"), 0);
        assert_eq!(subtasks[0].subtask_id.as_str(), "gen::t1::1");
        assert_eq!(subtasks[1].subtask_id.as_str(), "gen::t1::2");
        assert_eq!(subtasks[1].depends_on, vec![0]);
        assert_eq!(subtasks[1].input, json!({"x": 1}));
    }

    #[test]
    fn rejects_bad_graphs() {
        let cyclic = Plan {
            steps: vec![
                step("a", "c", &["c"]),
                step("b", "c", &["a"]),
                step("c", "c", &["b"]),
            ],
        };
        let issues = cyclic.validate("plan.subtasks");
        assert_eq!(issues.len(), 1);
        assert!(
            issues[0].issue.starts_with("dependency cycle"),
            "{issues:?}"
        );

        let bad = Plan {
            steps: vec![step("a", "c", &["a", "zz"]), step("a", "", &[])],
        };
        let issues = bad.validate("plan.subtasks");
        assert_eq!(issues.len(), 4, "{issues:?}");

        assert_eq!(Plan::default().validate("plan.subtasks").len(), 1);
        let big = Plan {
            steps: (0..=MAX_SUBTASKS)
                .map(|i| step(&i.to_string(), "c", &[]))
                .collect(),
        };
        assert!(big.validate("plan.subtasks")[0]
            .issue
            .contains("at most 1000"));
    }

    proptest! {
        /// Any plan whose edges point only backwards is acyclic and valid; adding one forward
        /// edge that closes a loop makes it invalid.
        #[test]
        fn backward_edges_are_acyclic(n in 1usize..60, edges in proptest::collection::vec((0usize..60, 0usize..60), 0..200)) {
            let mut steps: Vec<PlanStep> = (0..n).map(|i| step(&format!("s{i}"), "cap", &[])).collect();
            for (a, b) in edges {
                let (a, b) = (a % n, b % n);
                if a > b && !steps[a].depends_on.contains(&format!("s{b}")) {
                    steps[a].depends_on.push(format!("s{b}"));
                }
            }
            let plan = Plan { steps };
            prop_assert!(plan.validate("plan.subtasks").is_empty());
            prop_assert!(plan.find_cycle().is_none());
            let subtasks = plan.instantiate(&TaskId::from("t"), 0);
            prop_assert_eq!(subtasks.len(), n);
            // Dependencies always refer to earlier subtasks.
            for (i, s) in subtasks.iter().enumerate() {
                for &j in &s.depends_on {
                    prop_assert!((j as usize) < i);
                }
            }
        }

        #[test]
        fn a_closed_loop_is_found(n in 2usize..40, from in 0usize..40, to in 0usize..40) {
            // A chain s0 <- s1 <- ... plus an edge from an early step to a later one closes a loop.
            let (lo, hi) = { let a = from % n; let b = to % n; (a.min(b), a.max(b)) };
            prop_assume!(lo < hi);
            let mut steps: Vec<PlanStep> = (0..n).map(|i| step(&format!("s{i}"), "cap", &[])).collect();
            for (i, step) in steps.iter_mut().enumerate().skip(1) {
                step.depends_on.push(format!("s{}", i - 1));
            }
            steps[lo].depends_on.push(format!("s{hi}"));
            let plan = Plan { steps };
            let cycle = plan.find_cycle();
            prop_assert!(cycle.is_some());
            let issues = plan.validate("plan.subtasks");
            prop_assert_eq!(issues.len(), 1);
        }

    }
}
