//! The benchmark harness works: `baton bench smoke --json` runs every scenario at toy sizes
//! and reports a finite figure for each. This checks the harness, never the speed.

use std::process::Command;

#[test]
fn bench_smoke_runs_every_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["bench", "smoke", "--json"])
        .env("RUST_LOG", "error")
        .output()
        .expect("baton bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json_start = stdout.find("\n{").expect("JSON after the table") + 1;
    let report: serde_json::Value = serde_json::from_str(&stdout[json_start..]).unwrap();
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(report["durability"]
        .as_str()
        .unwrap()
        .contains("synchronous=FULL"));
    let results = report["results"].as_array().unwrap();
    for scenario in [
        "independent",
        "dag",
        "latency",
        "inflight",
        "agents",
        "api",
        "routing",
    ] {
        let figures: Vec<_> = results
            .iter()
            .filter(|r| r["scenario"] == scenario)
            .collect();
        assert!(!figures.is_empty(), "no figures for {scenario}");
        for f in figures {
            let v = f["value"].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{scenario}: {f}");
        }
    }
}
