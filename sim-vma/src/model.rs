//! The pure per-job behaviour of the fake VMA: a job's progress (ramps, phases), its mode and
//! counted or timed transitions; what it answers to a poll is [`crate::wire::answer_poll`].

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How a job answers `GET /api/v1/progress/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// 200 with progress moving along a ramp; completes on its own at 100 %.
    Running(Ramp),
    Completed,
    Failed {
        message: String,
    },
    /// 404 `text/plain` `job not found\n`, like the real VMA.
    NotFound,
    /// 200 `text/plain` `job not found\n` (the seeds' claimed VMA bug).
    Http200NotFound,
    /// 200 with frozen progress: the copy process died, the VMA does not know.
    Stale,
    /// Answers like `running` after a delay.
    Slow {
        delay_ms: u64,
        ramp: Ramp,
    },
    /// An HTTP error status with a text body.
    Error {
        status: u16,
    },
    Malformed {
        kind: MalformedKind,
    },
    /// Disks copied one after another under one job id, as migratekit does (reference §10,
    /// defect 13): each disk runs from 0 to 100 % with `total_bytes` its own size, and the job
    /// then answers `completed` at 100 % for a pause before the next disk starts.
    MultiDisk(Disks),
}

/// The disks of a [`Mode::MultiDisk`] job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disks {
    /// Each disk's size in bytes, in copy order.
    pub sizes: Vec<i64>,
    /// How the current disk moves: percent of it per poll, or per second of the mode (then the
    /// copy goes on while nobody polls, as the real VMA's does).
    pub rate: Rate,
    /// How long the job answers `completed` between one disk and the next.
    pub pause: Trigger,
    /// Send `disk_progresses` (one entry per disk started, no `disk_id`, as migratekit sends it);
    /// off by default: the real VMA omits the list when it has no per-disk entries.
    pub disk_progresses: bool,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Running(_) => "running",
            Mode::Completed => "completed",
            Mode::Failed { .. } => "failed",
            Mode::NotFound => "not_found",
            Mode::Http200NotFound => "http200_not_found",
            Mode::Stale => "stale",
            Mode::Slow { .. } => "slow",
            Mode::Error { .. } => "error",
            Mode::Malformed { .. } => "malformed",
            Mode::MultiDisk(_) => "multi_disk",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// Not JSON at all.
    NotJson,
    /// JSON cut off in the middle.
    Truncated,
    /// Right keys, wrong JSON types (`percentage` as a string…).
    WrongTypes,
    /// A body of several megabytes.
    Oversized,
}

impl MalformedKind {
    pub fn parse(s: &str) -> Option<MalformedKind> {
        match s {
            "not_json" => Some(MalformedKind::NotJson),
            "truncated" => Some(MalformedKind::Truncated),
            "wrong_types" => Some(MalformedKind::WrongTypes),
            "oversized" => Some(MalformedKind::Oversized),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ramp {
    /// Percent to jump to when the mode starts (None: keep the current percent).
    pub start_percent: Option<f64>,
    pub rate: Rate,
    /// Phases, one more per poll until the last, which stays.
    pub phases: Vec<String>,
    pub total_bytes: i64,
    pub throughput_mbps: f64,
    pub sync_type: String,
}

impl Default for Ramp {
    fn default() -> Self {
        Ramp {
            start_percent: None,
            rate: Rate::None,
            phases: vec!["Transfer".to_string()],
            total_bytes: 10 * 1024 * 1024 * 1024,
            throughput_mbps: 100.0,
            sync_type: "full".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    None,
    PerPoll(f64),
    PerSecond(f64),
}

/// When a transition fires: after N polls in the current mode, or after a time in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    AfterPolls(u64),
    AfterMillis(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub trigger: Trigger,
    pub to: Mode,
}

/// One job as the VMA's progress store holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub job_id: String,
    pub export_names: Vec<String>,
    pub mode: Mode,
    pub transitions: Vec<Transition>,
    pub status: String,
    pub phase: String,
    pub percent: f64,
    pub bytes_transferred: i64,
    pub total_bytes: i64,
    pub throughput_bps: f64,
    pub sync_type: String,
    pub started_at: DateTime<Utc>,
    pub mode_started_at: DateTime<Utc>,
    pub mode_start_percent: f64,
    pub polls_in_mode: u64,
    pub polls: u64,
    pub phase_index: usize,
    /// Set by `/replicate`: the VM path, for `/api/v1/status/{id}`.
    pub vm_path: Option<String>,
    /// [`Mode::MultiDisk`]: the disk being copied (or the last one done), and the polls answered
    /// `completed` since it was done.
    pub disk_index: usize,
    pub disk_pause: u64,
}

impl Job {
    pub fn new(
        job_id: &str,
        export_names: Vec<String>,
        mode: Mode,
        transitions: Vec<Transition>,
        now: DateTime<Utc>,
    ) -> Job {
        let mut job = Job {
            job_id: job_id.to_string(),
            export_names,
            mode: Mode::Completed,
            transitions: Vec::new(),
            status: "Queued".to_string(),
            phase: "Discover".to_string(),
            percent: 0.0,
            bytes_transferred: 0,
            total_bytes: 0,
            throughput_bps: 0.0,
            sync_type: String::new(),
            started_at: now,
            mode_started_at: now,
            mode_start_percent: 0.0,
            polls_in_mode: 0,
            polls: 0,
            phase_index: 0,
            vm_path: None,
            disk_index: 0,
            disk_pause: 0,
        };
        job.set_mode(mode, transitions, now);
        job
    }

    /// Enter a mode: the progress fields take the mode's shape at once.
    pub fn set_mode(&mut self, mode: Mode, transitions: Vec<Transition>, now: DateTime<Utc>) {
        self.transitions = transitions;
        self.enter(mode, now);
    }

    fn enter(&mut self, mode: Mode, now: DateTime<Utc>) {
        self.mode_started_at = now;
        self.polls_in_mode = 0;
        match &mode {
            Mode::Running(ramp) | Mode::Slow { ramp, .. } => {
                if let Some(p) = ramp.start_percent {
                    self.percent = p;
                }
                self.total_bytes = ramp.total_bytes;
                self.throughput_bps = ramp.throughput_mbps * 1_048_576.0;
                self.sync_type = ramp.sync_type.clone();
                self.phase_index = 0;
                self.phase = ramp.phases.first().cloned().unwrap_or_else(|| "Transfer".into());
                self.status = if self.phase == "Discover" { "Queued".into() } else { "in_progress".into() };
                self.bytes_transferred = (self.total_bytes as f64 * self.percent / 100.0) as i64;
            }
            Mode::Completed => {
                self.status = "completed".into();
                self.phase = "Transfer".into();
                self.percent = 100.0;
                self.bytes_transferred = self.total_bytes;
                self.throughput_bps = 0.0;
            }
            Mode::Failed { .. } => {
                self.status = "failed".into();
                self.throughput_bps = 0.0;
            }
            Mode::Stale => {
                self.status = "in_progress".into();
                if self.phase == "Discover" {
                    self.phase = "Transfer".into();
                }
                self.throughput_bps = 0.0;
            }
            Mode::MultiDisk(disks) => {
                self.disk_index = 0;
                self.disk_pause = 0;
                self.sync_type = "full".into();
                self.start_disk(disks.sizes.first().copied().unwrap_or(0));
            }
            _ => {}
        }
        self.mode_start_percent = self.percent;
        self.mode = mode;
    }

    /// Fire the first transition whose trigger is due (at most one per poll).
    pub fn apply_transitions(&mut self, now: DateTime<Utc>) {
        let Some(next) = self.transitions.first() else { return };
        let due = match next.trigger {
            Trigger::AfterPolls(n) => self.polls_in_mode >= n,
            Trigger::AfterMillis(ms) => (now - self.mode_started_at).num_milliseconds() >= ms as i64,
        };
        if due {
            let t = self.transitions.remove(0);
            self.enter(t.to, now);
        }
    }

    /// A disk of a multi-disk job starts: 0 % of its own size.
    fn start_disk(&mut self, size: i64) {
        self.status = "in_progress".into();
        self.phase = "Transfer".into();
        self.percent = 0.0;
        self.total_bytes = size;
        self.bytes_transferred = 0;
        self.throughput_bps = Ramp::default().throughput_mbps * 1_048_576.0;
    }

    /// One poll of a multi-disk job: the current disk moves on, is done (`completed`, 100 %, as
    /// migratekit reports each disk), or after the pause the next disk starts.
    fn disk_poll(&mut self, now: DateTime<Utc>) {
        let Mode::MultiDisk(disks) = &self.mode else { return };
        let (rate, pause) = match (disks.rate, disks.pause) {
            (Rate::PerPoll(rate), Trigger::AfterPolls(pause)) => (rate, pause),
            (Rate::PerSecond(rate), Trigger::AfterMillis(pause_ms)) => {
                let elapsed_ms = (now - self.mode_started_at).num_milliseconds().max(0) as f64;
                let sizes = disks.sizes.clone();
                self.disk_at(&sizes, rate, pause_ms as f64, elapsed_ms);
                return;
            }
            _ => return,
        };
        let next = disks.sizes.get(self.disk_index + 1).copied();
        if self.status == "completed" {
            let Some(size) = next else { return };
            self.disk_pause += 1;
            if self.disk_pause > pause {
                self.disk_index += 1;
                self.disk_pause = 0;
                self.start_disk(size);
            }
            return;
        }
        self.percent = (self.percent + rate).clamp(0.0, 100.0);
        self.bytes_transferred = (self.total_bytes as f64 * self.percent / 100.0) as i64;
        if self.percent >= 100.0 {
            self.status = "completed".into();
            self.bytes_transferred = self.total_bytes;
            self.throughput_bps = 0.0;
        }
    }

    /// A time-driven multi-disk job `elapsed_ms` into its copy: each disk takes `100 / rate`
    /// seconds, then `pause_ms` answered `completed` before the next; done for good after the last.
    fn disk_at(&mut self, sizes: &[i64], rate: f64, pause_ms: f64, elapsed_ms: f64) {
        let disk_ms = 100_000.0 / rate;
        let cycle = disk_ms + pause_ms;
        let index = ((elapsed_ms / cycle).floor() as usize).min(sizes.len() - 1);
        let into = elapsed_ms - index as f64 * cycle;
        if index != self.disk_index {
            self.disk_index = index;
            self.start_disk(sizes[index]);
        }
        if into >= disk_ms {
            self.status = "completed".into();
            self.percent = 100.0;
            self.bytes_transferred = self.total_bytes;
            self.throughput_bps = 0.0;
        } else {
            self.percent = (into * 100.0 / disk_ms).clamp(0.0, 100.0);
            self.bytes_transferred = (self.total_bytes as f64 * self.percent / 100.0) as i64;
        }
    }

    /// Count one poll and move the ramp along. Call before rendering the answer.
    pub fn on_poll(&mut self, now: DateTime<Utc>) {
        self.apply_transitions(now);
        self.polls += 1;
        self.polls_in_mode += 1;
        if matches!(self.mode, Mode::MultiDisk(_)) {
            self.disk_poll(now);
            return;
        }
        let ramp = match &self.mode {
            Mode::Running(r) | Mode::Slow { ramp: r, .. } => r,
            _ => return,
        };
        if self.polls_in_mode > 1 && self.phase_index + 1 < ramp.phases.len() {
            self.phase_index += 1;
            self.phase = ramp.phases[self.phase_index].clone();
            self.status = "in_progress".into();
        }
        let elapsed_s = (now - self.mode_started_at).num_milliseconds().max(0) as f64 / 1000.0;
        let rate = ramp.rate;
        let target = match rate {
            Rate::None => self.percent,
            Rate::PerPoll(r) => self.mode_start_percent + r * (self.polls_in_mode.saturating_sub(1)) as f64,
            Rate::PerSecond(r) => self.mode_start_percent + r * elapsed_s,
        };
        self.percent = target.clamp(0.0, 100.0);
        self.bytes_transferred = (self.total_bytes as f64 * self.percent / 100.0) as i64;
        if self.percent >= 100.0 && rate != Rate::None {
            self.enter(Mode::Completed, now);
        }
    }

    /// Apply a migratekit-style `/update` (reference §1.4, legacy aggregate path).
    pub fn apply_update(&mut self, u: &ProgressUpdate) {
        if let Some(stage) = u.stage.as_deref().filter(|s| !s.is_empty()) {
            self.phase = stage.to_string();
        }
        if let Some(status) = u.status.as_deref().filter(|s| !s.is_empty()) {
            self.status = status.to_string();
            self.mode = match status {
                "completed" => Mode::Completed,
                "failed" => Mode::Failed { message: String::new() },
                _ => Mode::Running(Ramp { start_percent: None, ..Ramp::default() }),
            };
        }
        match u.sync_type.as_deref() {
            Some("full") | Some("initial") => self.sync_type = "full".into(),
            Some("incremental") => self.sync_type = "incremental".into(),
            _ => {}
        }
        if let Some(b) = u.bytes_transferred.filter(|b| *b > 0) {
            self.bytes_transferred = b;
        }
        if let Some(t) = u.total_bytes.filter(|t| *t > 0) {
            self.total_bytes = t;
        }
        self.throughput_bps = u.throughput_bps.filter(|t| *t >= 0.0).unwrap_or(0.0);
        match u.percent.filter(|p| *p > 0.0) {
            Some(p) => self.percent = p,
            None if self.total_bytes > 0 => {
                self.percent = self.bytes_transferred as f64 / self.total_bytes as f64 * 100.0
            }
            None => {}
        }
    }
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ProgressUpdate {
    pub stage: Option<String>,
    pub status: Option<String>,
    pub bytes_transferred: Option<i64>,
    pub total_bytes: Option<i64>,
    pub throughput_bps: Option<f64>,
    pub percent: Option<f64>,
    pub disk_id: Option<String>,
    pub sync_type: Option<String>,
    pub error_message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-10-03T14:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn running(rate: Rate) -> Mode {
        Mode::Running(Ramp { start_percent: Some(30.0), rate, ..Ramp::default() })
    }

    #[test]
    fn ramp_per_poll_moves_and_completes_at_100() {
        let mut job = Job::new("j", vec![], running(Rate::PerPoll(35.0)), vec![], t0());
        assert_eq!(job.percent, 30.0);
        job.on_poll(t0());
        assert_eq!(job.percent, 30.0);
        job.on_poll(t0());
        assert_eq!(job.percent, 65.0);
        job.on_poll(t0());
        assert_eq!(job.status, "completed");
        assert_eq!(job.bytes_transferred, job.total_bytes);
    }

    #[test]
    fn counted_and_timed_transitions() {
        let t = vec![Transition { trigger: Trigger::AfterPolls(2), to: Mode::Completed }];
        let mut job = Job::new("j", vec![], running(Rate::None), t, t0());
        job.on_poll(t0());
        job.on_poll(t0());
        assert_eq!(job.mode, running(Rate::None));
        job.on_poll(t0());
        assert_eq!(job.mode, Mode::Completed);

        let t = vec![Transition { trigger: Trigger::AfterMillis(2000), to: Mode::NotFound }];
        let mut job = Job::new("j", vec![], running(Rate::None), t, t0());
        job.on_poll(t0() + chrono::Duration::milliseconds(1999));
        assert_eq!(job.mode.name(), "running");
        job.on_poll(t0() + chrono::Duration::milliseconds(2000));
        assert_eq!(job.mode, Mode::NotFound);
    }

    #[test]
    fn multi_disk_reports_completed_after_each_disk_then_starts_the_next() {
        let disks = Disks {
            sizes: vec![100, 200, 300],
            rate: Rate::PerPoll(50.0),
            pause: Trigger::AfterPolls(2),
            disk_progresses: false,
        };
        let mut job = Job::new("j", vec![], Mode::MultiDisk(disks), vec![], t0());
        let mut seen = Vec::new();
        for _ in 0..14 {
            job.on_poll(t0());
            seen.push((job.disk_index, job.status.clone(), job.percent, job.bytes_transferred, job.total_bytes));
        }
        let s = |i: usize| (seen[i].0, seen[i].1.as_str(), seen[i].2, seen[i].3, seen[i].4);
        assert_eq!(s(0), (0, "in_progress", 50.0, 50, 100));
        assert_eq!(s(1), (0, "completed", 100.0, 100, 100), "the premature completion, after disk 1");
        assert_eq!(s(2), (0, "completed", 100.0, 100, 100));
        assert_eq!(s(3), (0, "completed", 100.0, 100, 100));
        assert_eq!(s(4), (1, "in_progress", 0.0, 0, 200), "disk 2 starts at 0 after the pause");
        assert_eq!(s(6), (1, "completed", 100.0, 200, 200));
        assert_eq!(s(10), (2, "in_progress", 50.0, 150, 300));
        assert_eq!(s(11), (2, "completed", 100.0, 300, 300));
        assert_eq!(s(13), (2, "completed", 100.0, 300, 300), "done for good after the last disk");
    }

    /// With a rate per second the disks move while nobody polls: a poll after a long gap finds the
    /// copy where the time says, whichever disk that is.
    #[test]
    fn a_time_driven_multi_disk_job_moves_without_polls() {
        let disks = Disks {
            sizes: vec![100, 200, 300],
            rate: Rate::PerSecond(50.0), // 2 s a disk
            pause: Trigger::AfterMillis(500),
            disk_progresses: false,
        };
        let mut job = Job::new("j", vec![], Mode::MultiDisk(disks), vec![], t0());
        let mut at = |ms: i64| {
            job.on_poll(t0() + chrono::Duration::milliseconds(ms));
            (job.disk_index, job.status.clone(), job.percent, job.bytes_transferred, job.total_bytes)
        };
        let s = |x: &(usize, String, f64, i64, i64)| (x.0, x.1.clone(), x.2, x.3, x.4);
        assert_eq!(s(&at(1000)), (0, "in_progress".into(), 50.0, 50, 100));
        assert_eq!(s(&at(2200)), (0, "completed".into(), 100.0, 100, 100), "disk 1 done, in the pause");
        assert_eq!(s(&at(3500)), (1, "in_progress".into(), 50.0, 100, 200), "disk 2 half way");
        assert_eq!(s(&at(6500)), (2, "in_progress".into(), 75.0, 225, 300), "disk 3, disk 2's end missed");
        assert_eq!(s(&at(7000)), (2, "completed".into(), 100.0, 300, 300), "the last disk: done");
        assert_eq!(s(&at(60_000)), (2, "completed".into(), 100.0, 300, 300), "done for good");
    }

    #[test]
    fn stale_freezes_progress() {
        let t = vec![Transition { trigger: Trigger::AfterPolls(1), to: Mode::Stale }];
        let mut job = Job::new("j", vec![], running(Rate::PerPoll(5.0)), t, t0());
        job.on_poll(t0());
        let frozen = job.percent;
        for _ in 0..5 {
            job.on_poll(t0());
        }
        assert_eq!(job.percent, frozen);
        assert_eq!(job.status, "in_progress");
    }
}
