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

/// Reference §10, defect 13: a three-disk job answers `completed` at 100 % after each disk (its
/// `total_bytes` that disk's size), then the next disk starts at 0; over real HTTP, by export
/// name as the OMA asks, with and without `disk_progresses`.
#[tokio::test]
async fn a_multi_disk_job_completes_once_per_disk() {
    let (sim, control, http) = sim(1).await;
    for (id, with_list) in [("md-plain", false), ("md-list", true)] {
        let spec = json!({"mode": "multi_disk", "disks": [100, 200, 300], "rate_per_poll": 100, "pause_polls": 1,
                          "disk_progresses": with_list, "export_names": [format!("migration-vol-{id}")]});
        control.put_job_json(id, &spec).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (status, _, body) = get(&http, &sim, &format!("migration-vol-{id}")).await.unwrap();
            assert_eq!(status, 200);
            let v: Value = serde_json::from_str(&body).unwrap();
            seen.push((v["status"].as_str().unwrap().to_string(), v["total_bytes"].as_i64().unwrap()));
            assert_eq!(v.get("disk_progresses").is_some(), with_list, "{body}");
        }
        let seen: Vec<(&str, i64)> = seen.iter().map(|(s, t)| (s.as_str(), *t)).collect();
        assert_eq!(
            seen,
            [
                ("completed", 100),
                ("completed", 100),
                ("in_progress", 200),
                ("completed", 200),
                ("completed", 200),
                ("in_progress", 300)
            ],
            "{id}"
        );
    }
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

/// Hostile input to the control API: bodies that are not JSON, of the wrong types, huge; jobs that
/// do not exist; idle and half-sent connections. Each gets a 4xx with a JSON error (never a 5xx
/// or a hang) and the simulator keeps serving.
#[tokio::test]
async fn hostile_control_input_gets_a_4xx_and_the_simulator_keeps_serving() {
    use tokio::io::AsyncWriteExt;
    let (sim, control, _http) = sim(1).await;
    let http = reqwest::Client::new();
    let base = sim.control_url();
    let bodies: [(&str, &str, String); 6] = [
        ("PUT", "/sim/v1/jobs/x", "{\"mode\": ".into()),
        ("PUT", "/sim/v1/jobs/x", "[1, 2]".into()),
        ("PUT", "/sim/v1/jobs/x", "{\"mode\": 5, \"start_percent\": \"half\"}".into()),
        ("PUT", "/sim/v1/faults", "{\"unreachable\": {\"mode\": \"reset\", \"probability\": \"often\"}}".into()),
        ("PUT", "/sim/v1/jobs/x", format!("{{\"mode\": \"running\", \"pad\": \"{}\"}}", "a".repeat(10 * 1024 * 1024))),
        ("POST", "/sim/v1/scenario", "\u{0}\u{1}not toml [[[".into()),
    ];
    for (method, path, body) in bodies {
        let resp = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!((400..500).contains(&status), "{method} {path} ({} bytes): {status} {text:.200}", body.len());
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:.200}"));
        assert!(v["error"].is_string(), "{v}");
    }
    for (method, path) in [("GET", "/sim/v1/jobs/no-such-job"), ("DELETE", "/sim/v1/jobs/no-such-job")] {
        let resp = http.request(method.parse().unwrap(), format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
    }
    // Idle and half-sent connections do not hold anyone else up.
    let addr = base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"PUT /sim/v1/jobs/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{").await.unwrap();
        }
        slow.push(s);
    }
    let started = std::time::Instant::now();
    assert_eq!(control.health().await.unwrap()["status"], "ok");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "health took {:?}", started.elapsed());
    drop(slow);
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
            outcome: "progress",
            status: 200,
            latency_ms: i as f64,
            client: None,
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

/// A raw HTTP/1.1 connection: what goes out is exactly what is written, and each answer is read
/// whole (head and `content-length` body).
struct RawConn {
    sock: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// One answer as it came: the status line, the headers in order, the body.
#[derive(Debug)]
struct RawAnswer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl RawConn {
    async fn to(sim: &SimVma) -> RawConn {
        let sock = tokio::net::TcpStream::connect(sim.vma_addr()).await.unwrap();
        // Each write leaves at once: a test that splits a head sends it in pieces for real.
        sock.set_nodelay(true).unwrap();
        RawConn { sock, buf: vec![] }
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::io::AsyncWriteExt::write_all(&mut self.sock, bytes).await.unwrap();
    }

    async fn get(&mut self, path: &str) -> RawAnswer {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: sim\r\nAccept: application/json\r\n\r\n").as_bytes()).await;
        self.answer().await
    }

    async fn answer(&mut self) -> RawAnswer {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buf).expect("a response head") {
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8(h.value.to_vec()).unwrap()))
                    .collect();
                let status_line =
                    String::from_utf8_lossy(&self.buf[..self.buf.windows(2).position(|w| w == b"\r\n").unwrap()])
                        .into_owned();
                let length: usize =
                    headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
                if self.buf.len() >= head + length {
                    let body = self.buf[head..head + length].to_vec();
                    self.buf.drain(..head + length);
                    return RawAnswer { status_line, headers, body };
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, tokio::io::AsyncReadExt::read(&mut self.sock, &mut chunk))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "connection closed with {} bytes of an answer", self.buf.len());
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Body text with every run of digits as `0`: timestamps, elapsed times and a ramp's progress
/// differ between two polls, the rest of the text must not.
fn digits_masked(body: &[u8]) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in String::from_utf8_lossy(body).chars() {
        match (c.is_ascii_digit(), in_digits) {
            (false, _) => out.push(c),
            (true, false) => out.push('0'),
            (true, true) => {}
        }
        in_digits = c.is_ascii_digit();
    }
    out
}

async fn hot_answers(control: &ControlClient) -> u64 {
    control.health().await.unwrap()["hot_path_answers"].as_u64().unwrap()
}

#[tokio::test]
async fn the_hot_path_answers_every_kind_of_poll_byte_for_byte_as_hyper_does() {
    let (sim, control, _) = sim(5).await;
    let jobs = [
        ("run", json!({"mode": "running", "start_percent": 42})),
        ("done", json!({"mode": "completed"})),
        ("failed", json!({"mode": "failed", "message": "disk \"read\" error\n\u{00e9}"})),
        ("stale", json!({"mode": "stale"})),
        ("slow", json!({"mode": "slow", "delay": "20ms"})),
        ("gone", json!({"mode": "not_found"})),
        ("h200", json!({"mode": "http200_not_found"})),
        ("e503", json!({"mode": "error", "status": 503})),
        ("e599", json!({"mode": "error", "status": 599})),
        ("not-json", json!({"mode": "malformed", "kind": "not_json"})),
        ("truncated", json!({"mode": "malformed", "kind": "truncated"})),
        ("wrong-types", json!({"mode": "malformed", "kind": "wrong_types"})),
        ("oversized", json!({"mode": "malformed", "kind": "oversized"})),
        ("a b", json!({"mode": "completed"})),
        ("named", json!({"mode": "running", "export_names": ["disk-a"]})),
    ];
    for (id, spec) in &jobs {
        control.put_job_json(id, spec).await.unwrap();
    }
    let paths = jobs.iter().map(|(id, _)| format!("/api/v1/progress/{}", id.replace(' ', "%20"))).chain(
        ["/api/v1/progress/nobody", "/api/v1/progress/disk-a", "/api/v1/progress/run?verbose=1"].map(String::from),
    );

    let mut hot = RawConn::to(&sim).await;
    let mut hyper = RawConn::to(&sim).await;
    // A request the hot path leaves to hyper: hyper serves this connection from then on.
    assert!(hyper.get("/api/v1/health").await.status_line.ends_with("200 OK"));
    for (n, path) in paths.enumerate() {
        let before = hot_answers(&control).await;
        let fast = hot.get(&path).await;
        assert_eq!(hot_answers(&control).await, before + 1, "{path}: answered on the hot path");
        let slow = hyper.get(&path).await;
        assert_eq!(hot_answers(&control).await, before + 1, "{path}: answered by hyper");

        assert_eq!(fast.status_line, slow.status_line, "{path}");
        let names = |a: &RawAnswer| a.headers.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&fast), names(&slow), "{path}: header names and order");
        for (name, value) in &slow.headers {
            match name.as_str() {
                "date" => assert!(httpdate::parse_http_date(fast.header("date").unwrap()).is_ok(), "{path}"),
                "content-length" => assert_eq!(fast.header(name).unwrap(), fast.body.len().to_string(), "{path}"),
                _ => assert_eq!(fast.header(name), Some(value.as_str()), "{path}: {name}"),
            }
        }
        assert_eq!(digits_masked(&fast.body), digits_masked(&slow.body), "{path}: body");

        // Both answers are journalled alike.
        let journal = control.journal(None, 2).await.unwrap();
        let entries = journal["entries"].as_array().expect("entries");
        let key = |e: &Value| {
            (e["method"].clone(), e["path"].clone(), e["job"].clone(), e["outcome"].clone(), e["status"].clone())
        };
        assert_eq!(key(&entries[0]), key(&entries[1]), "{path} (request {n}): {journal}");
    }
    let not_hot = SimVma::start(SimConfig { hot_path: false, ..SimConfig::default() }).await.unwrap();
    control_of(&not_hot).put_job_json("run", &json!({"mode": "completed"})).await.unwrap();
    assert!(RawConn::to(&not_hot).await.get("/api/v1/progress/run").await.status_line.ends_with("200 OK"));
    assert_eq!(hot_answers(&control_of(&not_hot)).await, 0, "hot_path: false leaves every poll to hyper");
}

fn control_of(sim: &SimVma) -> ControlClient {
    ControlClient::new(&sim.control_url())
}

#[tokio::test]
async fn a_hot_connection_hands_faults_bodies_and_odd_requests_to_hyper() {
    let (sim, control, _) = sim(6).await;
    control.put_job_json("job", &json!({"mode": "completed"})).await.unwrap();
    let hot_now = || async { hot_answers(&control).await };

    // A fault set while the connection is hot: hyper answers with the fault, and keeps the
    // connection once the fault is gone.
    let mut conn = RawConn::to(&sim).await;
    assert!(conn.get("/api/v1/progress/job").await.status_line.ends_with("200 OK"));
    assert_eq!(hot_now().await, 1);
    control.set_faults_json(&json!({"error_rate": {"status": 500, "probability": 1.0}})).await.unwrap();
    let faulted = conn.get("/api/v1/progress/job").await;
    assert!(faulted.status_line.starts_with("HTTP/1.1 500"), "{faulted:?}");
    assert_eq!(faulted.body, b"internal server error\n");
    control.clear_faults().await.unwrap();
    assert!(conn.get("/api/v1/progress/job").await.status_line.ends_with("200 OK"));
    assert_eq!(hot_now().await, 1, "the connection stays with hyper");
    let journal = control.journal(Some("job"), 10).await.unwrap();
    assert_eq!(journal["entries"].as_array().unwrap().len(), 2, "the faulted poll reached no job: {journal}");

    // Pipelined: a hot poll, then a request for hyper, in one write; answered in order.
    let mut conn = RawConn::to(&sim).await;
    conn.send(b"GET /api/v1/progress/job HTTP/1.1\r\nHost: s\r\n\r\nGET /api/v1/health HTTP/1.1\r\nHost: s\r\n\r\n")
        .await;
    assert!(String::from_utf8_lossy(&conn.answer().await.body).contains("\"job_id\":\"job\""));
    assert!(String::from_utf8_lossy(&conn.answer().await.body).contains("\"status\":\"healthy\""));
    assert_eq!(hot_now().await, 2);

    // A head that arrives in pieces is still a hot poll. The pauses are not waits for a state:
    // they keep the pieces in separate reads on the server's side.
    let mut conn = RawConn::to(&sim).await;
    conn.send(b"GET /api/v1/progress/jo").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    conn.send(b"b HTTP/1.1\r\nHost: s\r\n").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    conn.send(b"\r\n").await;
    assert!(conn.answer().await.status_line.ends_with("200 OK"));
    assert_eq!(hot_now().await, 3);

    // A body: hyper reads it whole (the update is applied) and keeps the connection.
    let mut conn = RawConn::to(&sim).await;
    let update = br#"{"status":"in_progress","percent":12}"#;
    conn.send(format!("POST /api/v1/progress/fresh/update HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", update.len()).as_bytes()).await;
    conn.send(update).await;
    let updated = conn.answer().await;
    assert!(String::from_utf8_lossy(&updated.body).contains("auto_initialized"), "{updated:?}");
    assert!(conn.get("/api/v1/progress/fresh").await.status_line.ends_with("200 OK"));
    assert_eq!(hot_now().await, 3);

    // A head larger than the hot path's buffer, and one that does not parse.
    let mut conn = RawConn::to(&sim).await;
    let big = format!("GET /api/v1/progress/job HTTP/1.1\r\nHost: s\r\nX-Big: {}\r\n\r\n", "x".repeat(12 * 1024));
    conn.send(big.as_bytes()).await;
    assert!(conn.answer().await.status_line.ends_with("200 OK"));
    let mut conn = RawConn::to(&sim).await;
    conn.send(b"\x01\x02 not http\r\n\r\n").await;
    let refused = conn.answer().await;
    assert!(refused.status_line.starts_with("HTTP/1.1 400"), "{refused:?}");
    assert_eq!(hot_now().await, 3);
}

#[tokio::test]
async fn reqwest_polls_as_the_oma_does_take_the_hot_path() {
    let (sim, control, _) = sim(7).await;
    control.put_job_json("job", &json!({"mode": "running"})).await.unwrap();
    // Built like the OMA's VMA client (oma/src/vma_client.rs): pooled keep-alive connections.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    for _ in 0..5 {
        let (status, content_type, body) = get(&http, &sim, "job").await.unwrap();
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        assert!(serde_json::from_str::<Value>(&body).unwrap()["job_id"] == "job");
    }
    assert_eq!(hot_answers(&control).await, 5);
}

#[tokio::test]
async fn garbage_answers_200_with_a_body_that_is_not_progress() {
    let (sim, control, http) = sim(1).await;
    control.put_job_json("j", &json!({"mode": "running"})).await.unwrap();
    control.set_faults_json(&json!({"garbage": {"probability": 1.0}})).await.unwrap();
    let (status, content_type, body) = get(&http, &sim, "j").await.unwrap();
    assert_eq!((status, content_type.as_str()), (200, "text/html"));
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    let err = control.set_faults_json(&json!({"garbage": {"probability": 2.0}})).await.unwrap_err().to_string();
    assert!(err.contains("garbage.probability"), "{err}");
    control.clear_faults().await.unwrap();
    assert_eq!(get(&http, &sim, "j").await.unwrap().0, 200);
}

/// Both paths journal who asked (the `User-Agent`), so polls of one job by two OMAs are told apart.
#[tokio::test]
async fn the_journal_records_who_polled_on_both_paths() {
    let (sim, control, _) = sim(1).await;
    control.put_job_json("j", &json!({"mode": "running"})).await.unwrap();
    let as_client = |agent: &'static str| {
        reqwest::Client::builder().user_agent(agent).timeout(Duration::from_millis(800)).build().unwrap()
    };
    let url = format!("{}/api/v1/progress/j", sim.vma_url());
    as_client("oma/0.1.0 (a:1)").get(&url).send().await.unwrap();
    as_client("oma/0.1.0 (a:1)").get(&url).send().await.unwrap();
    // A fault moves every request to hyper's path.
    control.set_faults_json(&json!({"latency": {"base": "1ms"}})).await.unwrap();
    as_client("oma/0.1.0 (b:2)").get(&url).send().await.unwrap();
    let clients: Vec<Option<String>> =
        sim.state.journal_entries(Some("j"), 10).into_iter().map(|e| e.client.map(|c| c.to_string())).collect();
    assert_eq!(
        clients,
        vec![Some("oma/0.1.0 (a:1)".into()), Some("oma/0.1.0 (a:1)".into()), Some("oma/0.1.0 (b:2)".into())]
    );
    assert!(hot_answers(&control).await >= 2, "the first two polls went the hot way");
}
