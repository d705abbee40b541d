//! VMA client classification against real HTTP: wiremock for answers, raw sockets for faults.

use std::time::Duration;

use oma::vma_client::{LookupKey, Observation, UnavailableKind, VmaClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn progress_json(job_id: &str, status: &str, phase: &str, pct: f64) -> serde_json::Value {
    serde_json::json!({
        "job_id": job_id, "status": status, "sync_type": "full", "phase": phase, "percentage": pct,
        "current_operation": "Transferring Data", "bytes_transferred": 1024, "total_bytes": 4096,
        "throughput": {"current_mbps": 12.5, "average_mbps": 12.5, "peak_mbps": 12.5, "last_update": "2025-10-03T14:00:00Z"},
        "timing": {"start_time": "2025-10-03T13:00:00Z", "last_update": "2025-10-03T14:00:00Z", "elapsed_ms": 1,
                   "phase_start": "2025-10-03T13:00:00Z", "phase_elapsed_ms": 1, "eta_seconds": 42},
        "vm_info": {"name": "unknown", "path": "unknown", "disk_size_gb": 0, "disk_size_bytes": 4096, "cbt_enabled": true},
        "phases": [{"name": phase, "status": status, "start_time": "2025-10-03T13:00:00Z", "end_time": "", "duration_ms": 0}],
        "errors": [], "last_error": null
    })
}

async fn observe(server: &MockServer, id: &str) -> Observation {
    VmaClient::new(&server.uri(), Duration::from_millis(500)).get_progress(id).await
}

async fn mount(server: &MockServer, id: &str, response: ResponseTemplate) {
    Mock::given(method("GET")).and(path(format!("/api/v1/progress/{id}"))).respond_with(response).mount(server).await;
}

fn unavailable_kind(o: &Observation) -> UnavailableKind {
    match o {
        Observation::Unavailable { kind, .. } => *kind,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn running_completed_and_failed_bodies() {
    let server = MockServer::start().await;
    mount(
        &server,
        "run",
        ResponseTemplate::new(200).set_body_json(progress_json("run", "in_progress", "Transfer", 30.0)),
    )
    .await;
    mount(
        &server,
        "done",
        ResponseTemplate::new(200).set_body_json(progress_json("done", "completed", "Transfer", 100.0)),
    )
    .await;
    let mut failed = progress_json("bad", "failed", "Transfer", 40.0);
    failed["last_error"] = serde_json::json!("NBD connection refused");
    mount(&server, "bad", ResponseTemplate::new(200).set_body_json(failed)).await;
    match observe(&server, "run").await {
        Observation::Running(p) => {
            assert_eq!(p.percentage, 30.0);
            assert_eq!(p.timing.eta_seconds, 42);
            assert_eq!(p.transfer_speed_bps(), (12.5 * 1_048_576.0) as i64);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(observe(&server, "done").await, Observation::Completed(_)));
    match observe(&server, "bad").await {
        Observation::Failed { message, .. } => assert_eq!(message, "NBD connection refused"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn not_found_as_404_text_and_as_http_200() {
    let server = MockServer::start().await;
    mount(&server, "gone", ResponseTemplate::new(404).set_body_raw("job not found\n", "text/plain; charset=utf-8"))
        .await;
    mount(&server, "text200", ResponseTemplate::new(200).set_body_raw("job not found\n", "text/plain; charset=utf-8"))
        .await;
    mount(
        &server,
        "json200",
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"error": "Job Not Found", "job_id": "x"})),
    )
    .await;
    assert_eq!(observe(&server, "gone").await, Observation::NotFound { http200: false });
    assert_eq!(observe(&server, "text200").await, Observation::NotFound { http200: true });
    assert_eq!(observe(&server, "json200").await, Observation::NotFound { http200: true });
}

#[tokio::test]
async fn malformed_oversized_and_5xx_bodies_are_unavailable() {
    let server = MockServer::start().await;
    mount(
        &server,
        "trunc",
        ResponseTemplate::new(200).set_body_raw(r#"{"job_id":"trunc","status":"in_pro"#, "application/json"),
    )
    .await;
    let mut wrong = progress_json("wrong", "in_progress", "Transfer", 1.0);
    wrong["percentage"] = serde_json::json!("fifty");
    mount(&server, "wrong", ResponseTemplate::new(200).set_body_json(wrong)).await;
    mount(&server, "huge", ResponseTemplate::new(200).set_body_raw(vec![b' '; 2 * 1024 * 1024], "application/json"))
        .await;
    mount(&server, "boom", ResponseTemplate::new(500).set_body_string("internal server error")).await;
    mount(&server, "gateway", ResponseTemplate::new(502)).await;
    mount(&server, "teapot", ResponseTemplate::new(418)).await;
    mount(&server, "slow", ResponseTemplate::new(200).set_delay(Duration::from_secs(2))).await;
    assert_eq!(unavailable_kind(&observe(&server, "trunc").await), UnavailableKind::MalformedBody);
    assert_eq!(unavailable_kind(&observe(&server, "wrong").await), UnavailableKind::MalformedBody);
    assert_eq!(unavailable_kind(&observe(&server, "huge").await), UnavailableKind::BodyTooLarge);
    assert_eq!(unavailable_kind(&observe(&server, "boom").await), UnavailableKind::ServerError);
    assert_eq!(unavailable_kind(&observe(&server, "gateway").await), UnavailableKind::ServerError);
    assert_eq!(unavailable_kind(&observe(&server, "teapot").await), UnavailableKind::UnexpectedStatus);
    assert_eq!(unavailable_kind(&observe(&server, "slow").await), UnavailableKind::Timeout);
}

#[tokio::test]
async fn connection_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = VmaClient::new(&format!("http://{addr}"), Duration::from_millis(500));
    assert_eq!(unavailable_kind(&client.get_progress("x").await), UnavailableKind::ConnectionRefused);
}

/// A server that accepts and then misbehaves in one of several ways.
async fn raw_server(behaviour: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                match behaviour {
                    // Close with the request unread: Linux answers with RST.
                    "reset" => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        drop(sock);
                    }
                    "eof" => {
                        let mut buf = [0u8; 4096];
                        let _ = sock.read(&mut buf).await;
                        drop(sock);
                    }
                    "hang_after_headers" => {
                        let mut buf = [0u8; 4096];
                        let _ = sock.read(&mut buf).await;
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"job_id\"")
                            .await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    _ => tokio::time::sleep(Duration::from_secs(5)).await,
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn reset_eof_hang_and_blackhole() {
    let cases = [
        ("reset", UnavailableKind::ConnectionReset),
        ("eof", UnavailableKind::UnexpectedEof),
        ("hang_after_headers", UnavailableKind::Timeout),
        ("blackhole", UnavailableKind::Timeout),
    ];
    for (behaviour, expected) in cases {
        let url = raw_server(behaviour).await;
        let client = VmaClient::new(&url, Duration::from_millis(400));
        let observed = client.get_progress("x").await;
        assert_eq!(unavailable_kind(&observed), expected, "{behaviour}: {observed:?}");
    }
}

#[tokio::test]
async fn lookup_tries_export_names_first_then_the_job_id() {
    let server = MockServer::start().await;
    mount(&server, "migration-vol-a", ResponseTemplate::new(404).set_body_string("job not found\n")).await;
    mount(
        &server,
        "migration-vol-b",
        ResponseTemplate::new(200).set_body_json(progress_json("job-1", "in_progress", "Transfer", 5.0)),
    )
    .await;
    mount(
        &server,
        "job-1",
        ResponseTemplate::new(200).set_body_json(progress_json("job-1", "in_progress", "Transfer", 5.0)),
    )
    .await;
    let client = VmaClient::new(&server.uri(), Duration::from_millis(500));
    let names = vec!["migration-vol-a".to_string(), "migration-vol-b".to_string()];
    let lookup = client.lookup("job-1", &names, None).await;
    assert_eq!(lookup.via, Some(LookupKey::ExportName("migration-vol-b".into())));
    let paths: Vec<String> =
        server.received_requests().await.unwrap().iter().map(|r| r.url.path().to_string()).collect();
    assert_eq!(paths, vec!["/api/v1/progress/migration-vol-a", "/api/v1/progress/migration-vol-b"]);
    // The preferred key is asked first next time.
    let again = client.lookup("job-1", &names, lookup.via.as_ref()).await;
    assert_eq!(again.attempts.len(), 1);
}

#[tokio::test]
async fn an_export_name_carrying_another_jobs_progress_is_not_trusted() {
    let server = MockServer::start().await;
    mount(
        &server,
        "migration-vol-a",
        ResponseTemplate::new(200).set_body_json(progress_json("job-OLD", "completed", "Transfer", 100.0)),
    )
    .await;
    mount(
        &server,
        "job-new",
        ResponseTemplate::new(200).set_body_json(progress_json("job-new", "in_progress", "Transfer", 3.0)),
    )
    .await;
    let client = VmaClient::new(&server.uri(), Duration::from_millis(500));
    let lookup = client.lookup("job-new", &["migration-vol-a".to_string()], None).await;
    assert!(matches!(lookup.observation, Observation::Running(_)), "{:?}", lookup.observation);
    assert_eq!(lookup.via, Some(LookupKey::JobId));
}

#[tokio::test]
async fn a_dead_vma_is_not_asked_once_per_name() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = VmaClient::new(&format!("http://{addr}"), Duration::from_millis(300));
    let names: Vec<String> = (0..5).map(|i| format!("migration-vol-{i}")).collect();
    let lookup = client.lookup("job-1", &names, None).await;
    assert_eq!(unavailable_kind(&lookup.observation), UnavailableKind::ConnectionRefused);
    assert_eq!(lookup.attempts.len(), 1);
}

#[tokio::test]
async fn the_client_names_its_oma_instance() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/progress/job-ua"))
        .and(wiremock::matchers::header("user-agent", format!("oma/{} (host-a:8082)", env!("CARGO_PKG_VERSION"))))
        .respond_with(ResponseTemplate::new(200).set_body_json(progress_json("job-ua", "in_progress", "Transfer", 5.0)))
        .mount(&server)
        .await;
    let client = VmaClient::for_instance(&server.uri(), Duration::from_millis(500), Some("host-a:8082"));
    let observed = client.get_progress("job-ua").await;
    assert!(matches!(observed, Observation::Running(_)), "{observed:?}");
}
