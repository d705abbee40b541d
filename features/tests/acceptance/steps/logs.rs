//! Steps about the OMA's log, in the testing guide's words (`{job}` is the scenario's job id).

use cucumber::then;

use oma_acceptance::oma_process::contains_whole;

use super::WAIT;
use crate::OmaWorld;

async fn any_oma_logged(world: &OmaWorld, needle: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + WAIT;
    let mut scanned = vec![0usize; world.lab().omas.len()];
    loop {
        for (oma, from) in world.lab().omas.iter().zip(scanned.iter_mut()) {
            let (found, next) = oma.log.find_from(*from, needle);
            if found.is_some() {
                return Ok(());
            }
            *from = next;
        }
        if std::time::Instant::now() > deadline {
            let tails: Vec<String> =
                world.lab().omas.iter().map(|o| format!("--- {}:\n{}", o.name, o.log.tail(25))).collect();
            return Err(format!("no OMA logged {needle:?} within {WAIT:?}\n{}", tails.join("\n")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Every OMA's log lines that contain `needle`.
pub(crate) fn lines_with(world: &OmaWorld, needle: &str) -> Vec<String> {
    world.lab().omas.iter().flat_map(|o| o.log.lines()).filter(|l| l.contains(needle)).collect()
}

#[then(regex = r#"^the logs show "(.*)"$"#)]
async fn logs_show(world: &mut OmaWorld, text: String) {
    let needle = world.expand(&text);
    if let Err(e) = any_oma_logged(world, &needle).await {
        panic!("{e}");
    }
}

/// An exact number of lines ("once": something logged per streak, not per poll). Waits until the
/// lines are there, then counts everything the OMAs have written.
#[then(regex = r#"^the logs show "(.*)" (once|\d+ times)$"#)]
async fn logs_show_times(world: &mut OmaWorld, text: String, times: String) {
    let times: usize = times.trim_end_matches(" times").parse().unwrap_or(1);
    let needle = world.expand(&text);
    let deadline = std::time::Instant::now() + WAIT;
    while lines_with(world, &needle).len() < times && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let hits = lines_with(world, &needle);
    assert_eq!(hits.len(), times, "{needle:?} logged {} times: {hits:#?}", hits.len());
}

/// Something logged each time it happens (not once per streak): waits for the `n`th line.
#[then(regex = r#"^the logs show "(.*)" (\d+) or more times$"#)]
async fn logs_show_at_least(world: &mut OmaWorld, text: String, n: usize) {
    let needle = world.expand(&text);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let hits = lines_with(world, &needle).len();
        if hits >= n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{needle:?} logged {hits} times within {WAIT:?}, not {n}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[then(regex = r#"^the logs do not show "(.*)"$"#)]
async fn logs_do_not_show(world: &mut OmaWorld, text: String) {
    let needle = world.expand(&text);
    for oma in &world.lab().omas {
        let hits: Vec<String> = oma.log.lines().into_iter().filter(|l| l.contains(&needle)).collect();
        assert!(hits.is_empty(), "{} logged {needle:?}: {hits:#?}", oma.name);
    }
}

/// A summary figure, matched as a whole number: "Total processed: 1" is not "Total processed: 10".
#[then(regex = r#"^the recovery summary shows "(.*)"$"#)]
async fn summary_shows(world: &mut OmaWorld, text: String) {
    any_oma_logged(world, "Job recovery completed:").await.unwrap_or_else(|e| panic!("{e}"));
    let needle = world.expand(&text);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let lines = world.lab().omas.iter().flat_map(|o| o.log.lines()).collect::<Vec<_>>();
        if lines.iter().any(|l| contains_whole(l, &needle)) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let near: Vec<&String> =
                lines.iter().filter(|l| l.contains(needle.trim_end_matches(char::is_numeric))).collect();
            panic!("no OMA logged {needle:?} as a whole figure within {WAIT:?}; nearest lines: {near:#?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[then(regex = r#"^the logs never contain "(.*)"$"#)]
async fn never_contain(world: &mut OmaWorld, secret: String) {
    logs_do_not_show(world, secret).await;
}

#[then(regex = r"^every log line is JSON$")]
async fn json_lines(world: &mut OmaWorld) {
    let oma = world.lab().oma();
    let lines: Vec<String> = oma.log.lines().into_iter().filter(|l| !l.starts_with("=====")).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("message").is_some(), "{line}");
    }
}
