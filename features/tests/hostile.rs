//! Hostile input against the real `oma-api` process and a real MariaDB (issue 21): over-long
//! fields, VM names that map to one context id, protocol abuse (a URI or head too large, a body
//! announced too large, a request line that does not parse, malformed JSON) all get a 4xx in the
//! JSON error shape, never a 5xx or a hang, and the OMA stays healthy; extreme settings exit 2
//! naming the variable and its range; a panicking task ends the process with a non-zero code.

use std::time::Duration;

use oma_acceptance::{Lab, SeedJob};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn valid_body(vm: &str) -> Value {
    json!({"source_vm": {"id": format!("vmware-{vm}"), "name": vm, "path": format!("/DC1/vm/{vm}"),
           "datacenter": "DC1",
           "disks": [{"id": "disk-2000", "size_gb": 10, "capacity_bytes": 10737418240u64,
                      "vmdk_path": "[ds1] vm/vm.vmdk", "label": "Hard disk 1", "datastore": "ds1",
                      "provisioning_type": "thin"}]},
           "ossea_config_id": 1, "vcenter_host": "vcenter.local", "datacenter": "DC1",
           "target_network": "net-1", "start_replication": false})
}

/// Send `request` as raw bytes and read the answer until the server closes or 10 s pass:
/// (status, body).
async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the OMA");
    // The server may answer and close before it has read everything: ignore a failed write.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if let Some(done) = complete(&answer) {
                return done;
            }
        }
        complete(&answer).unwrap_or_default()
    })
    .await;
    let (status, body) =
        read.unwrap_or_else(|_| panic!("no whole answer within 10 s: {:?}", String::from_utf8_lossy(&answer)));
    (status, body)
}

/// The status and body of a whole HTTP/1.1 answer in `bytes`, when it is whole.
fn complete(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    (body.len() >= length).then(|| (status, body[..length].to_string()))
}

fn assert_json_error(what: &str, status: u16, body: &str, expected: u16) {
    assert_eq!(status, expected, "{what}: {body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
    assert!(v["error"].is_string() && v["details"].is_string() && v["timestamp"].is_string(), "{what}: {v}");
}

async fn assert_healthy(lab: &Lab) {
    let resp = lab.http.get(format!("{}/health", lab.oma().url())).send().await.expect("/health");
    assert_eq!(resp.status(), 200, "the OMA is healthy afterwards");
}

#[tokio::test]
async fn over_long_fields_and_colliding_vm_names_never_reach_a_500() {
    let mut lab = Lab::new("hostile-fields").await.unwrap();
    lab.start_oma().await.unwrap();
    let url = format!("{}/api/v1/replications", lab.oma().url());
    for (pointer, field, limit) in [
        ("/source_vm/id", "source_vm.id", 255),
        ("/source_vm/name", "source_vm.name", 240),
        ("/source_vm/path", "source_vm.path", 500),
        ("/source_vm/datacenter", "source_vm.datacenter", 255),
        ("/vcenter_host", "vcenter_host", 255),
        ("/datacenter", "datacenter", 255),
        ("/target_network", "target_network", 255),
        ("/source_vm/disks/0/id", "source_vm.disks[0].id", 191),
        ("/source_vm/disks/0/vmdk_path", "source_vm.disks[0].vmdk_path", 500),
        ("/source_vm/disks/0/label", "source_vm.disks[0].label", 255),
        ("/source_vm/disks/0/datastore", "source_vm.disks[0].datastore", 255),
        ("/source_vm/disks/0/provisioning_type", "source_vm.disks[0].provisioning_type", 50),
    ] {
        // One character over, counted in characters: a multi-byte one must not slip through.
        let mut body = valid_body("LONG-FIELDS");
        *body.pointer_mut(pointer).expect(pointer) = json!(format!("{}é", "x".repeat(limit)));
        let resp = lab.http.post(&url).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_json_error(field, status, &text, 400);
        assert!(text.contains(field) && text.contains(&format!("at most {limit}")), "{field}: {text}");
    }
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM replication_jobs").fetch_one(lab.pool()).await.unwrap();
    assert_eq!(jobs, 0, "no refused request left a row behind");

    // Names that map to the same context id, created within one second: 201 or 409, never 500.
    for pair in [["app_1", "app.1"], ["日本語-VM", "中文-VM"]] {
        let mut ids = Vec::new();
        for vm in pair {
            let resp = lab.http.post(&url).json(&valid_body(vm)).send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            assert!(status == 201 || status == 409, "{vm}: {status} {v}");
            if status == 201 {
                ids.push(v["vm_context_id"].as_str().or(v["context_id"].as_str()).map(str::to_string));
            }
        }
        if let [Some(a), Some(b)] = ids.as_slice() {
            assert_ne!(a, b, "{pair:?} got one context");
        }
    }
    assert_healthy(&lab).await;
    lab.teardown().await;
}

#[tokio::test]
async fn protocol_abuse_gets_json_errors_and_the_oma_stays_healthy() {
    let mut lab = Lab::new("hostile-protocol").await.unwrap();
    lab.start_oma().await.unwrap();
    let addr = lab.oma().url().trim_start_matches("http://").to_string();
    let long_uri = format!("GET /api/v1/replications/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let (status, body) = raw(&addr, long_uri.as_bytes()).await;
    assert_json_error("a 70,000-byte URI", status, &body, 414);
    let big_head = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(600_000));
    let (status, body) = raw(&addr, big_head.as_bytes()).await;
    assert_json_error("a 600 KB header", status, &body, 431);
    let (status, body) = raw(&addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert_json_error("a request line that does not parse", status, &body, 400);
    let announced = b"POST /api/v1/replications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n";
    let started = std::time::Instant::now();
    let (status, body) = raw(&addr, announced).await;
    assert_json_error("a body announced at 10 MB", status, &body, 413);
    assert!(started.elapsed() < Duration::from_secs(5), "refused before reading: {:?}", started.elapsed());
    for (what, request) in [
        ("malformed JSON", "{\"source_vm\": {"),
        ("a JSON array", "[1,2,3]"),
        ("wrong types", "{\"source_vm\": {\"id\": 5, \"name\": [], \"path\": {}}, \"ossea_config_id\": \"one\"}"),
        (
            "a huge number",
            "{\"source_vm\": {\"id\": \"a\", \"name\": \"b\", \"path\": \"c\"}, \"ossea_config_id\": 1e400}",
        ),
        ("deep nesting", &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
    ] {
        let resp = lab
            .http
            .post(format!("{}/api/v1/replications", lab.oma().url()))
            .header("content-type", "application/json")
            .body(request.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!((400..500).contains(&status), "{what}: {status} {text}");
        assert_json_error(what, status, &text, status);
    }
    // Hostile ids on every route with a path parameter. The progress proxy asks the VMA, which
    // knows none of them: 404 or 502, never a 500.
    let ids = ["..%2F..%2Fetc%2Fpasswd", "%00", "'%20OR%201=1--", "%F0%9F%92%A3", &"z".repeat(5000)];
    for id in ids {
        for (method, path) in [
            ("GET", format!("/api/v1/replications/{id}")),
            ("GET", format!("/api/v1/progress/{id}")),
            ("GET", format!("/api/v1/vm-contexts/{id}")),
            ("GET", format!("/api/v1/vm-contexts/{id}/recent-jobs")),
            ("GET", format!("/api/v1/vma-polling/jobs/{id}")),
            ("DELETE", format!("/api/v1/vma-polling/jobs/{id}")),
        ] {
            let url = format!("{}{path}", lab.oma().url());
            let resp = lab.http.request(method.parse().unwrap(), url).send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert!((400..500).contains(&status) || status == 502, "{method} {path:.60}: {status} {text:.200}");
            if status != 502 {
                assert_json_error(&format!("{method} {path:.60}"), status, &text, status);
            }
        }
    }
    assert_healthy(&lab).await;
    lab.teardown().await;
}

#[tokio::test]
async fn extreme_settings_exit_2_naming_the_variable_and_its_range() {
    let lab = Lab::new("hostile-settings").await.unwrap();
    let bin = oma_acceptance::oma_process::oma_api_binary().await.unwrap();
    for (variable, value) in [
        ("OMA_POLL_INTERVAL", "300000000000y"),
        ("OMA_HEALTH_INTERVAL", "300000000000y"),
        ("OMA_POLL_CONCURRENCY", "4611686018427387904"),
        ("OMA_DB_MAX_CONNECTIONS", "4294967295"),
        ("OMA_RECOVERY_CONCURRENCY", "-3"),
        ("OMA_HTTP_MAX_CONNECTIONS", "0"),
        ("OMA_HTTP_HEADER_TIMEOUT", "100y"),
    ] {
        let out = tokio::process::Command::new(&bin)
            .env("OMA_DATABASE_URL", &lab.db().url)
            .env("VMA_API_URL", "http://127.0.0.1:9")
            .env("OMA_LISTEN", "127.0.0.1:0")
            .env(variable, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{variable}={value}: {stderr}");
        assert!(stderr.contains(variable) && stderr.contains("between"), "{variable}={value}: {stderr}");
    }
    // job-recovery's flags: a bare number of minutes used to overflow (a panic, exit 101).
    let job_recovery = bin.with_file_name("job-recovery");
    let values: &[&str] = if job_recovery.exists() {
        &["999999999999999999", "300000000000y", "-5", "soon"]
    } else {
        eprintln!("skipped: no job-recovery beside {}", bin.display());
        &[]
    };
    for value in values {
        let out = tokio::process::Command::new(&job_recovery)
            .env("OMA_DATABASE_URL", &lab.db().url)
            .args([format!("--max-age={value}"), "scan".to_string()])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--max-age={value}: {stderr}");
        assert!(stderr.contains("--max-age"), "--max-age={value}: {stderr}");
    }
    lab.teardown().await;
}

#[tokio::test]
async fn a_panicking_task_ends_the_process_with_a_non_zero_code() {
    if std::env::var_os("OMA_UNDER_TEST").is_some() {
        eprintln!("skipped: failpoints exist only in the workspace's debug oma-api");
        return;
    }
    for (failpoint, place) in [("poll-panic", "poller/mod.rs"), ("health-monitor-panic", "health_monitor.rs")] {
        let mut lab = Lab::new(&format!("hostile-{failpoint}")).await.unwrap();
        let names = lab.seed_job(&SeedJob::replicating("job-panic", 30.0, 0.2)).await.unwrap();
        lab.vma_job("job-panic", &names, json!({"mode": "running", "start_percent": 30, "rate_per_poll": 0.05}))
            .await
            .unwrap();
        let mut config = lab.oma_config();
        config.extra_env.push(("OMA_FAILPOINT".into(), failpoint.into()));
        lab.launch_oma_with(config).await.unwrap();
        let exit =
            lab.oma_mut().wait_for_exit(Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{failpoint}: {e:#}"));
        let tail = lab.oma().log.tail(20);
        assert!(exit.is_some_and(|c| c != 0), "{failpoint}: exit {exit:?}\n{tail}");
        // The log is read by a task of the harness: wait for the lines rather than race it.
        let log = Duration::from_secs(5);
        let line =
            lab.oma().wait_for_log("panic in thread", log).await.unwrap_or_else(|e| panic!("{failpoint}: {e:#}"));
        assert!(line.contains(place) && line.contains(&format!("failpoint {failpoint}")), "{failpoint}: {line}");
        // The supervisor stops everything (naming the task when its join reports the panic
        // before the panic hook's wake-up does; the panic line above names the place either way).
        lab.oma().wait_for_log("stopping everything", log).await.unwrap_or_else(|e| panic!("{failpoint}: {e:#}"));
        lab.teardown().await;
    }
}

/// Descriptors the process `pid` holds.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// 2,000 slow clients (idle, a head never finished, a body announced and never sent) are all cut
/// off within the configured bounds; the OMA's descriptors return to where they were and its
/// memory stays near it; a well-behaved client is served throughout.
#[tokio::test]
async fn slow_clients_are_cut_off_and_their_resources_come_back() {
    const CLIENTS: usize = 2_000;
    // The header and body timeouts of this OMA. All the clients must be open at once, so opening
    // them must take less than this: 5 s was not enough in a fresh-clone CI run with the other
    // tests of this binary beside it (the first connections were cut off before the last opened).
    const BOUND: Duration = Duration::from_secs(20);
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let needed = (CLIENTS as u64) * 2 + 500;
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, needed.min(hard), hard).unwrap();
    }
    assert!(needed <= hard, "this test needs {needed} descriptors; the hard limit is {hard}");

    let mut lab = Lab::new("hostile-slow-clients").await.unwrap();
    let mut config = lab.oma_config();
    let bound = format!("{}s", BOUND.as_secs());
    for (k, v) in [
        ("OMA_HTTP_HEADER_TIMEOUT", bound.as_str()),
        ("OMA_HTTP_BODY_TIMEOUT", &bound),
        ("OMA_HTTP_MAX_CONNECTIONS", "4096"),
    ] {
        config.extra_env.push((k.into(), v.into()));
    }
    lab.start_oma_with(config).await.unwrap();
    let pid = lab.oma().pid().unwrap();
    let addr = lab.oma().url().trim_start_matches("http://").to_string();
    assert_healthy(&lab).await;
    let (fds_before, rss_before) = (fds_of(pid), oma_acceptance::procfs::rss_kib_of(pid));

    // The peak of the OMA's descriptors, sampled until the connections are all closed.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(fds_before));
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        async move {
            while !sampling.is_cancelled() {
                peak.fetch_max(fds_of(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let opened = std::time::Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut s = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connection {i}: {e}"));
        match i % 3 {
            0 => {}
            1 => s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap(),
            _ => s
                .write_all(b"POST /api/v1/replications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"source")
                .await
                .unwrap(),
        }
        clients.push(s);
        // In batches the OMA has accepted (beyond its listen backlog the kernel would reset them).
        if (i + 1) % 250 == 0 {
            let want = fds_before + (i + 1) * 95 / 100;
            lab.wait_until("the OMA to accept the connections", Duration::from_secs(5), || async {
                let now = fds_of(pid);
                Ok(if now >= want { Ok(()) } else { Err(format!("{now} descriptors, want {want}")) })
            })
            .await
            .unwrap();
        }
    }
    let all_open = opened.elapsed();
    assert!(all_open < BOUND, "opening {CLIENTS} connections took {all_open:?}: they were not all open at once");
    // A well-behaved client is served while they hang on.
    assert_healthy(&lab).await;

    // Every one of them is closed by the server: a read ends (EOF, an error answer, or a reset).
    let deadline = BOUND + Duration::from_secs(3);
    let closed = futures::future::join_all(clients.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        let ended = tokio::time::timeout(deadline, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => return "eof".to_string(),
                    Err(e) => return format!("error {e}"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let first = String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_string();
        ended.map(|how| format!("{how} after {:?} {first}", opened.elapsed()))
    }))
    .await;
    let closed: Vec<bool> = closed.iter().map(|c| c.is_ok()).collect();
    let cut_off = opened.elapsed();
    sampling.cancel();
    sampler.await.unwrap();
    let peak_fds = peak.load(std::sync::atomic::Ordering::Relaxed);
    let still_open = closed.iter().filter(|c| !**c).count();
    assert_eq!(still_open, 0, "{still_open} of {CLIENTS} slow connections still open after {deadline:?}");

    let fds_after = lab
        .wait_until("the OMA's descriptors back to their baseline", Duration::from_secs(10), || async {
            let now = fds_of(pid);
            Ok(if now <= fds_before + 5 { Ok(now) } else { Err(format!("{now} open, {fds_before} before")) })
        })
        .await
        .unwrap();
    let rss_after = oma_acceptance::procfs::rss_kib_of(pid);
    eprintln!(
        "[slow clients] {CLIENTS} opened in {all_open:?}, all cut off after {cut_off:?}; descriptors {fds_before} -> \
         {peak_fds} -> {fds_after}; RSS {} -> {} KiB",
        rss_before, rss_after
    );
    assert!(
        peak_fds >= fds_before + CLIENTS * 9 / 10,
        "the connections really were open at once ({peak_fds} descriptors at most)"
    );
    assert!(
        rss_after < rss_before + 10 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB after the connections closed"
    );
    assert_healthy(&lab).await;
    lab.teardown().await;
}

/// With the VMA resetting half of all connections, 40 jobs flap between failing and working every
/// few polls; the log keeps at most ten streak lines per window of ten intervals (1 s here) and
/// counts the rest into one summary line per window.
#[tokio::test]
async fn a_flapping_vma_keeps_the_log_readable() {
    const JOBS: usize = 40;
    let mut lab = Lab::new("hostile-flapping").await.unwrap();
    for n in 0..JOBS {
        let id = format!("job-flap-{n:02}");
        let names = lab.seed_job(&SeedJob::replicating(&id, 30.0, 0.2)).await.unwrap();
        lab.vma_job(&id, &names, json!({"mode": "running", "start_percent": 30, "rate_per_poll": 0.01})).await.unwrap();
    }
    lab.start_oma().await.unwrap();
    let faults = json!({"unreachable": {"mode": "reset", "probability": 0.5}});
    lab.control.set_faults_json(&faults).await.unwrap();
    // Flapping is what is measured: let it go on for a few windows, until summaries were written.
    let summary = "VMA polling is flapping:";
    lab.wait_until("three flapping summaries", Duration::from_secs(20), || async {
        let n = lab.oma().log.count(summary);
        Ok(if n >= 3 { Ok(()) } else { Err(format!("{n} summaries")) })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.oma().log.tail(30)));
    lab.control.clear_faults().await.unwrap();

    let streak_lines: Vec<String> = lab
        .oma()
        .log
        .lines()
        .into_iter()
        .filter(|l| l.contains("VMA polling error for job") || l.contains("VMA polling works again for job"))
        .collect();
    // Per wall-clock second (which may straddle two of the OMA's 1 s windows): at most 2 × 10.
    let mut per_second = std::collections::BTreeMap::<String, usize>::new();
    for l in &streak_lines {
        *per_second.entry(l.chars().take(19).collect()).or_default() += 1;
    }
    let worst = per_second.values().max().copied().unwrap_or(0);
    assert!(worst <= 20, "{worst} streak lines in one second: {per_second:?}");
    assert!(streak_lines.len() >= 10, "the VMA really flapped: {} streak lines", streak_lines.len());
    let held: usize = lab
        .oma()
        .log
        .lines()
        .iter()
        .filter(|l| l.contains(summary))
        .filter_map(|l| l.split("flapping: ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(held > 0, "the summaries count lines held back");
    eprintln!(
        "[flapping] {} streak lines written over {} seconds (at most {worst} in one); {held}+ held back into summaries",
        streak_lines.len(),
        per_second.len()
    );
    assert_healthy(&lab).await;
    lab.teardown().await;
}
