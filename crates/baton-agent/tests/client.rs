//! The client against the mock server: status mapping, error bodies, ids in URLs.

mod common;

use baton_agent::api::SubmitTask;
use baton_agent::{Client, Error};
use common::MockServer;

#[tokio::test]
async fn a_submission_says_whether_it_created_the_task() {
    let server = MockServer::start();
    let client = Client::new(&server.url()).unwrap();
    let task = SubmitTask {
        task_id: Some("t-1".into()),
        title: "title".into(),
        description: "build it".into(),
        ..SubmitTask::default()
    };
    let first = client.orchestrate(&task).await.unwrap();
    assert!(first.created);
    assert_eq!(first.task.task_id, "t-1");
    let again = client.orchestrate(&task).await.unwrap();
    assert!(!again.created);

    let different = SubmitTask {
        description: "something else".into(),
        ..task
    };
    let err = client.orchestrate(&different).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(err.body().unwrap().error, "conflict");
}

#[tokio::test]
async fn ids_reach_the_server_unchanged() {
    let server = MockServer::start();
    let client = Client::new(&server.url()).unwrap();
    for id in ["plain", "a/b", "code::t@x:1.2", "sp ace?q=1#f", "100%", "é"] {
        let detail = client.task(id).await.unwrap();
        assert_eq!(detail.task_id, id);
    }
}

#[tokio::test]
async fn answers_map_to_errors() {
    let server = MockServer::start();
    let client = Client::new(&server.url()).unwrap();

    let err = client.task("missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.body().unwrap().message, "no such task");

    let err = client.task("proxy").await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    assert_eq!(err.body().unwrap().message, "<html>bad gateway</html>");
    assert!(err.is_retryable());

    let err = client.task("broken").await.unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err}");

    let err = client.task("..").await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

#[tokio::test]
async fn a_killed_server_is_a_transport_error() {
    let server = MockServer::start();
    let client = Client::new(&server.url()).unwrap();
    client.task("x").await.unwrap();
    server.kill().await;
    let err = client.task("x").await.unwrap_err();
    assert!(err.is_transport(), "{err}");
}
