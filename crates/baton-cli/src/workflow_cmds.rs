//! `baton workflows …` and `baton plan`: publish, list, show and run workflows, and preview
//! the plan a submission would get, drawn as a tree with the planner's reason.
//!
//! The renderings ([`workflow_table`], [`workflow_yaml`], [`plan_tree`]) are pure functions of
//! the wire types, unit-tested without a server. `workflow_yaml` writes YAML that `workflows
//! apply` takes back: every string that could read as something else is quoted.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use baton_agent::api::{
    ExecuteWorkflow, PlannedTask, SubmitTask, WorkflowDef, WorkflowList, WorkflowView,
};
use baton_agent::Client;
use serde_json::Value;

use crate::client_cmds::{client, params_object, parse_param, print_json, priority};

/// `baton workflows`.
#[derive(clap::Args, Debug)]
pub struct WorkflowsArgs {
    #[command(subcommand)]
    pub command: WorkflowsCommand,
}

/// The subcommands of `baton workflows`.
#[derive(clap::Subcommand, Debug)]
pub enum WorkflowsCommand {
    /// List the latest version of every workflow, the built-ins included.
    List(ListArgs),
    /// Show a workflow's definition, as YAML that `apply` takes back.
    Show(ShowArgs),
    /// Publish a workflow from a .yaml, .yml or .json file as the next version of its name.
    Apply(ApplyArgs),
    /// Run a workflow as a new task.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The workflow's name.
    pub name: String,
    /// Which version; the latest when absent.
    #[arg(long)]
    pub version: Option<u32>,
    /// Print the whole record (name, version, created_at, definition) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// The definition: a .yaml or .yml file (sent as written) or a .json file.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The workflow's name.
    pub name: String,
    /// A parameter, KEY=VALUE (repeatable); VALUE is read as JSON when it parses
    /// (3, true, "007", {"a":1}) and as a string otherwise.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, Value)>,
    /// Your own task id (the idempotency key).
    #[arg(long)]
    pub task_id: Option<String>,
    /// The task's title; the workflow's name when absent.
    #[arg(long)]
    pub title: Option<String>,
    /// The task's description; the workflow's description when absent.
    #[arg(long)]
    pub description: Option<String>,
    /// low, normal, high, critical or 1-10.
    #[arg(long)]
    pub priority: Option<String>,
    /// Which version to run; the latest when absent.
    #[arg(long)]
    pub version: Option<u32>,
    /// Follow the task live until it finishes.
    #[arg(long)]
    pub watch: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `baton plan`: what a submission would be planned into, without creating it.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    #[arg(long)]
    pub title: String,
    /// What the task is about; the server refuses an empty one.
    #[arg(long, default_value = "")]
    pub description: String,
    /// A published workflow to plan with; without one the rule-based planner plans the task
    /// from its title and description.
    #[arg(long)]
    pub task_type: Option<String>,
    /// A parameter of the workflow, KEY=VALUE (repeatable), read like `workflows run --param`.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, Value)>,
    /// Print the planned task as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn workflows(server: &str, args: WorkflowsArgs) -> anyhow::Result<ExitCode> {
    let client = client(server)?;
    match args.command {
        WorkflowsCommand::List(args) => list(&client, args).await,
        WorkflowsCommand::Show(args) => show(&client, args).await,
        WorkflowsCommand::Apply(args) => apply(&client, args).await,
        WorkflowsCommand::Run(args) => run(&client, args).await,
    }
}

async fn list(client: &Client, args: ListArgs) -> anyhow::Result<ExitCode> {
    let list = client.workflows().await?;
    if args.json {
        print_json(&list)?;
    } else {
        print!("{}", workflow_table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(client: &Client, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let view = client.workflow(&args.name, args.version).await?;
    if args.json {
        print_json(&view)?;
    } else {
        print!("{}", workflow_yaml(&view));
    }
    Ok(ExitCode::SUCCESS)
}

/// How a definition file is sent.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Yaml,
    Json,
}

impl Format {
    fn of(path: &Path) -> anyhow::Result<Format> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("yaml" | "yml") => Ok(Format::Yaml),
            Some("json") => Ok(Format::Json),
            _ => bail!("{}: expected a .yaml, .yml or .json file", path.display()),
        }
    }
}

async fn apply(client: &Client, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let path = &args.file;
    let format = Format::of(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let published = match format {
        Format::Yaml => client.publish_workflow_yaml(&text).await,
        Format::Json => {
            let def: WorkflowDef = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a workflow definition", path.display()))?;
            client.publish_workflow(&def).await
        }
    }
    .with_context(|| format!("{} was not published", path.display()))?;
    if args.json {
        print_json(&published)?;
    } else {
        println!("published {} version {}", published.name, published.version);
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(client: &Client, args: RunArgs) -> anyhow::Result<ExitCode> {
    let request = ExecuteWorkflow {
        task_id: args.task_id,
        title: args.title,
        description: args.description,
        params: params_object(args.params)?,
        priority: args.priority.map(priority),
        version: args.version,
        metadata: None,
    };
    let submitted = client.run_workflow(&args.name, &request).await?;
    crate::client_cmds::report_submitted(client, &submitted, args.json, args.watch).await
}

pub async fn plan(server: &str, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let task = SubmitTask {
        title: args.title,
        description: args.description,
        task_type: args.task_type,
        params: params_object(args.params)?,
        ..SubmitTask::default()
    };
    let planned = client(server)?.preview_plan(&task).await?;
    if args.json {
        print_json(&planned)?;
    } else {
        print!("{}", plan_tree(&planned));
        println!("{}", planner_line(planned.planner.as_ref()));
    }
    Ok(ExitCode::SUCCESS)
}

// ----- renderings -----

/// The listing as a table: name, version, steps, params, description.
pub fn workflow_table(list: &WorkflowList) -> String {
    let params: Vec<String> = list
        .workflows
        .iter()
        .map(|w| {
            if w.params.is_empty() {
                "-".to_owned()
            } else {
                w.params.join(",")
            }
        })
        .collect();
    let name_width = list
        .workflows
        .iter()
        .map(|w| w.name.chars().count())
        .chain([4])
        .max()
        .unwrap_or(4);
    let params_width = params
        .iter()
        .map(|p| p.chars().count())
        .chain([6])
        .max()
        .unwrap_or(6);
    let mut out = String::new();
    let mut row = |name: &str, version: &str, steps: &str, params: &str, description: &str| {
        let line = format!(
            "{name:<name_width$}  {version:>7}  {steps:>5}  {params:<params_width$}  {description}"
        );
        out.push_str(line.trim_end());
        out.push('\n');
    };
    row("NAME", "VERSION", "STEPS", "PARAMS", "DESCRIPTION");
    for (w, params) in list.workflows.iter().zip(&params) {
        row(
            &w.name,
            &w.version.to_string(),
            &w.steps.to_string(),
            params,
            w.description.as_deref().unwrap_or(""),
        );
    }
    out
}

/// A workflow version as a YAML document that `workflows apply` publishes unchanged: the
/// fields in the order of the wire type (the order people write them), a comment line saying
/// which version it is.
pub fn workflow_yaml(view: &WorkflowView) -> String {
    let body = serde_yaml_ng::to_string(&view.definition)
        .unwrap_or_else(|e| format!("# cannot be shown as YAML: {e}\n"));
    format!(
        "# {} version {}, published {}\n{body}",
        view.name, view.version, view.created_at
    )
}

/// The plan as a tree: roots first, each step under its first dependency, its other
/// dependencies named on its line. One line per step.
pub fn plan_tree(plan: &PlannedTask) -> String {
    let steps = &plan.subtasks;
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.subtask_id.as_str(), i))
        .collect();
    let parent: Vec<Option<usize>> = steps
        .iter()
        .map(|s| {
            let first = s.depends_on.first()?;
            index.get(first.as_str()).copied()
        })
        .collect();
    let mut children = vec![Vec::new(); steps.len()];
    for (child, p) in parent.iter().enumerate() {
        if let Some(p) = p {
            children[*p].push(child);
        }
    }
    let mut tree = Tree {
        plan,
        index,
        children,
        drawn: vec![false; steps.len()],
        out: String::new(),
    };
    for root in (0..steps.len()).filter(|&i| parent[i].is_none()) {
        tree.draw(root, "", None);
    }
    // Only steps in a dependency cycle are left (a server refuses those); show them anyway.
    for i in 0..steps.len() {
        tree.draw(i, "", None);
    }
    tree.out
}

struct Tree<'a> {
    plan: &'a PlannedTask,
    index: HashMap<&'a str, usize>,
    children: Vec<Vec<usize>>,
    drawn: Vec<bool>,
    out: String,
}

impl Tree<'_> {
    /// The step's id in the plan (its subtask id from a server that does not send one).
    fn name(&self, subtask_id: &str) -> String {
        match self.index.get(subtask_id) {
            Some(&i) if !self.plan.subtasks[i].id.is_empty() => self.plan.subtasks[i].id.clone(),
            _ => subtask_id.to_owned(),
        }
    }

    /// Step `i` and, below it, its children. `last` is `None` for a root, else whether the
    /// step is the last child of its parent.
    fn draw(&mut self, i: usize, prefix: &str, last: Option<bool>) {
        if self.drawn[i] {
            return;
        }
        self.drawn[i] = true;
        let step = &self.plan.subtasks[i];
        let (branch, below) = match last {
            None => ("", ""),
            Some(false) => ("├── ", "│   "),
            Some(true) => ("└── ", "    "),
        };
        let mut line = format!(
            "{prefix}{branch}{} ({})",
            self.name(&step.subtask_id),
            step.agent
        );
        if let Some(when) = &step.when {
            let _ = write!(line, " when {when}");
        }
        if step.depends_on.len() > 1 {
            let others: Vec<String> = step.depends_on[1..].iter().map(|d| self.name(d)).collect();
            let _ = write!(line, " (also after: {})", others.join(", "));
        }
        self.out.push_str(&line);
        self.out.push('\n');
        let prefix = format!("{prefix}{below}");
        let children = self.children[i].clone();
        for (k, &child) in children.iter().enumerate() {
            self.draw(child, &prefix, Some(k + 1 == children.len()));
        }
    }
}

/// Why the plan is what it is: `planner: rules — backend: export, pdf; frontend: dashboard`,
/// `planner: workflow feature_development v1`, `planner: llm_fallback — <reason>`.
pub fn planner_line(planner: Option<&Value>) -> String {
    let Some(planner) = planner else {
        return "planner: not reported by the server".to_owned();
    };
    let text = |field: &str| planner[field].as_str().unwrap_or("?").to_owned();
    match planner["kind"].as_str() {
        Some("rules") => {
            let matched: Vec<String> = planner["matched"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(domain, words)| {
                    let words: Vec<&str> = words
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!("{domain}: {}", words.join(", "))
                })
                .collect();
            if matched.is_empty() {
                "planner: rules — no domain keyword matched".to_owned()
            } else {
                format!("planner: rules — {}", matched.join("; "))
            }
        }
        Some("workflow") => format!("planner: workflow {} v{}", text("name"), planner["version"]),
        Some("llm") => format!("planner: llm (model {})", text("model")),
        Some("llm_fallback") => format!("planner: llm_fallback — {}", text("reason")),
        Some("client") => "planner: client (the plan was sent with the task)".to_owned(),
        Some(other) => format!("planner: {other} {planner}"),
        None => format!("planner: {planner}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_agent::api::{ClientStep, ParamDef, PlannedSubtask, WorkflowSummary};
    use serde_json::json;

    fn step(id: &str, agent: &str, deps: &[&str], when: Option<&str>) -> PlannedSubtask {
        PlannedSubtask {
            subtask_id: format!("{agent}::t::1"),
            agent: agent.into(),
            state: "pending".into(),
            depends_on: deps.iter().map(|d| format!("{d}::t::1")).collect(),
            id: id.into(),
            when: when.map(str::to_owned),
            input: None,
        }
    }

    fn plan(subtasks: Vec<PlannedSubtask>) -> PlannedTask {
        PlannedTask {
            task_id: "t".into(),
            status: "preview".into(),
            subtasks,
            planner: None,
        }
    }

    #[test]
    fn a_plan_is_drawn_from_its_roots_with_joins_under_their_first_dependency() {
        let tree = plan_tree(&plan(vec![
            step("frontend", "frontend", &[], None),
            step("backend", "backend", &[], None),
            step("integrate", "integration", &["frontend", "backend"], None),
            step("test", "testing", &["integration"], None),
            step("review", "review", &["testing"], None),
        ]));
        assert_eq!(
            tree,
            "\
frontend (frontend)
└── integrate (integration) (also after: backend)
    └── test (testing)
        └── review (review)
backend (backend)
"
        );
    }

    #[test]
    fn branches_show_their_conditions_and_siblings_share_a_rail() {
        let tree = plan_tree(&plan(vec![
            step("requirements", "requirements", &[], None),
            step("ui", "frontend", &["requirements"], Some("params.frontend")),
            step("api", "backend", &["requirements"], None),
            step(
                "schema",
                "database",
                &["requirements"],
                Some("params.database"),
            ),
            step("docs", "writing", &["frontend"], None),
            step(
                "merge",
                "integration",
                &["frontend", "backend", "database"],
                None,
            ),
        ]));
        assert_eq!(
            tree,
            "\
requirements (requirements)
├── ui (frontend) when params.frontend
│   ├── docs (writing)
│   └── merge (integration) (also after: api, schema)
├── api (backend)
└── schema (database) when params.database
"
        );
    }

    #[test]
    fn every_step_is_drawn_once_even_in_a_cycle_or_with_unknown_dependencies() {
        let tree = plan_tree(&plan(vec![
            step("a", "x", &["y"], None),
            step("b", "y", &["x"], None),
            step("c", "z", &["gone"], None),
        ]));
        assert_eq!(tree, "c (z)\na (x)\n└── b (y)\n");
        let without_id = step("", "w", &[], None);
        assert_eq!(plan_tree(&plan(vec![without_id])), "w::t::1 (w)\n");
        assert_eq!(plan_tree(&plan(Vec::new())), "");
    }

    #[test]
    fn the_planner_line_says_why() {
        let rules = json!({"kind": "rules", "matched": {"frontend": ["dashboard"], "backend": ["export", "pdf"]}});
        assert_eq!(
            planner_line(Some(&rules)),
            "planner: rules — backend: export, pdf; frontend: dashboard"
        );
        let nothing = json!({"kind": "rules", "matched": {}});
        assert_eq!(
            planner_line(Some(&nothing)),
            "planner: rules — no domain keyword matched"
        );
        let workflow = json!({"kind": "workflow", "name": "feature_development", "version": 1});
        assert_eq!(
            planner_line(Some(&workflow)),
            "planner: workflow feature_development v1"
        );
        let fallback = json!({"kind": "llm_fallback", "reason": "timed out", "matched": {}});
        assert_eq!(
            planner_line(Some(&fallback)),
            "planner: llm_fallback — timed out"
        );
        let llm = json!({"kind": "llm", "model": "m"});
        assert_eq!(planner_line(Some(&llm)), "planner: llm (model m)");
        assert!(planner_line(Some(&json!({"kind": "client"}))).starts_with("planner: client"));
        assert_eq!(
            planner_line(Some(&json!({"kind": "new", "x": 1}))),
            r#"planner: new {"kind":"new","x":1}"#
        );
        assert_eq!(planner_line(None), "planner: not reported by the server");
    }

    #[test]
    fn the_listing_is_a_table_with_a_header() {
        let summary = |name: &str, params: &[&str], description: Option<&str>| WorkflowSummary {
            workflow_id: name.into(),
            name: name.into(),
            version: 2,
            description: description.map(str::to_owned),
            steps: 7,
            params: params.iter().map(|p| p.to_string()).collect(),
            created_at: "2025-01-01T00:00:00Z".into(),
        };
        let table = workflow_table(&WorkflowList {
            workflows: vec![
                summary(
                    "feature_development",
                    &["database", "frontend"],
                    Some("Layers."),
                ),
                summary("bug_fix", &[], None),
            ],
        });
        assert_eq!(
            table,
            "\
NAME                 VERSION  STEPS  PARAMS             DESCRIPTION
feature_development        2      7  database,frontend  Layers.
bug_fix                    2      7  -
"
        );
    }

    fn view(definition: WorkflowDef) -> WorkflowView {
        WorkflowView {
            workflow_id: definition.name.clone(),
            name: definition.name.clone(),
            version: 3,
            created_at: "2025-01-01T00:00:00Z".into(),
            definition,
        }
    }

    #[test]
    fn a_workflow_is_shown_as_yaml_that_reads_back_the_same() {
        let def = WorkflowDef {
            name: "release".into(),
            description: Some("Draft: then polish".into()),
            params: [
                (
                    "polish".to_owned(),
                    ParamDef {
                        kind: Some("boolean".into()),
                        default: Some(json!(false)),
                        required: None,
                    },
                ),
                ("free".to_owned(), ParamDef::default()),
            ]
            .into(),
            steps: vec![
                ClientStep {
                    id: "draft".into(),
                    capability: "write".into(),
                    input: Some(json!({
                        "title": "${task.title}",
                        "tags": ["a", "true", "1.5", "", {"k": 1, "list": [[1, 2], []]}],
                        "note": "line one\nline two: # not a comment",
                        "empty": {},
                    })),
                    timeout_s: Some(30),
                    ..ClientStep::default()
                },
                ClientStep {
                    id: "polish".into(),
                    capability: "edit".into(),
                    depends_on: vec!["draft".into(), "odd, id".into()],
                    when: Some("params.polish".into()),
                    verify: Some(json!(true)),
                    ..ClientStep::default()
                },
            ],
        };
        let text = workflow_yaml(&view(def.clone()));
        assert!(text
            .starts_with("# release version 3, published 2025-01-01T00:00:00Z\nname: release\n"));
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with([' ', '#', '-']))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(keys, ["name", "description", "params", "steps"]);
        let back: WorkflowDef = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, def);
    }
}
