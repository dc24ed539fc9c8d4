//! The workflow commands as a user runs them: a real `baton serve` child process on a temp
//! data dir and a free port, and the `baton` binary run as child processes against it.

mod common;

use baton_agent::api::WorkflowView;
use baton_agent::{handler_fn, Job, Worker, WorkerConfig};
use common::Server;
use serde_json::json;

const RELEASE_V1: &str = r#"
name: release_notes
description: Draft release notes, then polish them when asked.
params:
  version:
    type: string
    required: true
  polish:
    type: boolean
    default: false
  count:
    type: integer
    default: 1
steps:
  - id: draft
    capability: write
    input:
      version: "${params.version}"
      count: "${params.count}"
  - id: polish
    capability: edit
    depends_on: [draft]
    when: params.polish
    input:
      text: "${steps.draft.outputs.text}"
"#;

const ANNOUNCE_STEP: &str = r##"  - id: announce
    capability: write
    depends_on: [draft]
    input:
      channel: "#releases"
      text: "${steps.draft.outputs.text}"
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_list_shows_the_three_built_ins() {
    let server = Server::start().await;
    let table = server.ok(&["workflows", "list"]).await;
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    for name in ["create_blog_post", "feature_development", "bug_fix"] {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing from:\n{table}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&server.ok(&["workflows", "list", "--json"]).await).unwrap();
    assert_eq!(json["workflows"].as_array().unwrap().len(), 3, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_publishes_new_versions_and_show_reads_any_back_in_a_form_apply_takes() {
    let server = Server::start().await;
    let v1 = server.file("release.yaml", RELEASE_V1);
    let out = server.ok(&["workflows", "apply", "-f", &v1]).await;
    assert_eq!(out, "published release_notes version 1\n");
    let v2 = server.file("release.yml", &format!("{RELEASE_V1}{ANNOUNCE_STEP}"));
    let out = server.ok(&["workflows", "apply", "--file", &v2]).await;
    assert_eq!(out, "published release_notes version 2\n");

    let shown = server
        .ok(&[
            "workflows",
            "show",
            "release_notes",
            "--version",
            "1",
            "--json",
        ])
        .await;
    let first: WorkflowView = serde_json::from_str(&shown).unwrap();
    assert_eq!(first.version, 1);
    let steps: Vec<&str> = first
        .definition
        .steps
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(steps, ["draft", "polish"]);

    // The latest version's YAML, applied again, is the same definition.
    let yaml = server.ok(&["workflows", "show", "release_notes"]).await;
    assert!(yaml.starts_with("# release_notes version 2"), "{yaml}");
    assert!(yaml.contains("- id: announce\n"), "{yaml}");
    assert!(yaml.contains("#releases"), "{yaml}");
    let again = server.file("shown.yaml", &yaml);
    let out = server.ok(&["workflows", "apply", "-f", &again]).await;
    assert_eq!(out, "published release_notes version 3\n");
    let client = server.client();
    let second = client.workflow("release_notes", Some(2)).await.unwrap();
    let third = client.workflow("release_notes", Some(3)).await.unwrap();
    assert_eq!(third.definition, second.definition);

    // A .json file is sent as JSON.
    let json = server.file(
        "release.json",
        &serde_json::to_string(&first.definition).unwrap(),
    );
    let out = server.ok(&["workflows", "apply", "-f", &json]).await;
    assert_eq!(out, "published release_notes version 4\n");
    let fourth = client.workflow("release_notes", None).await.unwrap();
    assert_eq!(fourth.version, 4);
    assert_eq!(fourth.definition, first.definition);

    let table = server.ok(&["workflows", "list"]).await;
    let row = table
        .lines()
        .find(|l| l.starts_with("release_notes "))
        .unwrap_or_else(|| panic!("release_notes missing from:\n{table}"));
    let columns: Vec<&str> = row.split_whitespace().take(4).collect();
    assert_eq!(columns, ["release_notes", "4", "2", "count,polish,version"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_workflow_exits_non_zero_naming_every_problem() {
    let server = Server::start().await;
    let bad = server.file(
        "bad.yaml",
        "name: bad\nsteps:\n  - id: a\n    capability: c\n  - id: b\n    capability: c\n    depends_on: [nope]\n    when: \"params.n >\"\n",
    );
    let out = server.fails(&["workflows", "apply", "-f", &bad]).await;
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(out.stderr.contains("was not published"), "{out:?}");
    let issues: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(issues.len(), 2, "{out:?}");
    assert!(
        issues[0].starts_with("  steps[1].depends_on[0]: "),
        "{out:?}"
    );
    assert!(issues[1].starts_with("  steps[1].when: "), "{out:?}");
    let out = server.fails(&["workflows", "show", "bad"]).await;
    assert!(out.stderr.contains("404 not_found"), "{out:?}");

    let unknown_extension = server.file("bad.txt", "name: x\n");
    let out = server
        .fails(&["workflows", "apply", "-f", &unknown_extension])
        .await;
    assert!(out.stderr.contains(".yaml, .yml or .json"), "{out:?}");
    let not_a_definition = server.file("bad.json", r#"{"name": "x", "stepz": []}"#);
    let out = server
        .fails(&["workflows", "apply", "-f", &not_a_definition])
        .await;
    assert!(out.stderr.contains("stepz"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_draws_the_seed_sample_as_a_tree_and_says_why() {
    let server = Server::start().await;
    let out = server
        .ok(&[
            "plan",
            "--title",
            "Invoice export",
            "--description",
            "Add PDF export support to the billing dashboard including automated regression tests.",
        ])
        .await;
    let (tree, why) = out.rsplit_once("planner: ").unwrap();
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
    assert!(why.starts_with("rules — "), "{out}");
    assert!(why.contains("frontend: dashboard"), "{out}");
    // A preview creates nothing.
    let tasks = server.ok(&["tasks", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&tasks).unwrap()["tasks"],
        json!([])
    );

    let out = server
        .ok(&[
            "plan",
            "--title",
            "Login",
            "--description",
            "A login form.",
            "--task-type",
            "feature_development",
            "--param",
            "database=false",
        ])
        .await;
    assert!(
        out.contains("└── database (database) when params.database\n"),
        "{out}"
    );
    assert!(
        out.ends_with("planner: workflow feature_development v1\n"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_run_passes_typed_params_and_watch_follows_the_task_to_its_end() {
    let server = Server::start().await;
    let file = server.file("release.yaml", RELEASE_V1);
    server.ok(&["workflows", "apply", "-f", &file]).await;
    let client = server.client();

    let out = server
        .ok(&[
            "workflows",
            "run",
            "release_notes",
            "--task-id",
            "rel-1",
            "--param",
            r#"version="1.10""#,
            "--param",
            "polish=true",
            "--param",
            "count=3",
        ])
        .await;
    assert!(out.starts_with("task rel-1 "), "{out}");
    let detail = client.task("rel-1").await.unwrap();
    assert_eq!(
        detail.params,
        Some(json!({"version": "1.10", "polish": true, "count": 3}))
    );
    assert_eq!(detail.title, "release_notes");

    // An unquoted 1.10 is a number, which the workflow refuses, naming the parameter.
    let out = server
        .fails(&[
            "workflows",
            "run",
            "release_notes",
            "--param",
            "version=1.10",
        ])
        .await;
    assert!(out.stderr.contains("  params.version: "), "{out:?}");
    let out = server
        .fails(&["workflows", "run", "release_notes", "--param", "version"])
        .await;
    assert!(out.stderr.contains("KEY=VALUE"), "{out:?}");

    // `submit --param` reaches the workflow the task type names.
    let out = server
        .ok(&[
            "submit",
            "--title",
            "Notes",
            "--description",
            "Release notes.",
            "--task-type",
            "release_notes",
            "--param",
            "version=v2",
            "--plan-only",
            "--task-id",
            "sub-1",
        ])
        .await;
    assert!(out.starts_with("task sub-1 planned"), "{out}");
    let detail = client.task("sub-1").await.unwrap();
    assert_eq!(
        detail.params,
        Some(json!({"version": "v2", "polish": false, "count": 1}))
    );

    // An agent serves the steps; `--watch` returns once the task is over, with its result.
    let worker = Worker::new(
        client.clone(),
        WorkerConfig {
            lease_wait_ms: 500,
            ..WorkerConfig::new("writer", ["write", "edit"])
        },
        handler_fn(|job: Job| async move {
            Ok(json!({"text": format!("notes by {}", job.subtask_id)}))
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let out = server
        .ok(&[
            "workflows",
            "run",
            "release_notes",
            "--task-id",
            "rel-2",
            "--param",
            "version=two",
            "--watch",
        ])
        .await;
    assert!(out.starts_with("task rel-2 "), "{out}");
    assert!(out.contains("task rel-2 completed in "), "{out}");
    let detail = client.task("rel-2").await.unwrap();
    let states: Vec<(&str, &str)> = detail
        .subtasks
        .iter()
        .map(|s| (s.id.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(states, [("draft", "completed"), ("polish", "skipped")]);
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}
