//! sim-vma over real HTTP: golden wire format, every mode, fault and transition, restart,
//! journal bounds, concurrent-poller detection, bad control input and seeded determinism.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sim_vma::{ControlClient, SimConfig, SimVma};

async fn sim(seed: u64) -> (SimVma, ControlClient, reqwest::Client) {
    let sim = SimVma::start(SimConfig { seed: Some(seed), ..SimConfig::default() }).await.unwrap();
    let control = ControlClient::new(&sim.control_url());
    let http = reqwest::Client::builder().timeout(Duration::from_millis(800)).build().unwrap();
    (sim, control, http)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn keys_and_types(v: &Value) -> Vec<(String, &'static str)> {
    v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), json_type(v))).collect()
}

#[tokio::test]
async fn golden_progress_body_keys_order_and_types() {
    let (sim, control, http) = sim(1).await;
    control
        .put_job_json("job-1", &json!({"mode": "running", "start_percent": 30, "export_names": ["migration-vol-a"]}))
        .await
        .unwrap();
    let resp = http.get(format!("{}/api/v1/progress/job-1", sim.vma_url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    let expected = [
        ("job_id", "string"),
        ("status", "string"),
        ("sync_type", "string"),
        ("phase", "string"),
        ("percentage", "number"),
        ("current_operation", "string"),
        ("bytes_transferred", "number"),
        ("total_bytes", "number"),
        ("throughput", "object"),
        ("timing", "object"),
        ("vm_info", "object"),
        ("phases", "array"),
        ("errors", "array"),
        ("last_error", "null"),
    ];
    // Key order as the real VMA writes it (serde_json keeps insertion order only with preserve_order,
    // so check the raw text's order).
    let positions: Vec<usize> = expected.iter().map(|(k, _)| text.find(&format!("\"{k}\":")).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "key order: {text}");
    let mut got = keys_and_types(&body);
    got.sort();
    let mut want: Vec<(String, &str)> = expected.iter().map(|(k, t)| (k.to_string(), *t)).collect();
    want.sort();
    assert_eq!(got, want);
    let nested = [
        (
            "throughput",
            vec![
                ("average_mbps", "number"),
                ("current_mbps", "number"),
                ("last_update", "string"),
                ("peak_mbps", "number"),
            ],
        ),
        (
            "timing",
            vec![
                ("elapsed_ms", "number"),
                ("eta_seconds", "number"),
                ("last_update", "string"),
                ("phase_elapsed_ms", "number"),
                ("phase_start", "string"),
                ("start_time", "string"),
            ],
        ),
        (
            "vm_info",
            vec![
                ("cbt_enabled", "bool"),
                ("disk_size_bytes", "number"),
                ("disk_size_gb", "number"),
                ("name", "string"),
                ("path", "string"),
            ],
        ),
    ];
    for (key, fields) in nested {
        let mut got = keys_and_types(&body[key]);
        got.sort();
        let want: Vec<(String, &str)> = fields.iter().map(|(k, t)| (k.to_string(), *t)).collect();
        assert_eq!(got, want, "{key}");
    }
    assert_eq!(body["phases"].as_array().unwrap().len(), 1);
    let mut phase = keys_and_types(&body["phases"][0]);
    phase.sort();
    assert_eq!(
        phase,
        vec![
            ("duration_ms".into(), "number"),
            ("end_time".into(), "string"),
            ("name".into(), "string"),
            ("start_time".into(), "string"),
            ("status".into(), "string")
        ]
    );
    assert_eq!(body["status"], "in_progress");
    assert_eq!(body["phase"], "Transfer");
    assert_eq!(body["current_operation"], "Transferring Data");
    assert_eq!(body["percentage"], 30.0);
    assert_eq!(body["vm_info"]["name"], "unknown");
    assert!(body["timing"]["start_time"].as_str().unwrap().ends_with('Z'));
    assert!(body.get("disk_progresses").is_none());
}

#[tokio::test]
async fn unknown_job_is_a_plain_text_404() {
    let (sim, _control, http) = sim(1).await;
    let resp = http.get(format!("{}/api/v1/progress/nope", sim.vma_url())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.text().await.unwrap(), "job not found\n");
    let resp = http.get(format!("{}/api/v1/nothing-here", sim.vma_url())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "404 page not found\n");
}

#[tokio::test]
async fn wrong_methods_and_oversized_bodies_are_refused_like_the_vma() {
    let (sim, _control, http) = sim(1).await;
    let resp = http.post(format!("{}/api/v1/progress/job-1", sim.vma_url())).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.text().await.unwrap(), "");
    let resp = http.get(format!("{}/api/v1/replicate", sim.vma_url())).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let huge = vec![b' '; 3 * 1024 * 1024];
    let resp = http.post(format!("{}/api/v1/replicate", sim.vma_url())).body(huge).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert!(resp.text().await.unwrap().contains("larger than"));
}

#[tokio::test]
async fn replicate_then_progress_by_job_id_and_by_export_name() {
    let (sim, _control, http) = sim(1).await;
    let resp = http
        .post(format!("{}/api/v1/replicate", sim.vma_url()))
        .json(&json!({"job_id": "job-r", "vcenter": "vc", "username": "u", "password": "p", "vm_paths": ["/DC/vm/a"],
                      "oma_url": "http://localhost:8082",
                      "nbd_targets": [{"device_path": "nbd://:10808/migration-vol-11", "vmware_disk_key": "2000"},
                                      {"device_path": "nbd://:10808/migration-vol-22", "vmware_disk_key": "2001"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "started");
    assert_eq!(body["job_id"], "job-r");
    assert_eq!(body["vm_count"], 1);
    for id in ["job-r", "migration-vol-11", "migration-vol-22"] {
        let body: Value =
            http.get(format!("{}/api/v1/progress/{id}", sim.vma_url())).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["job_id"], "job-r", "{id}");
    }
    let status: Value =
        http.get(format!("{}/api/v1/status/job-r", sim.vma_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "running");
    let bad = http.post(format!("{}/api/v1/replicate", sim.vma_url())).body("{").send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn update_auto_creates_a_job() {
    let (sim, _control, http) = sim(1).await;
    let url = format!("{}/api/v1/progress/job-u/update", sim.vma_url());
    let first: Value = http.post(&url).json(&json!({"stage": "Transfer", "status": "in_progress", "bytes_transferred": 50, "total_bytes": 200, "sync_type": "initial"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(first, json!({"status": "success", "auto_initialized": true, "job_id": "job-u"}));
    let second: Value = http.post(&url).json(&json!({"percent": 60.0})).send().await.unwrap().json().await.unwrap();
    assert_eq!(second, json!({"status": "success", "job_id": "job-u"}));
    let body: Value =
        http.get(format!("{}/api/v1/progress/job-u", sim.vma_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["percentage"], 60.0);
    assert_eq!(body["sync_type"], "full");
    assert_eq!(body["phase"], "Transfer");
    let bad = http.post(&url).body("not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

async fn get(http: &reqwest::Client, sim: &SimVma, id: &str) -> Result<(u16, String, String), reqwest::Error> {
    let resp = http.get(format!("{}/api/v1/progress/{id}", sim.vma_url())).send().await?;
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    Ok((status, ct, resp.text().await?))
}

#[tokio::test]
async fn every_mode_answers_as_specified() {
    let (sim, control, http) = sim(1).await;
    let cases = [
        (json!({"mode": "completed"}), 200, "completed"),
        (json!({"mode": "failed", "message": "disk read error"}), 200, "failed"),
        (json!({"mode": "not_found"}), 404, "job not found\n"),
        (json!({"mode": "http200_not_found"}), 200, "job not found\n"),
        (json!({"mode": "error", "status": 503}), 503, "internal server error\n"),
        (json!({"mode": "stale"}), 200, "in_progress"),
    ];
    for (i, (spec, status, needle)) in cases.into_iter().enumerate() {
        let id = format!("job-{i}");
        control.put_job_json(&id, &spec).await.unwrap();
        let (s, _, body) = get(&http, &sim, &id).await.unwrap();
        assert_eq!(s, status, "{spec}");
        assert!(body.contains(needle), "{spec}: {body}");
    }
    let failed: Value = serde_json::from_str(&get(&http, &sim, "job-1").await.unwrap().2).unwrap();
    assert_eq!(failed["last_error"], "disk read error");
    for kind in ["not_json", "truncated", "wrong_types", "oversized"] {
        control.put_job_json("bad", &json!({"mode": "malformed", "kind": kind})).await.unwrap();
        let big = reqwest::Client::new();
        let (s, _, body) = get(&big, &sim, "bad").await.unwrap();
        assert_eq!(s, 200);
        let parsed = serde_json::from_str::<Value>(&body);
        match kind {
            "wrong_types" => assert!(parsed.unwrap()["percentage"].is_string()),
            "oversized" => assert!(body.len() > 4 * 1024 * 1024),
            _ => assert!(parsed.is_err(), "{kind}"),
        }
    }
    control.put_job_json("slow", &json!({"mode": "slow", "delay": "300ms"})).await.unwrap();
    let t = Instant::now();
    assert_eq!(get(&http, &sim, "slow").await.unwrap().0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Forget: 404 from then on.
    control.forget_job("job-0").await.unwrap();
    assert_eq!(get(&http, &sim, "job-0").await.unwrap().0, 404);
}

#[tokio::test]
async fn counted_and_timed_transitions_over_http() {
    let (sim, control, http) = sim(1).await;
    control
        .put_job_json("c", &json!({"mode": "running", "start_percent": 10, "rate_per_poll": 10, "transitions": [{"after_polls": 3, "mode": "completed"}]}))
        .await
        .unwrap();
    let mut pcts = Vec::new();
    for _ in 0..4 {
        let body: Value = serde_json::from_str(&get(&http, &sim, "c").await.unwrap().2).unwrap();
        pcts.push((body["status"].as_str().unwrap().to_string(), body["percentage"].as_f64().unwrap()));
    }
    assert_eq!(pcts[0], ("in_progress".to_string(), 10.0));
    assert_eq!(pcts[2], ("in_progress".to_string(), 30.0));
    assert_eq!(pcts[3].0, "completed");
    control
        .put_job_json("t", &json!({"mode": "running", "transitions": [{"after": "200ms", "mode": "not_found"}]}))
        .await
        .unwrap();
    assert_eq!(get(&http, &sim, "t").await.unwrap().0, 200);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if get(&http, &sim, "t").await.unwrap().0 == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "timed transition never fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refused_really_refuses_tcp_connects_and_comes_back() {
    let (sim, control, _http) = sim(1).await;
    control.set_faults_json(&json!({"unreachable": {"mode": "refused"}})).await.unwrap();
    let e = tokio::net::TcpStream::connect(sim.vma_addr()).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // The control API stays up.
    assert_eq!(control.health().await.unwrap()["listener_up"], false);
    control.clear_faults().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while tokio::net::TcpStream::connect(sim.vma_addr()).await.is_err() {
        assert!(Instant::now() < deadline, "listener never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn blackhole_reset_and_hang_make_real_clients_fail() {
    let (sim, control, http) = sim(1).await;
    control.put_job_json("j", &json!({"mode": "running"})).await.unwrap();
    // A pooled connection exists before the fault: it must be affected too.
    assert_eq!(get(&http, &sim, "j").await.unwrap().0, 200);
    control.set_faults_json(&json!({"unreachable": {"mode": "blackhole"}})).await.unwrap();
    let e = get(&http, &sim, "j").await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    control.set_faults_json(&json!({"unreachable": {"mode": "reset"}})).await.unwrap();
    let e = get(&http, &sim, "j").await.unwrap_err();
    assert!(!e.is_timeout() && (e.is_request() || e.is_connect() || e.is_body()), "{e:?}");
    control.set_faults_json(&json!({"unreachable": {"mode": "hang_after_headers"}})).await.unwrap();
    let resp = http.get(format!("{}/api/v1/progress/j", sim.vma_url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap_err().is_timeout());
    control.clear_faults().await.unwrap();
    assert_eq!(get(&http, &sim, "j").await.unwrap().0, 200);
}

#[tokio::test]
async fn latency_with_jitter_and_error_rate() {
    let (sim, control, http) = sim(1).await;
    control.put_job_json("j", &json!({"mode": "running"})).await.unwrap();
    control.set_faults_json(&json!({"latency": {"base": "100ms", "jitter": "50ms"}})).await.unwrap();
    let t = Instant::now();
    get(&http, &sim, "j").await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(100) && took < Duration::from_millis(400), "{took:?}");
    control.set_faults_json(&json!({"error_rate": {"status": 502, "probability": 1.0}})).await.unwrap();
    assert_eq!(get(&http, &sim, "j").await.unwrap().0, 502);
    control.set_faults_json(&json!({"error_rate": {"status": 502, "probability": 0.0}, "for": "1s"})).await.unwrap();
    assert_eq!(get(&http, &sim, "j").await.unwrap().0, 200);
}

#[tokio::test]
async fn restart_forgets_jobs_and_can_stay_down() {
    let (sim, control, http) = sim(1).await;
    control.put_job_json("j", &json!({"mode": "running"})).await.unwrap();
    control.restart(None).await.unwrap();
    assert_eq!(get(&http, &sim, "j").await.unwrap().0, 404);
    control.put_job_json("j", &json!({"mode": "running"})).await.unwrap();
    control.restart(Some("400ms")).await.unwrap();
    let down_at = Instant::now();
    assert!(tokio::net::TcpStream::connect(sim.vma_addr()).await.is_err());
    while tokio::net::TcpStream::connect(sim.vma_addr()).await.is_err() {
        assert!(down_at.elapsed() < Duration::from_secs(3), "the VMA never came back after down_for");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(down_at.elapsed() >= Duration::from_millis(300), "back too early: {:?}", down_at.elapsed());
    assert_eq!(get(&http, &sim, "j").await.unwrap().0, 404);
}

#[tokio::test]
async fn stats_detect_two_concurrent_pollers() {
    let (sim, control, http) = sim(1).await;
    control.put_job_json("j", &json!({"mode": "slow", "delay": "200ms"})).await.unwrap();
    let a = get(&http, &sim, "j");
    let b = get(&http, &sim, "j");
    let (ra, rb) = tokio::join!(a, b);
    ra.unwrap();
    rb.unwrap();
    let stats = control.stats("j").await.unwrap();
    assert_eq!(stats.polls, 2);
    assert_eq!(stats.max_in_flight, 2);
    assert!(stats.min_gap_ms.unwrap() < 100.0);
    // A single sequential poller never overlaps.
    control.put_job_json("k", &json!({"mode": "running"})).await.unwrap();
    for _ in 0..3 {
        get(&http, &sim, "k").await.unwrap();
    }
    assert_eq!(control.stats("k").await.unwrap().max_in_flight, 1);
    let journal = control.journal(Some("j"), 10).await.unwrap();
    assert_eq!(journal["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_control_input_is_a_400_naming_the_field() {
    let (sim, control, _http) = sim(1).await;
    let http = reqwest::Client::new();
    let cases = [
        (json!({"mode": "explode"}), "mode"),
        (json!({"mode": "running", "start_percent": -1}), "start_percent"),
        (json!({"mode": "running", "rate_per_second": -3}), "rate_per_second"),
        (json!({"mode": "running", "bogus": 1}), "bogus"),
    ];
    for (spec, field) in cases {
        let resp = http.put(format!("{}/sim/v1/jobs/x", sim.control_url())).json(&spec).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{spec}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(field), "{body}");
    }
    let resp = http
        .put(format!("{}/sim/v1/faults", sim.control_url()))
        .json(&json!({"unreachable": {"mode": "sideways"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http.post(format!("{}/sim/v1/scenario", sim.control_url())).body("name = \n").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("line 1"));
    // Refusals axum makes itself have the same JSON shape.
    let resp = http.post(format!("{}/sim/v1/jobs", sim.control_url())).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "POST is not allowed on /sim/v1/jobs", "{body}");
    let resp = http.get(format!("{}/sim/v1/journal?limit=many", sim.control_url())).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    // Still alive.
    assert_eq!(control.health().await.unwrap()["status"], "ok");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults_over_http() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let (sim, control, http) = sim(seed).await;
        control.put_job_json("j", &json!({"mode": "running"})).await.unwrap();
        control.set_faults_json(&json!({"error_rate": {"status": 503, "probability": 0.5}})).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..60 {
            out.push(get(&http, &sim, "j").await.unwrap().0);
        }
        out
    }
    let a = statuses(7).await;
    assert_eq!(a, statuses(7).await);
    assert_ne!(a, statuses(8).await);
    assert!(a.contains(&503) && a.contains(&200));
}

#[test]
fn the_journal_stays_bounded_after_a_million_requests() {
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
    fn entry(at: chrono::DateTime<chrono::Utc>, i: u64) -> sim_vma::journal::Entry {
        sim_vma::journal::Entry {
            seq: 0,
            at,
            method: "GET".into(),
            path: "/api/v1/progress/job-1".into(),
            job: Some("job-1".into()),
            outcome: "progress".into(),
            status: 200,
            latency_ms: i as f64,
        }
    }
    let mut journal = sim_vma::journal::Journal::new(10_000);
    let now = chrono::Utc::now();
    for i in 0..100_000u64 {
        journal.poll_started("job-1", now);
        journal.poll_finished("job-1", "progress");
        journal.record(entry(now, i));
    }
    let before = rss_kib();
    for i in 0..1_000_000u64 {
        journal.poll_started("job-1", now);
        journal.poll_finished("job-1", "progress");
        journal.record(entry(now, i));
    }
    let after = rss_kib();
    assert_eq!(journal.len(), 10_000);
    assert_eq!(journal.total_recorded(), 1_100_000);
    println!("journal RSS after warm-up {before} KiB, after 1,000,000 more requests {after} KiB");
    assert!(after.saturating_sub(before) < 10 * 1024, "RSS grew by {} KiB", after - before);
}

#[test]
fn the_binary_rejects_a_bad_scenario_with_exit_2() {
    let dir = tempfile_dir();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "name = \"x\"\n[[jobs]]\nid = \"j\"\nmode = \"running\"\nstart_percent = 140\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim-vma"))
        .args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--scenario"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("start_percent"), "{err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sim-vma-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
