//! Steps about the OMA's HTTP API and the `job-recovery` CLI.

use cucumber::{then, when};
use serde_json::{json, Value};

use crate::OmaWorld;

#[then(regex = r"^the API responds to a health check$")]
async fn health_check(world: &mut OmaWorld) {
    let resp = world.lab().http.get(format!("{}/health", world.lab().oma().url())).send().await.expect("GET /health");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["service"], "OMA API");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["database"], "connected");
}

#[then(regex = r"^the health check reports the database unreachable$")]
async fn health_reports_database_down(world: &mut OmaWorld) {
    let url = format!("{}/health", world.lab().oma().url());
    world
        .lab()
        .wait_until("/health to report the database unreachable", std::time::Duration::from_secs(10), || async {
            let resp = world.lab().http.get(&url).send().await?;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await?;
            Ok(if status == 503 && body["database"] == "unreachable" {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[when(regex = r#"^I (GET|POST|PUT|DELETE) "([^"]*)"$"#)]
async fn http(world: &mut OmaWorld, method: String, path: String) {
    let url = format!("{}{}", world.lab().oma().url(), world.expand(&path));
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    send(world, world.lab().http.request(method, url)).await;
}

#[when(regex = r#"^I POST a JSON body of (\d+) bytes to "([^"]*)"$"#)]
async fn http_big_body(world: &mut OmaWorld, size: usize, path: String) {
    let url = format!("{}{}", world.lab().oma().url(), world.expand(&path));
    let body = format!("\"{}\"", "a".repeat(size.saturating_sub(2)));
    send(world, world.lab().http.post(url).header("content-type", "application/json").body(body)).await;
}

/// Send, and keep the status, the body (JSON, else text) and how long the answer took.
async fn send(world: &mut OmaWorld, req: reqwest::RequestBuilder) {
    let sent = std::time::Instant::now();
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    world.response_took = Some(sent.elapsed());
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    world.response = Some((status, body));
}

#[then(regex = r"^the answer came within (\d+) seconds$")]
async fn answered_within(world: &mut OmaWorld, secs: u64) {
    let took = world.response_took.expect("a request was made");
    let (status, body) = response(world);
    assert!(took.as_secs_f64() <= secs as f64, "the answer took {took:.1?} (over {secs} s): {status} {body}");
}

/// A caller that gives up: the request is sent, and the connection dropped after `ms` without an
/// answer. An answer within `ms` fails the step: the scenario would not test what it says.
pub async fn send_and_hang_up(req: reqwest::RequestBuilder, ms: u64) {
    match req.timeout(std::time::Duration::from_millis(ms)).send().await {
        Err(e) if e.is_timeout() => {}
        Ok(resp) => panic!("the OMA answered ({}) before the caller hung up after {ms} ms", resp.status()),
        Err(e) => panic!("request failed before the caller hung up: {e}"),
    }
}

#[when(regex = r#"^I (POST|DELETE) "([^"]*)" and hang up after (\d+) ms$"#)]
async fn http_hang_up(world: &mut OmaWorld, method: String, path: String, ms: u64) {
    let url = format!("{}{}", world.lab().oma().url(), world.expand(&path));
    let http = &world.lab().http;
    let req = if method == "POST" { http.post(url) } else { http.delete(url) };
    send_and_hang_up(req, ms).await;
}

fn response(world: &OmaWorld) -> &(u16, Value) {
    world.response.as_ref().expect("a request was made")
}

#[then(regex = r"^the response status is (\d+)$")]
async fn status_is(world: &mut OmaWorld, status: u16) {
    let (s, body) = response(world);
    assert_eq!(*s, status, "{body}");
}

/// `a/b/0/c` → JSON pointer `/a/b/0/c`.
fn pointer<'a>(body: &'a Value, path: &str) -> &'a Value {
    body.pointer(&format!("/{}", path.replace('.', "/"))).unwrap_or(&Value::Null)
}

#[then(regex = r#"^the response field "([^"]*)" is "([^"]*)"$"#)]
async fn field_text(world: &mut OmaWorld, path: String, expected: String) {
    let expected = world.expand(&expected);
    let (_, body) = response(world);
    let v = pointer(body, &path);
    assert_eq!(v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()), expected, "{path} in {body}");
}

#[then(regex = r#"^the response field "([^"]*)" contains "([^"]*)"$"#)]
async fn field_contains(world: &mut OmaWorld, path: String, expected: String) {
    let expected = world.expand(&expected);
    let (_, body) = response(world);
    let v = pointer(body, &path).as_str().unwrap_or_default();
    assert!(v.contains(&expected), "{path} does not contain {expected:?} in {body}");
}

#[then(regex = r#"^the response field "([^"]*)" is (\d+)$"#)]
async fn field_number(world: &mut OmaWorld, path: String, expected: f64) {
    let (_, body) = response(world);
    assert_eq!(pointer(body, &path).as_f64(), Some(expected), "{path} in {body}");
}

#[then(regex = r#"^the response field "([^"]*)" is at least (\d+)$"#)]
async fn field_at_least(world: &mut OmaWorld, path: String, least: f64) {
    let (_, body) = response(world);
    let v = pointer(body, &path).as_f64();
    assert!(v.is_some_and(|v| v >= least), "{path} is {v:?}, not at least {least}, in {body}");
}

/// Job sheet 4.2.2: the job's last polls, bounded. Waits until the OMA has polled it more
/// often than the history holds, then checks the bound, the order and each entry.
#[then(regex = r"^the job's polling history shows its last (\d+) polls, oldest first$")]
async fn polling_history(world: &mut OmaWorld, n: usize) {
    let url = format!("{}/api/v1/vma-polling/jobs/{}", world.lab().oma().url(), world.job());
    let deadline = std::time::Instant::now() + super::WAIT;
    let body = loop {
        let body: Value = world.lab().http.get(&url).send().await.expect("GET").json().await.expect("JSON");
        let polls = body["polled_by_this_instance"]["polls_total"].as_u64().unwrap_or(0);
        if polls as usize > n {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "the job was polled {polls} times only: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let history = body["polled_by_this_instance"]["history"].as_array().unwrap_or_else(|| panic!("no history: {body}"));
    assert_eq!(history.len(), n, "the history holds the last {n} polls: {body}");
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = history
        .iter()
        .map(|h| chrono::DateTime::parse_from_rfc3339(h["at"].as_str().expect("at")).expect("an RFC 3339 time"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first: {times:?}");
    for h in history {
        assert_eq!(h["result"], "running", "{h}");
        assert!(h["latency_ms"].as_u64().is_some() && h["progress_percent"].as_f64().is_some(), "{h}");
    }
}

#[then(regex = r#"^the response fields "([^"]*)" and "([^"]*)" are equal$"#)]
async fn fields_equal(world: &mut OmaWorld, a: String, b: String) {
    let (_, body) = response(world);
    assert_eq!(pointer(body, &a), pointer(body, &b), "{a} and {b} in {body}");
}

#[then(regex = r#"^the response field "([^"]*)" lists the job$"#)]
async fn field_lists_job(world: &mut OmaWorld, path: String) {
    let id = world.job();
    let (_, body) = response(world);
    let list = pointer(body, &path).as_array().cloned().unwrap_or_default();
    assert!(
        list.iter().any(|v| v == &Value::String(id.clone()) || v["job_id"] == id.as_str()),
        "{id} not in {path}: {body}"
    );
}

#[then(regex = r"^the response contains no technical error text$")]
async fn no_technical_text(world: &mut OmaWorld) {
    let (_, body) = response(world);
    let text = body.to_string().to_lowercase();
    for word in ["virt-v2v", "virtio", "/dev/"] {
        assert!(!text.contains(word), "{word} in {body}");
    }
}

#[when(regex = r#"^I run "job-recovery ([^"]*)"$"#)]
async fn run_cli(world: &mut OmaWorld, args: String) {
    let bin = oma_acceptance::oma_process::target_dir().join("job-recovery");
    let out = tokio::process::Command::new(bin)
        .args(world.expand(&args).split_whitespace())
        .env("OMA_DATABASE_URL", world.database_url())
        .env("VMA_API_URL", world.lab().sim().vma_url())
        .output()
        .await
        .expect("job-recovery runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    world.command = Some((out.status.code().unwrap_or(-1), text));
}

#[when(regex = r#"^I run "oma-api ([^"]*)"$"#)]
async fn run_oma_api(world: &mut OmaWorld, args: String) {
    let bin = oma_acceptance::oma_process::oma_api_binary().await.expect("oma-api");
    let run = tokio::process::Command::new(bin)
        .args(args.split_whitespace())
        .env("OMA_DATABASE_URL", world.database_url())
        .env("OMA_LISTEN", "127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    // A command that should exit at once but serves instead is killed (dropped) after 10 s.
    world.command = Some(match tokio::time::timeout(std::time::Duration::from_secs(10), run).await {
        Ok(out) => {
            let out = out.expect("oma-api runs");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.code().unwrap_or(-1), text)
        }
        Err(_) => (-1, "oma-api did not exit within 10 s (it was killed)".to_string()),
    });
}

#[then(regex = r"^the command exits with (\d+)$")]
async fn exits_with(world: &mut OmaWorld, code: i32) {
    let (c, out) = world.command.as_ref().expect("a command ran");
    assert_eq!(*c, code, "{out}");
}

#[then(regex = r#"^the command output contains "([^"]*)"$"#)]
async fn output_contains(world: &mut OmaWorld, text: String) {
    let needle = world.expand(&text);
    let (_, out) = world.command.as_ref().expect("a command ran");
    assert!(out.contains(&needle), "{needle:?} not in:\n{out}");
}

#[then(regex = r#"^the command's JSON field "([^"]*)" is (\d+)$"#)]
async fn command_json_field(world: &mut OmaWorld, path: String, expected: f64) {
    let (_, out) = world.command.as_ref().expect("a command ran");
    let body: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("output is not JSON ({e}): {out}"));
    assert_eq!(pointer(&body, &path).as_f64(), Some(expected), "{path} in {body}");
}

/// The OMA's `/metrics` page.
async fn metrics_text(world: &OmaWorld) -> String {
    let url = format!("{}/metrics", world.lab().oma().url());
    world.lab().http.get(url).send().await.expect("GET /metrics").text().await.expect("text")
}

/// The `oma_recoveries_total` counters on `/metrics`, as (outcome, count).
async fn recovery_counters(world: &OmaWorld) -> Vec<(String, u64)> {
    metrics_text(world)
        .await
        .lines()
        .filter_map(|line| line.strip_prefix("oma_recoveries_total{outcome=\""))
        .map(|rest| {
            let (outcome, count) = rest.split_once("\"} ").unwrap_or_else(|| panic!("unexpected metric line: {rest}"));
            (outcome.to_string(), count.trim().parse().unwrap_or_else(|_| panic!("count in {rest}")))
        })
        .collect()
}

/// Startup and manual recovery count their decisions; the poller's own finalizations are not
/// recoveries and must not be counted as such.
#[then(regex = r#"^the OMA's metrics count (\d+) recover(?:y|ies) "([a-z_]+)" and no other$"#)]
async fn metrics_count_recoveries(world: &mut OmaWorld, n: u64, outcome: String) {
    let counters: Vec<_> = recovery_counters(world).await.into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(counters, vec![(outcome, n)], "oma_recoveries_total on /metrics (counts above 0)");
}

/// The counters must be on the page (an OMA that dropped the metric does not pass), all at 0.
#[then(regex = r"^the OMA's metrics count no recoveries$")]
async fn metrics_count_no_recoveries(world: &mut OmaWorld) {
    let counters = recovery_counters(world).await;
    assert!(!counters.is_empty(), "/metrics has no oma_recoveries_total line:\n{}", metrics_text(world).await);
    assert!(counters.iter().all(|(_, n)| *n == 0), "oma_recoveries_total on /metrics: {counters:?}");
}

/// A whole line of `/metrics`, exactly (`oma_pollers_active 1` is not `oma_pollers_active 10`);
/// waits for it, since a gauge follows the poller's tick.
#[then(regex = r#"^the OMA's metrics show "(.*)"$"#)]
async fn metrics_show(world: &mut OmaWorld, line: String) {
    let deadline = std::time::Instant::now() + super::WAIT;
    loop {
        let text = metrics_text(world).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics has no line {line:?} within {:?}:\n{text}",
            super::WAIT
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A health-monitor round as `/api/v1/job-recovery/status` reports it (`health_monitor.last_check`;
/// rounds come every 500 ms in the lab, so the step polls until one matches). "Slow": jobs this
/// process polls whose `vma_last_poll_at` is stale.
#[then(
    regex = r"^a health monitor round reports (\d+) jobs? checked, (\d+) orphaned, (\d+) re-attached and (\d+) finalized, (none|\d+) slow$"
)]
async fn health_round(
    world: &mut OmaWorld,
    checked: u64,
    orphaned: u64,
    reattached: u64,
    finalized: u64,
    slow: String,
) {
    let slow: u64 = if slow == "none" { 0 } else { slow.parse().expect("a count") };
    let url = format!("{}/api/v1/job-recovery/status", world.lab().oma().url());
    let want = json!({
        "checked": checked, "orphaned": orphaned, "reattached": reattached, "finalized": finalized, "slow_but_polled": slow,
    });
    let last = world
        .lab()
        .wait_until("a health-monitor round with these counts", crate::steps::WAIT, || async {
            let body: Value = world.lab().http.get(&url).send().await?.json().await?;
            let last = body["health_monitor"]["last_check"].clone();
            let counts = json!({
                "checked": last["checked"], "orphaned": last["orphaned"],
                "reattached": last["reattached"], "finalized": last["finalized"], "slow_but_polled": last["slow_but_polled"],
            });
            Ok(if counts == want { Ok(last) } else { Err(format!("last_check: {last}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(last["checked_at"].clone()).unwrap_or_else(|e| panic!("checked_at in {last}: {e}"));
    let age = chrono::Utc::now() - at;
    assert!(age < chrono::Duration::seconds(5), "checked_at {at} is {age} old");
}

/// `oma_orphans_reattached_total` on `/metrics`.
#[then(regex = r"^the OMA's metrics count (\d+) orphaned jobs? re-attached$")]
async fn metrics_count_reattached(world: &mut OmaWorld, n: u64) {
    let text = metrics_text(world).await;
    let count = text.lines().find_map(|l| l.strip_prefix("oma_orphans_reattached_total ")).map(str::trim);
    assert_eq!(count, Some(n.to_string().as_str()), "oma_orphans_reattached_total on /metrics");
}
