//! The rule-based planner, for a task with neither a plan of its own nor a workflow: the
//! keyword categorizer of the orchestrator primer scores every domain of the task and shapes
//! the plan after the primer's patterns (one specialist for a single-domain task, "plan →
//! parallelize → integrate → test → review" for a task that spans several domains). The
//! optional LLM planner's pure half (request and guardrails) lives in [`llm`].
//!
//! Invariants: planning never needs the network and is deterministic; every plan this module
//! returns passes [`Plan::validate`]. Keywords match whole words only (see [`score`]), so
//! "guide" does not count as "ui", nor "decide" as "ci".

pub mod llm;

use crate::plan::{Plan, PlanStep};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The primer's categories and keywords, in the primer's order (which breaks ties and orders
/// parallel steps).
///
/// The primer's lists are kept and extended: with whole-word matching an ordinary request
/// ("billing dashboard", "PDF export", "regression tests", "the deployment pipeline") would
/// otherwise match nothing or only the wrong domain, and words the primer's substring matching
/// used to catch by accident ("testing" via "test", "deployment" via "deploy") are listed
/// explicitly. Plurals need no entry of their own ("pages", "tests", "apis" match "page",
/// "test", "api").
pub const CATEGORIES: &[(&str, &[&str])] = &[
    (
        "frontend",
        &[
            // The primer's.
            "component",
            "ui",
            "page",
            "react",
            "nextjs",
            "tailwind",
            "css",
            "design",
            "responsive",
            // Added.
            "frontend",
            "dashboard",
            "button",
            "form",
            "ux",
            "view",
            "screen",
            "layout",
            "html",
        ],
    ),
    (
        "backend",
        &[
            // The primer's.
            "api",
            "endpoint",
            "fastapi",
            "agent",
            "langgraph",
            "python",
            "service",
            "business logic",
            // Added.
            "backend",
            "server",
            "export",
            "pdf",
            "billing",
            "webhook",
            "auth",
            "authentication",
            "graphql",
        ],
    ),
    (
        "database",
        &[
            // The primer's.
            "migration",
            "schema",
            "query",
            "supabase",
            "postgresql",
            "sql",
            "rls",
            "vector",
            // Added.
            "database",
            "table",
            "index",
            "postgres",
        ],
    ),
    (
        "devops",
        &[
            // The primer's.
            "deploy",
            "docker",
            "ci",
            "cd",
            "github actions",
            "infrastructure",
            "monitoring",
            // Added.
            "deployment",
            "pipeline",
            "kubernetes",
            "helm",
        ],
    ),
    (
        "testing",
        &[
            // The primer's ("tests" is the plural of "test").
            "test",
            "unit test",
            "integration test",
            "e2e",
            "coverage",
            "test suite",
            // Added.
            "testing",
            "regression",
            "qa",
        ],
    ),
    (
        "documentation",
        &[
            // The primer's.
            "docs",
            "readme",
            "documentation",
            "guide",
            "tutorial",
            "comment",
            // Added.
            "changelog",
        ],
    ),
];

/// The category that is not an implementation domain: in a multi-domain plan it becomes the
/// shared `test` step instead of a parallel one.
const TESTING: &str = "testing";

/// The lower-cased words of `text`: maximal runs of alphanumeric characters.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether the text word `word` is the keyword word `key` or its plural (`+s`, `+es`, and
/// `y` → `ies`).
fn word_matches(word: &str, key: &str) -> bool {
    match word.strip_prefix(key) {
        Some(rest) => rest.is_empty() || rest == "s" || rest == "es",
        None => key
            .strip_suffix('y')
            .and_then(|stem| word.strip_prefix(stem))
            .is_some_and(|rest| rest == "ies"),
    }
}

/// Whether `keyword` (one or more words) occurs in the word sequence `text` as consecutive
/// words.
fn occurs(keyword: &[String], text: &[String]) -> bool {
    !keyword.is_empty()
        && text
            .windows(keyword.len())
            .any(|window| window.iter().zip(keyword).all(|(w, k)| word_matches(w, k)))
}

/// Every category that scored for a task, with the keywords that matched (each once, in the
/// order of [`CATEGORIES`]). Categories without a match are absent.
///
/// Matching is on whole words of the lower-cased title and description (split on
/// non-alphanumeric characters, separately, so a keyword never spans the two); a multi-word
/// keyword matches consecutive words, and a word also matches a keyword as its plural.
pub fn score(title: &str, description: &str) -> BTreeMap<String, Vec<String>> {
    let texts = [words(title), words(description)];
    let mut scores = BTreeMap::new();
    for (category, keywords) in CATEGORIES {
        let matched: Vec<String> = keywords
            .iter()
            .filter(|kw| {
                let kw = words(kw);
                texts.iter().any(|text| occurs(&kw, text))
            })
            .map(|kw| (*kw).to_owned())
            .collect();
        if !matched.is_empty() {
            scores.insert((*category).to_owned(), matched);
        }
    }
    scores
}

/// A plan made by [`rules`], with the evidence for it.
#[derive(Clone, Debug, PartialEq)]
pub struct RulePlan {
    pub plan: Plan,
    /// Domain → the keywords that matched, as [`score`] returns them.
    pub matched: BTreeMap<String, Vec<String>>,
}

/// What a domain's own step does, as the end of a sentence naming the task.
fn domain_focus(domain: &str) -> &'static str {
    match domain {
        "frontend" => "Build the user-facing part (pages, components, styling)",
        "backend" => "Implement the server-side part (APIs, services, business logic)",
        "database" => "Make the data changes (schema, migrations, queries)",
        "devops" => "Handle the build, deployment and infrastructure changes",
        "testing" => "Write and run the tests",
        "documentation" => "Write or update the documentation",
        _ => "Carry out the work",
    }
}

fn step(key: &str, capability: &str, depends_on: &[&str], focus: String) -> PlanStep {
    PlanStep {
        key: key.to_owned(),
        capability: capability.to_owned(),
        depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
        input: Map::from_iter([("focus".to_owned(), Value::String(focus))]),
        rules: None,
    }
}

/// Plan a task from the domains its title and description touch ([`score`]):
///
/// - no domain: one step `general`;
/// - one domain: one step for it (key and capability = the domain);
/// - several domains: one step per implementation domain (every matched domain but
///   `testing`), in parallel and in [`CATEGORIES`] order, then `integrate` (capability
///   `integration`, only when there are two or more of them), then `test` (capability
///   `testing`), then `review` (capability `review`), each depending on the step(s) before.
///
/// Every step's input is `{"focus": <one sentence on what the step does for this task>}`.
pub fn rules(title: &str, description: &str) -> RulePlan {
    let matched = score(title, description);
    let title = title.trim();
    let domains: Vec<&str> = CATEGORIES
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| matched.contains_key(*c))
        .collect();
    let steps = match domains.as_slice() {
        [] => vec![step(
            "general",
            "general",
            &[],
            format!("Carry out the task \"{title}\"."),
        )],
        [domain] => vec![step(
            domain,
            domain,
            &[],
            format!("{} for \"{title}\".", domain_focus(domain)),
        )],
        _ => {
            let implementation: Vec<&str> =
                domains.iter().copied().filter(|d| *d != TESTING).collect();
            let mut steps: Vec<PlanStep> = implementation
                .iter()
                .map(|d| step(d, d, &[], format!("{} for \"{title}\".", domain_focus(d))))
                .collect();
            let before_test: Vec<&str> = if implementation.len() >= 2 {
                steps.push(step(
                    "integrate",
                    "integration",
                    &implementation,
                    format!(
                        "Integrate the {} work for \"{title}\" into one consistent change, \
                         resolving any conflicts between the parts.",
                        implementation.join(", ")
                    ),
                ));
                vec!["integrate"]
            } else {
                implementation.clone()
            };
            steps.push(step(
                "test",
                "testing",
                &before_test,
                format!(
                    "Test \"{title}\": add or update automated tests (regression tests \
                     included) and run the whole suite."
                ),
            ));
            steps.push(step(
                "review",
                "review",
                &["test"],
                format!(
                    "Review the finished change for \"{title}\": correctness, code quality, \
                     security, and whether it does what the task asks."
                ),
            ));
            steps
        }
    };
    RulePlan {
        plan: Plan { steps },
        matched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskId;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::HashSet;

    /// `(key, capability, depends_on)` of every step.
    fn shape(plan: &Plan) -> Vec<(&str, &str, Vec<&str>)> {
        plan.steps
            .iter()
            .map(|s| {
                (
                    s.key.as_str(),
                    s.capability.as_str(),
                    s.depends_on.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    fn domains(title: &str, description: &str) -> Vec<String> {
        score(title, description).into_keys().collect()
    }

    #[test]
    fn categorizes_like_the_primer() {
        assert_eq!(
            domains("Build a responsive React component", ""),
            ["frontend"]
        );
        assert_eq!(
            domains("Add an API endpoint for the service", ""),
            ["backend"]
        );
        assert_eq!(domains("Write a schema migration", ""), ["database"]);
        assert_eq!(domains("Update the README guide", ""), ["documentation"]);
        assert_eq!(
            shape(&rules("zzz", "").plan),
            [("general", "general", vec![])]
        );
    }

    #[test]
    fn keywords_match_whole_words_only() {
        // The primer's substring matching found "ui" in "guide", "ci" in "decide",
        // "api" in "capital", "cd" in "abcd", "test" in "latest".
        assert_eq!(domains("Write a guide", ""), ["documentation"]);
        assert!(domains("Decide on capital allocation", "abcd latest").is_empty());
        assert_eq!(
            shape(&rules("Decide the capital", "").plan),
            [("general", "general", vec![])]
        );
        // Punctuation separates words; case does not matter.
        assert_eq!(
            score("Fix the UI/UX", "(CSS)"),
            BTreeMap::from([(
                "frontend".to_owned(),
                vec!["ui".to_owned(), "css".to_owned(), "ux".to_owned()]
            )])
        );
    }

    #[test]
    fn multi_word_keywords_and_plurals() {
        let matched = score("Unit tests", "for the GitHub Actions pipelines");
        assert_eq!(matched["testing"], ["test", "unit test"]);
        assert_eq!(matched["devops"], ["github actions", "pipeline"]);
        // Words of a multi-word keyword must be consecutive.
        assert!(!score("business and logic", "").contains_key("backend"));
        assert_eq!(score("", "business logic")["backend"], ["business logic"]);
        // +s, +es, y -> ies.
        assert_eq!(score("", "new indexes")["database"], ["index"]);
        assert_eq!(score("", "slow queries")["database"], ["query"]);
        assert_eq!(score("", "two pages")["frontend"], ["page"]);
        // Not every suffix: "paged", "pageant" are not "page".
        assert!(score("paged", "pageant").is_empty());
        // A keyword does not span title and description.
        assert!(!score("business", "logic").contains_key("backend"));
    }

    #[test]
    fn matched_keywords_are_deduplicated_in_keyword_order() {
        let matched = score("PDF export", "export a PDF; exports of PDFs via the API");
        assert_eq!(matched["backend"], ["api", "export", "pdf"]);
    }

    #[test]
    fn the_seed_sample_is_a_multi_domain_plan() {
        let planned = rules(
            "Implement invoice PDF export",
            "Add PDF export support to the billing dashboard including automated regression tests.",
        );
        assert_eq!(
            shape(&planned.plan),
            [
                ("frontend", "frontend", vec![]),
                ("backend", "backend", vec![]),
                ("integrate", "integration", vec!["frontend", "backend"]),
                ("test", "testing", vec!["integrate"]),
                ("review", "review", vec!["test"]),
            ]
        );
        assert_eq!(
            planned.matched,
            BTreeMap::from([
                ("frontend".to_owned(), vec!["dashboard".to_owned()]),
                (
                    "backend".to_owned(),
                    vec!["export".to_owned(), "pdf".to_owned(), "billing".to_owned()]
                ),
                (
                    "testing".to_owned(),
                    vec!["test".to_owned(), "regression".to_owned()]
                ),
            ])
        );
        assert!(planned.plan.validate("plan.subtasks").is_empty());
        let focus = &planned.plan.steps[0].input["focus"];
        assert!(focus
            .as_str()
            .unwrap()
            .contains("\"Implement invoice PDF export\""));
        for step in &planned.plan.steps {
            assert_eq!(step.input.len(), 1);
            assert!(step.input["focus"]
                .as_str()
                .is_some_and(|f| f.ends_with('.')));
        }
        // As subtasks with seed-shaped ids.
        let subtasks = planned.plan.instantiate(&TaskId::from("feature-1087"), 0);
        assert_eq!(
            subtasks[2].subtask_id.as_str(),
            "integration::feature-1087::1"
        );
        assert_eq!(subtasks[2].depends_on, [0, 1]);
    }

    #[test]
    fn one_domain_is_one_step() {
        let planned = rules("Fix CSS", "the page layout is broken");
        assert_eq!(shape(&planned.plan), [("frontend", "frontend", vec![])]);
        assert_eq!(
            planned.plan.steps[0].input["focus"],
            json!("Build the user-facing part (pages, components, styling) for \"Fix CSS\".")
        );
        assert_eq!(
            shape(&rules("Write a schema migration", "with a new SQL query").plan),
            [("database", "database", vec![])]
        );
        // Testing alone is a domain of its own.
        assert_eq!(
            shape(&rules("Raise coverage", "more unit tests").plan),
            [("testing", "testing", vec![])]
        );
    }

    #[test]
    fn nothing_matched_is_general() {
        let planned = rules("Ponder", "zzz");
        assert!(planned.matched.is_empty());
        assert_eq!(shape(&planned.plan), [("general", "general", vec![])]);
        assert_eq!(
            planned.plan.steps[0].input["focus"],
            json!("Carry out the task \"Ponder\".")
        );
    }

    #[test]
    fn one_domain_with_testing_is_a_chain() {
        let planned = rules("Add an API endpoint", "with regression tests");
        assert_eq!(
            shape(&planned.plan),
            [
                ("backend", "backend", vec![]),
                ("test", "testing", vec!["backend"]),
                ("review", "review", vec!["test"]),
            ]
        );
    }

    #[test]
    fn many_domains_run_in_primer_order() {
        let planned = rules(
            "Ship the changelog",
            "Deploy the new table behind the webhook and show it on a screen",
        );
        assert_eq!(
            shape(&planned.plan),
            [
                ("frontend", "frontend", vec![]),
                ("backend", "backend", vec![]),
                ("database", "database", vec![]),
                ("devops", "devops", vec![]),
                ("documentation", "documentation", vec![]),
                (
                    "integrate",
                    "integration",
                    vec!["frontend", "backend", "database", "devops", "documentation"]
                ),
                ("test", "testing", vec!["integrate"]),
                ("review", "review", vec!["test"]),
            ]
        );
        assert!(planned.plan.validate("plan.subtasks").is_empty());
    }

    #[test]
    fn keyword_lists_are_clean() {
        let mut seen = HashSet::new();
        for (category, keywords) in CATEGORIES {
            assert!(crate::ids::check_name(category, true).is_none());
            for kw in *keywords {
                assert!(seen.insert(*kw), "{kw} listed twice");
                // Lower-case words, so that they can match.
                assert_eq!(words(kw).join(" "), *kw, "{kw} is not lower-case words");
            }
        }
    }

    proptest! {
        /// Whatever the text, the rules give a valid plan whose domain steps are exactly the
        /// scored domains (testing folded into `test` when there are several).
        #[test]
        fn rule_plans_are_valid(
            title in "[a-zA-Z ./-]{0,40}",
            picks in proptest::collection::vec(0usize..200, 0..8),
            noise in "\\PC{0,60}",
        ) {
            let keywords: Vec<&str> = CATEGORIES.iter().flat_map(|(_, k)| k.iter().copied()).collect();
            let description: Vec<&str> = picks.iter().map(|&i| keywords[i % keywords.len()]).collect();
            let description = format!("{} {noise}", description.join(", "));
            let planned = rules(&title, &description);
            prop_assert!(planned.plan.validate("plan.subtasks").is_empty(), "{:?}", planned.plan);
            let keys: Vec<&str> = planned.plan.steps.iter().map(|s| s.key.as_str()).collect();
            match planned.matched.len() {
                0 => prop_assert_eq!(keys, ["general"]),
                1 => prop_assert_eq!(keys, [planned.matched.keys().next().unwrap().as_str()]),
                _ => {
                    prop_assert_eq!(keys[keys.len() - 2..].to_vec(), ["test", "review"]);
                    for domain in planned.matched.keys().filter(|d| *d != TESTING) {
                        prop_assert!(keys.contains(&domain.as_str()));
                    }
                    prop_assert!(!keys.contains(&TESTING));
                }
            }
            for (domain, kws) in &planned.matched {
                let listed = CATEGORIES.iter().find(|(c, _)| c == domain).unwrap().1;
                // In keyword order, without repeats.
                let positions: Vec<usize> = kws
                    .iter()
                    .map(|k| listed.iter().position(|l| l == k).unwrap())
                    .collect();
                prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
