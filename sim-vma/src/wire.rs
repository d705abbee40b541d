//! What the fake VMA sends for a poll of a job: the reply its mode asks for ([`answer_poll`]) and
//! the progress body exactly as the real VMA writes it (reference §1.3: keys in its order, its
//! derived fields, `timing.last_update` rewritten to the request time). Pure, from a [`Job`].

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::model::{Job, MalformedKind, Mode};

pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `mapStageToOperation` of the real VMA.
pub fn current_operation<'a>(status: &str, stage: &'a str) -> &'a str {
    match (status, stage) {
        ("Succeeded", _) => "Completed",
        ("Failed", _) => "Failed",
        (_, "Discover") => "Discovering VM",
        (_, "EnableCBT") => "Enabling CBT",
        (_, "QueryCBT") => "Querying CBT",
        (_, "Snapshot") => "Creating Snapshot",
        (_, "PrepareVolumes") => "Preparing Volumes",
        (_, "StartExports") => "Starting Exports",
        (_, "Transfer") => "Transferring Data",
        (_, "Finalize") => "Finalizing",
        (_, "PersistChangeIDs") => "Persisting Change IDs",
        (_, other) => other,
    }
}

/// `calculateETA` of the real VMA.
pub fn eta_seconds(status: &str, percent: f64, throughput_bps: f64, total: i64, transferred: i64) -> i64 {
    if status == "Succeeded" || status == "Failed" || percent <= 0.0 || throughput_bps <= 0.0 {
        return 0;
    }
    let remaining = total - transferred;
    if remaining <= 0 {
        return 0;
    }
    (remaining as f64 / throughput_bps).min(86400.0) as i64
}

/// Render what the VMA would send now, keys in the real VMA's order. `timing.last_update` is the
/// request time, as the real VMA overwrites `updated_at` on read (so staleness is invisible on the
/// wire).
///
/// Written piece by piece rather than through a derived `Serialize`: the keys are literals, so
/// only the values go through serde_json (half the CPU of the derived form, which dominated
/// sim-vma's own cost per poll). `tests::the_progress_body_equals_the_derived_serialization`
/// proves both give the same bytes.
pub fn progress_body(job: &Job, now: DateTime<Utc>) -> String {
    let mbps = job.throughput_bps / 1_048_576.0;
    let elapsed = (now - job.started_at).num_milliseconds().max(0);
    let failure = match &job.mode {
        Mode::Failed { message } if !message.is_empty() => Some(message.as_str()),
        _ => None,
    };
    let now_text = rfc3339(now);
    let start_text = rfc3339(job.started_at);
    let eta = eta_seconds(&job.status, job.percent, job.throughput_bps, job.total_bytes, job.bytes_transferred);
    let mut w = JsonWriter(Vec::with_capacity(1024));
    w.value("{\"job_id\":", job.job_id.as_str());
    w.value(",\"status\":", job.status.as_str());
    w.value(",\"sync_type\":", job.sync_type.as_str());
    w.value(",\"phase\":", job.phase.as_str());
    w.value(",\"percentage\":", &job.percent);
    w.value(",\"current_operation\":", current_operation(&job.status, &job.phase));
    w.value(",\"bytes_transferred\":", &job.bytes_transferred);
    w.value(",\"total_bytes\":", &job.total_bytes);
    // Current, average and peak are one figure here: formatted once.
    let mbps = serde_json::to_string(&mbps).expect("a number serializes");
    w.raw(",\"throughput\":{\"current_mbps\":");
    w.raw(&mbps);
    w.raw(",\"average_mbps\":");
    w.raw(&mbps);
    w.raw(",\"peak_mbps\":");
    w.raw(&mbps);
    w.stamp(",\"last_update\":", &now_text);
    w.stamp("},\"timing\":{\"start_time\":", &start_text);
    w.stamp(",\"last_update\":", &now_text);
    w.value(",\"elapsed_ms\":", &elapsed);
    w.stamp(",\"phase_start\":", &start_text);
    w.value(",\"phase_elapsed_ms\":", &elapsed);
    w.value(",\"eta_seconds\":", &eta);
    w.value(
        "},\"vm_info\":{\"name\":\"unknown\",\"path\":\"unknown\",\"disk_size_gb\":",
        &(job.total_bytes / (1 << 30)),
    );
    w.value(",\"disk_size_bytes\":", &job.total_bytes);
    w.value(",\"cbt_enabled\":", &(job.sync_type == "full" || job.sync_type == "incremental"));
    w.value("},\"phases\":[{\"name\":", job.phase.as_str());
    w.value(",\"status\":", job.status.as_str());
    w.stamp(",\"start_time\":", &start_text);
    w.raw(",\"end_time\":\"\",\"duration_ms\":0}],\"errors\":[");
    if let Some(message) = failure {
        w.value("", message);
    }
    w.value("],\"last_error\":", &failure);
    if let Some(disks) = disk_progresses(job) {
        w.raw(",\"disk_progresses\":");
        serde_json::to_writer(&mut w.0, &disks).expect("plain values serialize");
    }
    w.raw("}");
    String::from_utf8(w.0).expect("JSON text is UTF-8")
}

/// One entry of `disk_progresses` (reference §1.3), keys in the real VMA's order. migratekit
/// never sends a disk id, so `disk_id` is empty.
#[derive(Debug, Clone, Serialize)]
pub struct DiskProgress {
    pub disk_id: &'static str,
    pub label: String,
    pub bytes_transferred: i64,
    pub total_bytes: i64,
    pub percent: f64,
    pub throughput_mbps: f64,
    pub status: &'static str,
}

/// The per-disk entries of a multi-disk job that sends them: one per disk started so far.
pub fn disk_progresses(job: &Job) -> Option<Vec<DiskProgress>> {
    let Mode::MultiDisk(disks) = &job.mode else { return None };
    if !disks.disk_progresses {
        return None;
    }
    let current_done = job.status == "completed";
    Some(
        disks.sizes[..=job.disk_index.min(disks.sizes.len().saturating_sub(1))]
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let current = i == job.disk_index;
                DiskProgress {
                    disk_id: "",
                    label: format!("Hard disk {}", i + 1),
                    bytes_transferred: if current { job.bytes_transferred } else { size },
                    total_bytes: size,
                    percent: if current { job.percent } else { 100.0 },
                    throughput_mbps: if current { job.throughput_bps / 1_048_576.0 } else { 0.0 },
                    status: if !current || current_done { "completed" } else { "in_progress" },
                }
            })
            .collect(),
    )
}

/// Appends JSON text: literal pieces (keys and punctuation) as they are, values through serde_json
/// (escaping, number formatting, `null`).
struct JsonWriter(Vec<u8>);

impl JsonWriter {
    fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    fn value<T: Serialize + ?Sized>(&mut self, before: &str, value: &T) {
        self.raw(before);
        serde_json::to_writer(&mut self.0, value).expect("plain values serialize");
    }

    /// An RFC 3339 timestamp: its text needs no escaping, so it goes between quotes as it is.
    fn stamp(&mut self, before: &str, text: &str) {
        self.raw(before);
        self.raw("\"");
        self.raw(text);
        self.raw("\"");
    }
}

/// What to send back for one poll of a known job (decided purely from its mode).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Progress(String),
    NotFound,
    Http200NotFound,
    Status(u16),
    Malformed(MalformedKind, String),
}

/// Count a poll and decide the answer. Pure apart from mutating the job.
pub fn answer_poll(job: &mut Job, now: DateTime<Utc>) -> (Reply, Option<Duration>) {
    job.on_poll(now);
    let body = || progress_body(job, now);
    match &job.mode {
        Mode::Running(_) | Mode::Completed | Mode::Failed { .. } | Mode::Stale | Mode::MultiDisk(_) => {
            (Reply::Progress(body()), None)
        }
        Mode::Slow { delay_ms, .. } => (Reply::Progress(body()), Some(Duration::from_millis(*delay_ms))),
        Mode::NotFound => (Reply::NotFound, None),
        Mode::Http200NotFound => (Reply::Http200NotFound, None),
        Mode::Error { status } => (Reply::Status(*status), None),
        Mode::Malformed { kind } => {
            let good = body();
            let bad = match kind {
                MalformedKind::NotJson => "<html><body>502 Bad Gateway</body></html>".to_string(),
                MalformedKind::Truncated => good[..good.len() / 2].to_string(),
                MalformedKind::WrongTypes => good.replacen("\"percentage\":", "\"percentage\":\"", 1).replacen(
                    ",\"current_operation\"",
                    "\",\"current_operation\"",
                    1,
                ),
                MalformedKind::Oversized => {
                    let pad = " ".repeat(4 * 1024 * 1024);
                    format!("{}{}", &good[..good.len() - 1], format_args!(",\"padding\":\"{pad}\"}}"))
                }
            };
            (Reply::Malformed(*kind, bad), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Ramp, Rate};

    // The derived serialization the hand-written `progress_body` must equal, byte for byte.
    #[derive(Serialize)]
    struct Throughput<'a> {
        current_mbps: f64,
        average_mbps: f64,
        peak_mbps: f64,
        last_update: &'a str,
    }

    #[derive(Serialize)]
    struct Timing<'a> {
        start_time: &'a str,
        last_update: &'a str,
        elapsed_ms: i64,
        phase_start: &'a str,
        phase_elapsed_ms: i64,
        eta_seconds: i64,
    }

    #[derive(Serialize)]
    struct VmInfo {
        name: &'static str,
        path: &'static str,
        disk_size_gb: i64,
        disk_size_bytes: i64,
        cbt_enabled: bool,
    }

    #[derive(Serialize)]
    struct PhaseInfo<'a> {
        name: &'a str,
        status: &'a str,
        start_time: &'a str,
        end_time: &'static str,
        duration_ms: i64,
    }

    /// The progress body, keys in the real VMA's order.
    #[derive(Serialize)]
    struct ProgressBody<'a> {
        job_id: &'a str,
        status: &'a str,
        sync_type: &'a str,
        phase: &'a str,
        percentage: f64,
        current_operation: &'a str,
        bytes_transferred: i64,
        total_bytes: i64,
        throughput: Throughput<'a>,
        timing: Timing<'a>,
        vm_info: VmInfo,
        phases: [PhaseInfo<'a>; 1],
        errors: &'a [String],
        last_error: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        disk_progresses: Option<Vec<DiskProgress>>,
    }

    fn derived_body(job: &Job, now: DateTime<Utc>) -> String {
        let mbps = job.throughput_bps / 1_048_576.0;
        let elapsed = (now - job.started_at).num_milliseconds().max(0);
        let failure = match &job.mode {
            Mode::Failed { message } if !message.is_empty() => Some(message),
            _ => None,
        };
        let now_text = rfc3339(now);
        let start_text = rfc3339(job.started_at);
        let body = ProgressBody {
            job_id: &job.job_id,
            status: &job.status,
            sync_type: &job.sync_type,
            phase: &job.phase,
            percentage: job.percent,
            current_operation: current_operation(&job.status, &job.phase),
            bytes_transferred: job.bytes_transferred,
            total_bytes: job.total_bytes,
            throughput: Throughput { current_mbps: mbps, average_mbps: mbps, peak_mbps: mbps, last_update: &now_text },
            timing: Timing {
                start_time: &start_text,
                last_update: &now_text,
                elapsed_ms: elapsed,
                phase_start: &start_text,
                phase_elapsed_ms: elapsed,
                eta_seconds: eta_seconds(
                    &job.status,
                    job.percent,
                    job.throughput_bps,
                    job.total_bytes,
                    job.bytes_transferred,
                ),
            },
            vm_info: VmInfo {
                name: "unknown",
                path: "unknown",
                disk_size_gb: job.total_bytes / (1 << 30),
                disk_size_bytes: job.total_bytes,
                cbt_enabled: job.sync_type == "full" || job.sync_type == "incremental",
            },
            phases: [PhaseInfo {
                name: &job.phase,
                status: &job.status,
                start_time: &start_text,
                end_time: "",
                duration_ms: 0,
            }],
            errors: failure.map(std::slice::from_ref).unwrap_or_default(),
            last_error: failure.map(String::as_str),
            disk_progresses: disk_progresses(job),
        };
        serde_json::to_string(&body).unwrap()
    }

    #[test]
    fn the_progress_body_equals_the_derived_serialization() {
        let later = t0() + chrono::Duration::milliseconds(61_234);
        let mut jobs = vec![
            Job::new("job-1", vec![], running(Rate::PerPoll(7.5)), vec![], t0()),
            Job::new("job-\"quoted\"\\ \u{e9}\n", vec![], Mode::Completed, vec![], t0()),
            Job::new("job-3", vec![], Mode::Failed { message: "NBD \"refused\"\ttab".into() }, vec![], t0()),
            Job::new("job-4", vec![], Mode::Failed { message: String::new() }, vec![], t0()),
            Job::new("job-5", vec![], Mode::Stale, vec![], t0()),
            Job::new("job-6", vec![], multi_disk(true), vec![], t0()),
            Job::new("job-7", vec![], multi_disk(false), vec![], t0()),
        ];
        jobs[0].sync_type = "incremental".into();
        jobs[0].throughput_bps = 123_456_789.5;
        jobs[2].percent = f64::NAN;
        for job in &mut jobs {
            for _ in 0..3 {
                let expected = derived_body(job, later);
                assert_eq!(progress_body(job, later), expected);
                serde_json::from_str::<serde_json::Value>(&expected).unwrap();
                answer_poll(job, later);
            }
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-10-03T14:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn multi_disk(disk_progresses: bool) -> Mode {
        Mode::MultiDisk(crate::model::Disks {
            sizes: vec![1 << 30, 2 << 30],
            rate: crate::model::Rate::PerPoll(60.0),
            pause: crate::model::Trigger::AfterPolls(0),
            disk_progresses,
        })
    }

    #[test]
    fn disk_progresses_list_the_disks_started_as_migratekit_reports_them() {
        let mut job = Job::new("j", vec![], multi_disk(true), vec![], t0());
        let body = |job: &Job| serde_json::from_str::<serde_json::Value>(&progress_body(job, t0())).unwrap();
        answer_poll(&mut job, t0());
        answer_poll(&mut job, t0());
        let first_done = body(&job);
        assert_eq!(first_done["status"], "completed");
        assert_eq!(first_done["total_bytes"], 1i64 << 30, "the first disk's size, not the job's");
        assert_eq!(first_done["disk_progresses"].as_array().unwrap().len(), 1);
        assert_eq!(first_done["disk_progresses"][0]["disk_id"], "");
        answer_poll(&mut job, t0());
        let second = body(&job);
        assert_eq!((second["status"].as_str(), second["percentage"].as_f64()), (Some("in_progress"), Some(0.0)));
        let entries = second["disk_progresses"].as_array().unwrap();
        assert_eq!(
            (entries[0]["status"].as_str(), entries[1]["status"].as_str()),
            (Some("completed"), Some("in_progress"))
        );
        let without = Job::new("j", vec![], multi_disk(false), vec![], t0());
        assert!(body(&without).get("disk_progresses").is_none(), "omitted unless asked for");
    }

    fn running(rate: Rate) -> Mode {
        Mode::Running(Ramp { start_percent: Some(30.0), rate, ..Ramp::default() })
    }

    #[test]
    fn derived_fields_follow_the_real_vma() {
        assert_eq!(current_operation("in_progress", "Transfer"), "Transferring Data");
        assert_eq!(current_operation("in_progress", "Creating Snapshot"), "Creating Snapshot");
        assert_eq!(current_operation("Succeeded", "Transfer"), "Completed");
        assert_eq!(eta_seconds("in_progress", 50.0, 1000.0, 10_000, 5_000), 5);
        assert_eq!(eta_seconds("in_progress", 0.0, 1000.0, 10_000, 0), 0);
        assert_eq!(eta_seconds("in_progress", 1.0, 1.0, 10_000_000, 0), 86400);
    }

    #[test]
    fn malformed_bodies_really_are_malformed() {
        for kind in [MalformedKind::NotJson, MalformedKind::Truncated, MalformedKind::WrongTypes] {
            let mut job = Job::new("j", vec![], Mode::Malformed { kind }, vec![], t0());
            let (Reply::Malformed(_, body), _) = answer_poll(&mut job, t0()) else { panic!() };
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(&body);
            match kind {
                MalformedKind::WrongTypes => assert!(parsed.unwrap()["percentage"].is_string()),
                _ => assert!(parsed.is_err(), "{kind:?}: {body}"),
            }
        }
    }
}
