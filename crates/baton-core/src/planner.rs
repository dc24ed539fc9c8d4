//! The rule-based planner: a `task_type` picks a built-in workflow template; otherwise the
//! keyword categorizer of the orchestrator primer gives a one-step plan for the winning
//! category (`general` when no keyword matches). Planning never needs the network.

use crate::plan::{Plan, PlanStep};
use serde_json::{Map, Value};

/// The primer's categories and keywords, in the primer's order (which breaks ties).
pub const CATEGORIES: &[(&str, &[&str])] = &[
    (
        "frontend",
        &[
            "component",
            "ui",
            "page",
            "react",
            "nextjs",
            "tailwind",
            "css",
            "design",
            "responsive",
        ],
    ),
    (
        "backend",
        &[
            "api",
            "endpoint",
            "fastapi",
            "agent",
            "langgraph",
            "python",
            "service",
            "business logic",
        ],
    ),
    (
        "database",
        &[
            "migration",
            "schema",
            "query",
            "supabase",
            "postgresql",
            "sql",
            "rls",
            "vector",
        ],
    ),
    (
        "devops",
        &[
            "deploy",
            "docker",
            "ci",
            "cd",
            "github actions",
            "infrastructure",
            "monitoring",
        ],
    ),
    (
        "testing",
        &[
            "test",
            "unit test",
            "integration test",
            "e2e",
            "coverage",
            "test suite",
        ],
    ),
    (
        "documentation",
        &[
            "docs",
            "readme",
            "documentation",
            "guide",
            "tutorial",
            "comment",
        ],
    ),
];

/// The category a description falls into: the one whose keywords occur most often as
/// substrings of the lower-cased text (as the primer scores them), the earliest on a tie,
/// `general` when none occurs.
pub fn categorize(description: &str) -> &'static str {
    let text = description.to_lowercase();
    let mut best = ("general", 0usize);
    for (category, keywords) in CATEGORIES {
        let score = keywords.iter().filter(|kw| text.contains(*kw)).count();
        if score > best.1 {
            best = (category, score);
        }
    }
    best.0
}

/// `(step id, capability, brief)`.
type TemplateStep = (&'static str, &'static str, &'static str);

/// Built-in workflow templates: `(task_type, [(step, capability, brief)])`, each step
/// depending on the one before it.
const TEMPLATES: &[(&str, &[TemplateStep])] = &[(
    "create_blog_post",
    &[
        ("generate", "generate_content", "Draft the blog post"),
        (
            "enhance",
            "enhance_content",
            "Improve grammar, style and readability",
        ),
        (
            "review",
            "review_content",
            "Review for factual accuracy and tone compliance",
        ),
        (
            "export",
            "export_document",
            "Format the final blog post as a document",
        ),
        (
            "publish",
            "publish_content",
            "Publish the post to the blog platform",
        ),
    ],
)];

/// The names of the built-in templates.
pub fn template_names() -> impl Iterator<Item = &'static str> {
    TEMPLATES.iter().map(|(name, _)| *name)
}

/// The built-in template for `task_type`, instantiated for a task titled `title`.
pub fn template(task_type: &str, title: &str) -> Option<Plan> {
    let (_, steps) = TEMPLATES.iter().find(|(name, _)| *name == task_type)?;
    let mut previous: Option<&str> = None;
    let steps = steps
        .iter()
        .map(|(key, capability, brief)| {
            let mut input = Map::new();
            input.insert("brief".into(), Value::String(format!("{brief}: {title}")));
            let step = PlanStep {
                key: (*key).into(),
                capability: (*capability).into(),
                depends_on: previous.map(|p| vec![p.to_owned()]).unwrap_or_default(),
                input,
            };
            previous = Some(key);
            step
        })
        .collect();
    Some(Plan { steps })
}

/// Plan a task that brought no plan of its own: its template if `task_type` names one,
/// else one step for the category of its title and description.
pub fn plan(task_type: Option<&str>, title: &str, description: &str) -> Plan {
    if let Some(plan) = task_type.and_then(|t| template(t, title)) {
        return plan;
    }
    let category = categorize(&format!("{title}\n{description}"));
    Plan {
        steps: vec![PlanStep {
            key: category.into(),
            capability: category.into(),
            depends_on: Vec::new(),
            input: Map::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskId;

    #[test]
    fn categorizes_like_the_primer() {
        assert_eq!(categorize("Build a responsive React component"), "frontend");
        assert_eq!(categorize("Add an API endpoint for the service"), "backend");
        assert_eq!(categorize("Write a schema migration"), "database");
        assert_eq!(categorize("Update the README guide"), "documentation");
        assert_eq!(categorize("zzz"), "general");
        // Ties go to the earliest category: one frontend keyword, one backend keyword.
        assert_eq!(categorize("page api"), "frontend");
    }

    #[test]
    fn blog_post_template_is_a_chain() {
        let plan = plan(Some("create_blog_post"), "AI ethics", "");
        assert!(plan.validate("plan").is_empty());
        let caps: Vec<&str> = plan.steps.iter().map(|s| s.capability.as_str()).collect();
        assert_eq!(
            caps,
            [
                "generate_content",
                "enhance_content",
                "review_content",
                "export_document",
                "publish_content"
            ]
        );
        let subtasks = plan.instantiate(&TaskId::from("t"), 0);
        assert!(subtasks[0].depends_on.is_empty());
        for w in subtasks.windows(2) {
            assert_eq!(w[1].depends_on, vec![w[0].index]);
        }
        assert_eq!(subtasks[0].input["brief"], "Draft the blog post: AI ethics");
    }

    #[test]
    fn unknown_task_type_falls_back_to_the_categorizer() {
        let plan = plan(Some("nope"), "Fix CSS", "the page layout");
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].capability, "frontend");
        assert!(template_names().any(|n| n == "create_blog_post"));
    }
}
