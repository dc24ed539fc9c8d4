//! What routing knows of an agent, over a real socket: `GET /agents` and `GET /agents/{id}`
//! show its circuit (closed, open with the end of the cooldown) and the success rate, latency
//! and sample count it learned per capability.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn steps(task_id: &str, n: usize) -> serde_json::Value {
    let subtasks: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("s{i}"), "capability": "x"}))
        .collect();
    json!({"task_id": task_id, "title": "Steps", "description": "routing test",
           "plan": {"subtasks": subtasks}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_shows_its_circuit_and_what_routing_learned() {
    let server = TestServer::start_with(baton_engine::Config {
        breaker_failures: 2,
        breaker_cooldown: Duration::from_secs(60),
        ..engine_config()
    })
    .await;
    let a = server.hand_agent("agent-a", &["x"]).await;
    let fresh = server.get(&format!("/agents/{}", a.agent_id)).await;
    assert_eq!(fresh.status, 200, "{fresh:?}");
    assert_eq!(
        fresh.body["circuit"],
        json!({"state": "closed", "consecutive_failures": 0})
    );
    assert_eq!(fresh.body["routing"], json!({}));

    let created = server.post("/tasks", steps("learn", 3)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let leases = a.lease(3, 2_000).await;
    assert_eq!(leases.len(), 3);
    a.complete(&leases[0].assignment_id, json!({}))
        .await
        .unwrap();
    let after_success = server.get(&format!("/agents/{}", a.agent_id)).await;
    let x = &after_success.body["routing"]["x"];
    assert_eq!(x["success_rate"], 1.0);
    assert_eq!(x["samples"], 1);
    assert!(x["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{x}");

    a.fail(&leases[1].assignment_id, "broke", true)
        .await
        .unwrap();
    a.fail(&leases[2].assignment_id, "broke", true)
        .await
        .unwrap();
    let view = server.client.agent(&a.agent_id).await.unwrap();
    assert_eq!(view.circuit.state, "open");
    assert_eq!(view.circuit.consecutive_failures, 2);
    assert!(view.circuit.open_until.is_some(), "{view:?}");
    let x = &view.routing["x"];
    assert_eq!(x.samples, 3);
    assert!((x.success_rate - 0.81).abs() < 1e-9, "{x:?}");
    // The list shows the same.
    let listed = server.get("/agents").await;
    assert_eq!(listed.body["agents"][0]["circuit"]["state"], "open");
    assert_eq!(listed.body["agents"][0]["routing"]["x"]["samples"], 3);
    server.shutdown().await;
}
