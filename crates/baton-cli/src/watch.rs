//! Live progress of a task: one line per subtask, updated as its state changes (progress bars
//! on a terminal, plain lines otherwise), until the task is terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use baton_agent::api::TaskDetail;
use baton_agent::Client;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

/// Follow `task_id` until it finishes; returns its final detail.
pub async fn follow(client: &Client, task_id: &str) -> anyhow::Result<TaskDetail> {
    let fancy = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:<44} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut last: HashMap<String, String> = HashMap::new();
    let mut delay = Duration::from_millis(50);
    loop {
        let detail = client.task(task_id).await?;
        for s in &detail.subtasks {
            let line = match &s.assigned_agent {
                Some(agent) if s.state != "pending" => {
                    format!("{} (attempt {}, {agent})", s.state, s.attempts)
                }
                _ => s.state.clone(),
            };
            if last.get(&s.subtask_id) == Some(&line) {
                continue;
            }
            if fancy {
                let bar = bars.entry(s.subtask_id.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(s.subtask_id.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(line.clone());
                if TERMINAL.contains(&s.state.as_str()) || s.state == "skipped" {
                    bar.finish_with_message(line.clone());
                }
            } else {
                eprintln!("  {:<44} {line}", s.subtask_id);
            }
            last.insert(s.subtask_id.clone(), line);
        }
        if TERMINAL.contains(&detail.status.as_str()) {
            for bar in bars.values() {
                bar.finish();
            }
            return Ok(detail);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Print the aggregated result and the timeline.
pub fn print_outcome(detail: &TaskDetail) {
    println!();
    println!(
        "task {} {} in {:.3} s (on time: {})",
        detail.task_id,
        detail.status,
        detail.metrics.elapsed_seconds,
        detail
            .metrics
            .on_time
            .map(|b| b.to_string())
            .unwrap_or_else(|| "no due date".into())
    );
    println!();
    println!("Result:");
    match &detail.result {
        Some(result) => println!(
            "{}",
            serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string())
        ),
        None => println!("(none)"),
    }
    println!();
    println!("Timeline:");
    for e in &detail.status_history {
        let what = e.subtask_id.as_deref().unwrap_or("task");
        let from = e.from.as_deref().unwrap_or("-");
        let agent = e
            .agent
            .as_deref()
            .map(|a| format!("  [{a}]"))
            .unwrap_or_default();
        let note = e
            .note
            .as_deref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default();
        println!("  {}  {what:<40} {from} -> {}{agent}{note}", e.at, e.to);
    }
}
