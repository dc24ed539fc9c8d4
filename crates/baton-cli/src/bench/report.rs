//! Figures, their targets, and how a run is printed.

use serde_json::{json, Value};

use super::BenchArgs;

/// How a figure compares with its target.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    None,
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    pub scenario: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Target,
    /// What was measured, in words (sizes, counts).
    pub note: String,
}

impl Figure {
    pub fn new(
        scenario: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Figure {
        Figure {
            scenario,
            metric: metric.into(),
            value,
            unit,
            target: Target::None,
            note: String::new(),
        }
    }

    pub fn at_least(mut self, t: f64) -> Figure {
        self.target = Target::AtLeast(t);
        self
    }

    pub fn at_most(mut self, t: f64) -> Figure {
        self.target = Target::AtMost(t);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }

    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::AtLeast(t) => Some(self.value >= t),
            Target::AtMost(t) => Some(self.value <= t),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::AtLeast(t) => format!(">= {} {}", fmt_num(t), self.unit),
            Target::AtMost(t) => format!("<= {} {}", fmt_num(t), self.unit),
            Target::None => "-".into(),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A run: where it ran and what it measured.
pub struct Report {
    pub cores: usize,
    pub durability: &'static str,
    pub agents: String,
    pub commit: String,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn new(args: &BenchArgs) -> Report {
        Report {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            durability: "SQLite WAL, synchronous=FULL (every acknowledged change committed)",
            agents: format!(
                "{} no-op SDK agents x concurrency {} over loopback HTTP",
                args.agents, args.agent_concurrency
            ),
            commit: commit(),
            figures: Vec::new(),
        }
    }

    pub fn print_header(&self) {
        println!(
            "Baton bench @ {} | {} cores | {}",
            self.commit, self.cores, self.durability
        );
        println!("agents: {}", self.agents);
        println!(
            "{:<12} {:<26} {:>14}  {:<16} {:<8} measured",
            "scenario", "metric", "value", "target", "met"
        );
    }

    pub fn print_row(&self, f: &Figure) {
        let met = match f.met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "",
        };
        println!(
            "{:<12} {:<26} {:>14}  {:<16} {:<8} {}",
            f.scenario,
            f.metric,
            format!("{} {}", fmt_num(f.value), f.unit),
            f.target_text(),
            met,
            f.note
        );
    }

    pub fn to_json(&self) -> Value {
        json!({
            "machine": {"cores": self.cores},
            "durability": self.durability,
            "agents": self.agents,
            "commit": self.commit,
            "results": self.figures.iter().map(|f| json!({
                "scenario": f.scenario,
                "metric": f.metric,
                "value": f.value,
                "unit": f.unit,
                "target": f.target_text(),
                "met": f.met(),
                "note": f.note,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The commit being measured: `BATON_COMMIT`, else `git rev-parse`, else unknown.
fn commit() -> String {
    if let Ok(c) = std::env::var("BATON_COMMIT") {
        return c;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .map(|c| {
            let dirty = std::process::Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if dirty {
                format!("{c}+dirty")
            } else {
                c
            }
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The value at quantile `q` (0–1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
