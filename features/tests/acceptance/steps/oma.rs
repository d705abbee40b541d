//! Steps about the OMA process: start, stop (SIGTERM), kill (SIGKILL), restart, configuration.

use std::time::Duration;

use cucumber::{given, then, when};

use crate::OmaWorld;

pub async fn start_oma(world: &mut OmaWorld) {
    world.oma_started_at = Some(chrono::Utc::now());
    let lab = world.lab.as_mut().expect("lab");
    if lab.omas.is_empty() {
        let config = world.config.clone().unwrap_or_else(|| lab.oma_config());
        lab.start_oma_with(config).await.unwrap_or_else(|e| panic!("{e:#}"));
    } else {
        lab.oma_mut().start_again().await.unwrap_or_else(|e| panic!("{e:#}"));
    }
}

fn config(world: &mut OmaWorld) -> &mut oma_acceptance::OmaConfig {
    if world.config.is_none() {
        world.config = Some(world.lab().oma_config());
    }
    world.config.as_mut().expect("set above")
}

/// The OMAs of the scenario reach the database through a gate: closed until it opens, or open
/// until it closes.
#[given(regex = r"^the database does not accept connections yet$")]
async fn database_late(world: &mut OmaWorld) {
    put_database_behind_gate(world);
}

#[given(regex = r"^the OMA reaches its database through a gate$")]
async fn database_behind_open_gate(world: &mut OmaWorld) {
    put_database_behind_gate(world);
    database_opens(world).await;
}

fn put_database_behind_gate(world: &mut OmaWorld) {
    let (gate, url) =
        oma_acceptance::gate::Gate::in_front_of(&world.lab().db().url).unwrap_or_else(|e| panic!("{e:#}"));
    config(world).database_url = url;
    world.db_gate = Some(gate);
}

#[given(regex = r"^the OMA's database user does not exist$")]
async fn database_user_unknown(world: &mut OmaWorld) {
    let mut url = reqwest::Url::parse(&world.lab().db().url).expect("the lab's database URL");
    url.set_username("oma_no_such_user").expect("user");
    url.set_password(Some("wrong")).expect("password");
    config(world).database_url = url.to_string();
}

#[when(regex = r"^the database goes away$")]
async fn database_goes_away(world: &mut OmaWorld) {
    world.db_gate.as_mut().expect("the OMA reaches its database through a gate").close().await;
}

#[when(regex = r"^the database (?:starts accepting connections|comes back)$")]
async fn database_opens(world: &mut OmaWorld) {
    let gate = world.db_gate.as_mut().expect("the database does not accept connections yet");
    gate.open().await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[when(regex = r"^the OMA API is launched$")]
async fn oma_launched(world: &mut OmaWorld) {
    world.oma_started_at = Some(chrono::Utc::now());
    let config = config(world).clone();
    world.lab_mut().launch_oma_with(config).await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^the OMA API becomes ready within (\d+) seconds$")]
async fn oma_ready_within(world: &mut OmaWorld, secs: u64) {
    let oma = world.lab_mut().oma_mut();
    oma.wait_ready(Duration::from_secs(secs)).await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[given(regex = r"^the OMA stall timeout is (\d+) seconds?$")]
async fn stall_timeout(world: &mut OmaWorld, secs: u64) {
    config(world).stall_after = Duration::from_secs(secs);
}

#[given(regex = r"^the OMA polls every (\d+) ms$")]
async fn poll_interval(world: &mut OmaWorld, ms: u64) {
    config(world).poll_interval = Duration::from_millis(ms);
}

#[given(regex = r"^the OMA waits up to (\d+) ms for a VMA answer$")]
async fn vma_timeout(world: &mut OmaWorld, ms: u64) {
    config(world).vma_timeout = Duration::from_millis(ms);
}

#[given(regex = r"^an API request waits up to (\d+) ms for the database$")]
async fn api_db_timeout(world: &mut OmaWorld, ms: u64) {
    config(world).extra_env.push(("OMA_API_DB_TIMEOUT".into(), format!("{ms}ms")));
}

#[given(regex = r"^the OMA logs in JSON$")]
async fn json_logs(world: &mut OmaWorld) {
    config(world).log_format = "json";
}

/// The `create-pause` failpoint: the window in which a new job is in the database but not yet
/// tracked by the poller, one second wide instead of a few milliseconds.
#[given(regex = r"^the OMA holds each new job 1 s between writing it and polling it$")]
async fn create_pause(world: &mut OmaWorld) {
    config(world).extra_env.push(("OMA_FAILPOINT".into(), "create-pause".into()));
}

#[given(regex = r"^the health monitor checks every (\d+) ms$")]
async fn health_interval(world: &mut OmaWorld, ms: u64) {
    config(world).health_interval = Duration::from_millis(ms);
}

#[given(regex = r"^the OMA API is running$")]
#[when(regex = r"^the OMA API (?:is started|starts|is started again)$")]
async fn oma_starts(world: &mut OmaWorld) {
    start_oma(world).await;
}

#[when(regex = r"^the OMA API is stopped$")]
async fn oma_stopped(world: &mut OmaWorld) {
    let job = world.jobs.get("").cloned();
    if let Some(id) = &job {
        world.before_restart = world.lab().job(id).await.ok();
    }
    let code = world.lab_mut().oma_mut().stop().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(code, Some(0), "oma-api must exit cleanly on SIGTERM");
}

/// The guide's ROLLBACK PROCEDURE: stop the service, point it at the previous build, start it.
/// The previous build is `OMA_PREVIOUS_BUILD` (the build under test when unset); timed from the
/// stop to the previous build answering `/health`.
#[when(regex = r"^the OMA is rolled back to the previous build$")]
async fn rolled_back(world: &mut OmaWorld) {
    let began = std::time::Instant::now();
    oma_stopped(world).await;
    world.lab_mut().oma_mut().build = oma_acceptance::oma_process::Build::Previous;
    start_oma(world).await;
    let took = began.elapsed();
    let previous = oma_acceptance::oma_process::Build::Previous
        .command()
        .unwrap_or_else(|| "the build under test (OMA_PREVIOUS_BUILD unset)".into());
    world.notes.push(format!("rollback to {previous}: {:.1} s from stop to ready", took.as_secs_f64()));
    world.rollback_took = Some(took);
}

#[when(regex = r"^the build under test is deployed again$")]
async fn rolled_forward(world: &mut OmaWorld) {
    oma_stopped(world).await;
    world.lab_mut().oma_mut().build = oma_acceptance::oma_process::Build::UnderTest;
    start_oma(world).await;
}

/// The guide: "Rollback Time: < 2 minutes".
#[then(regex = r"^the rollback took under (\d+) seconds$")]
async fn rollback_within(world: &mut OmaWorld, secs: u64) {
    let took = world.rollback_took.expect("a rollback was made");
    assert!(took < Duration::from_secs(secs), "the rollback took {took:?}");
}

#[when(regex = r"^the OMA API is killed$")]
async fn oma_killed(world: &mut OmaWorld) {
    if let Some(id) = world.jobs.get("").cloned() {
        world.before_restart = world.lab().job(&id).await.ok();
    }
    world.lab_mut().oma_mut().kill().await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[when(regex = r"^the OMA API is restarted$")]
async fn oma_restarted(world: &mut OmaWorld) {
    // Seeded scenarios stand for jobs a previous OMA left: there is nothing to stop then.
    let running = world.lab.as_mut().is_some_and(|lab| lab.omas.first_mut().is_some_and(|o| o.is_running()));
    if running {
        oma_stopped(world).await;
    }
    start_oma(world).await;
}

#[when(regex = r"^two OMA API processes start at the same time$")]
async fn two_omas(world: &mut OmaWorld) {
    world.oma_started_at = Some(chrono::Utc::now());
    let config = world.config.clone().unwrap_or_else(|| world.lab().oma_config());
    let name = world.lab().name.clone();
    let (name_a, name_b) = (format!("{name}-a"), format!("{name}-b"));
    let a = oma_acceptance::OmaProcess::start(&name_a, config.clone());
    let b = oma_acceptance::OmaProcess::start(&name_b, config);
    let (a, b) = tokio::join!(a, b);
    let lab = world.lab_mut();
    lab.omas.push(a.unwrap_or_else(|e| panic!("{e:#}")));
    lab.omas.push(b.unwrap_or_else(|e| panic!("{e:#}")));
}

#[then(regex = r"^the service starts without errors$")]
async fn starts_without_errors(world: &mut OmaWorld) {
    let lab = world.lab_mut();
    let oma = lab.oma_mut();
    assert!(oma.is_running(), "oma-api is not running:\n{}", oma.log.tail(20));
    let errors: Vec<String> =
        oma.log.lines().into_iter().filter(|l| l.contains(" ERROR ") || l.contains("\"level\":\"ERROR\"")).collect();
    assert!(errors.is_empty(), "error lines in the log: {errors:#?}");
}

/// An OMA with nothing to do does not spin: its own CPU time (from /proc, so a loaded machine
/// does not inflate it) over one second stays under `limit` of a core.
#[then(regex = r"^the OMA uses under (\d+(?:\.\d+)?) of a CPU core while idle$")]
async fn idle_cpu(world: &mut OmaWorld, limit: f64) {
    let pid = world.lab().oma().pid().expect("oma-api runs");
    let cpu = || oma_acceptance::procfs::ProcUsage::of(pid).unwrap_or_else(|e| panic!("{e:#}")).cpu_s();
    let (before, started) = (cpu(), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = (cpu() - before) / started.elapsed().as_secs_f64();
    assert!(used < limit, "an idle oma-api used {used:.2} of a core (limit {limit})");
}

#[then(regex = r"^the OMA API exits cleanly on SIGTERM within (\d+) seconds$")]
async fn exits_cleanly_within(world: &mut OmaWorld, secs: u64) {
    let started = std::time::Instant::now();
    let code = world.lab_mut().oma_mut().stop().await.unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "oma-api must exit cleanly on SIGTERM");
    assert!(took <= Duration::from_secs(secs), "oma-api took {took:?} to exit after SIGTERM (at most {secs} s)");
}

#[then(regex = r"^the OMA API exits cleanly on SIGTERM$")]
async fn exits_cleanly(world: &mut OmaWorld) {
    oma_stopped(world).await;
}
