//! A chaos run's plan, drawn from one seed: the jobs (seeded as a previous OMA left them, or created
//! through the API) with what the VMA will do with each, and the timed events (faults, restarts,
//! kills, outages). A schedule is data: it is written to a file that `--replay` runs again
//! exactly, and shrinking drops events from it.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// What the VMA does with one job over its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "script", rename_all = "snake_case")]
pub enum VmaScript {
    /// Progress moves along, then the job completes after `after_ms`.
    Completes { after_ms: u64 },
    /// The copy fails after `after_ms` (the VMA reports `failed`).
    Fails { after_ms: u64 },
    /// Near `percent` (moving slowly, staying on its side of 90 %), then unknown to the VMA (404,
    /// or HTTP 200 "job not found") after `after_ms`: above 90 % the OMA assumes it completed,
    /// else it is lost.
    Vanishes { percent: f64, after_ms: u64, http200: bool },
    /// The copy process dies after `after_ms`: the VMA keeps answering with frozen progress.
    Stalls { after_ms: u64 },
    /// Still running when the run ends.
    RunsOn,
}

/// How a job comes to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// In the database before any OMA starts, as a previous OMA left it (its polling row is a dead
    /// OMA's), and on the VMA.
    Seeded,
    /// `POST /api/v1/replications` at `at_ms`.
    Api,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPlan {
    /// `chaos-<n>`: the VM's name; a seeded job's id too.
    pub name: String,
    pub origin: Origin,
    /// When it is created (API jobs; 0 for seeded ones).
    pub at_ms: u64,
    /// Starting progress on the VMA.
    pub start_percent: f64,
    pub vma: VmaScript,
    /// A job with several disks (`--multi-disk`, a `completes` script only): each disk's
    /// capacity in bytes, in copy order. The VMA copies them one after another, answering
    /// `completed` after each for [`DISK_PAUSE_MS`]; the last one ends at the script's `after_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<i64>>,
}

/// How long the VMA answers `completed` between one disk of a multi-disk job and the next: two
/// poll intervals, so an OMA sees the pause, and far below the stall window.
pub const DISK_PAUSE_MS: u64 = 200;
/// The shortest time a disk of a generated multi-disk job takes to copy.
const MIN_DISK_MS: u64 = 300;

impl JobPlan {
    /// How long each disk of a multi-disk job takes to copy (the pauses between them aside).
    pub fn disk_ms(&self) -> Option<f64> {
        let (Some(disks), VmaScript::Completes { after_ms }) = (&self.disks, &self.vma) else { return None };
        let n = disks.len() as u64;
        Some(after_ms.saturating_sub((n - 1) * DISK_PAUSE_MS) as f64 / n as f64)
    }
}

/// A fault of the VMA as a whole, for `for_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmaFault {
    Refused,
    Reset,
    Blackhole,
    HangAfterHeaders,
    ServerErrors,
    Garbage,
    Slow,
}

pub const VMA_FAULTS: [VmaFault; 7] = [
    VmaFault::Refused,
    VmaFault::Reset,
    VmaFault::Blackhole,
    VmaFault::HangAfterHeaders,
    VmaFault::ServerErrors,
    VmaFault::Garbage,
    VmaFault::Slow,
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The VMA misbehaves for every job.
    VmaFault { fault: VmaFault, for_ms: u64 },
    /// The VMA restarts and forgets every job; it refuses connections for `down_ms`.
    VmaRestart { down_ms: u64 },
    /// SIGTERM to OMA `oma` (a clean stop: polls drained, leases handed over).
    OmaStop { oma: usize },
    /// SIGKILL to OMA `oma`.
    OmaKill { oma: usize },
    /// Start OMA `oma` again if it is down; `new_port`: on another port (another instance id).
    OmaStart { oma: usize, new_port: bool },
    /// MariaDB is killed (-9) and started again on the same data directory after `down_ms`.
    DbKill { down_ms: u64 },
    /// Every connection of the OMAs to the database is killed (`KILL`), the server stays up.
    DbKillConnections,
    /// OMA `oma` is cut off from the database for `for_ms` (the gate in front of it cuts its
    /// connections and refuses new ones); the other OMA keeps its database.
    DbPartition { oma: usize, for_ms: u64 },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::VmaFault { .. } => "vma_fault",
            Event::VmaRestart { .. } => "vma_restart",
            Event::OmaStop { .. } => "oma_stop",
            Event::OmaKill { .. } => "oma_kill",
            Event::OmaStart { .. } => "oma_start",
            Event::DbKill { .. } => "db_kill",
            Event::DbKillConnections => "db_kill_connections",
            Event::DbPartition { .. } => "db_partition",
        }
    }

    /// How long the disturbance lasts once it has begun.
    pub fn lasts(&self) -> Duration {
        Duration::from_millis(match self {
            Event::VmaFault { for_ms, .. } | Event::DbPartition { for_ms, .. } => *for_ms,
            Event::VmaRestart { down_ms } | Event::DbKill { down_ms } => *down_ms,
            _ => 0,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedEvent {
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// Everything a run does, in order. `--replay FILE` runs one again exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub seed: u64,
    /// OMA processes at the start (1 or 2).
    pub omas: usize,
    /// Events happen in `[0, duration_ms)`; then the run heals and settles.
    pub duration_ms: u64,
    /// MariaDB may be killed (a server of the run's own).
    pub db_kills: bool,
    pub jobs: Vec<JobPlan>,
    pub events: Vec<TimedEvent>,
}

/// What a generated schedule may contain.
#[derive(Debug, Clone)]
pub struct Shape {
    pub jobs: usize,
    pub duration: Duration,
    /// `None`: 1 or 2, drawn from the seed.
    pub omas: Option<usize>,
    pub db_kills: bool,
    /// Events per second of the run, on average.
    pub event_rate: f64,
    /// Half the jobs that complete have 2 to 4 disks of different sizes, copied one after another
    /// (reference §10, defect 13). Off by default, so a seed keeps the schedule it always had.
    pub multi_disk: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            jobs: 12,
            duration: Duration::from_secs(6),
            omas: None,
            db_kills: true,
            event_rate: 1.0,
            multi_disk: false,
        }
    }
}

/// 2 to 4 disks of different sizes (1-64 GiB): the OMA tells a disk by its size.
fn draw_disks(rng: &mut StdRng) -> Vec<i64> {
    let n = rng.random_range(2..=4);
    let mut gib: Vec<i64> = Vec::with_capacity(n);
    while gib.len() < n {
        let g = rng.random_range(1..=64);
        if !gib.contains(&g) {
            gib.push(g);
        }
    }
    gib.into_iter().map(|g| g << 30).collect()
}

impl Schedule {
    /// The schedule of `seed`: the same seed and shape give the same schedule.
    pub fn generate(seed: u64, shape: &Shape) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let omas = shape.omas.unwrap_or_else(|| if rng.random_bool(0.6) { 2 } else { 1 }).clamp(1, 2);
        let duration_ms = shape.duration.as_millis() as u64;
        let mut jobs = Vec::with_capacity(shape.jobs);
        for n in 0..shape.jobs {
            let origin = if rng.random_bool(0.5) { Origin::Seeded } else { Origin::Api };
            let at_ms = match origin {
                Origin::Seeded => 0,
                Origin::Api => rng.random_range(0..duration_ms.max(1)),
            };
            // Every job's script ends by 1.5 s after the events: the run then settles quickly.
            let life =
                rng.random_range(300..(duration_ms + 3000)).min((duration_ms + 1500).saturating_sub(at_ms)).max(300);
            let vma = match rng.random_range(0..100) {
                0..=24 => VmaScript::Completes { after_ms: life },
                25..=36 => VmaScript::Fails { after_ms: life },
                37..=56 => VmaScript::Vanishes {
                    // Well away from the 90 % threshold: which side of it the job was on is clear.
                    percent: if rng.random_bool(0.5) { rng.random_range(20.0..80.0_f64).round() } else { 97.0 },
                    after_ms: life,
                    http200: rng.random_bool(0.3),
                },
                57..=66 => VmaScript::Stalls { after_ms: life },
                _ => VmaScript::RunsOn,
            };
            let mut start_percent = match &vma {
                VmaScript::Vanishes { percent, .. } => *percent,
                _ => rng.random_range(0.0..60.0_f64).round(),
            };
            let mut vma = vma;
            let mut disks = None;
            if let VmaScript::Completes { after_ms } = vma {
                if shape.multi_disk && rng.random_bool(0.5) {
                    let sizes = draw_disks(&mut rng);
                    let n = sizes.len() as u64;
                    // Every disk takes its time: such a job may end up to 2.1 s after the events.
                    let after_ms = after_ms.max(n * MIN_DISK_MS + (n - 1) * DISK_PAUSE_MS);
                    vma = VmaScript::Completes { after_ms };
                    disks = Some(sizes);
                    start_percent = 0.0;
                }
            }
            jobs.push(JobPlan { name: format!("chaos-{n:02}"), origin, at_ms, start_percent, vma, disks });
        }
        let n_events = ((shape.duration.as_secs_f64() * shape.event_rate).round() as usize).max(1);
        let mut events = Vec::with_capacity(n_events);
        for _ in 0..n_events {
            let at_ms = rng.random_range(200..duration_ms.max(201));
            let oma = rng.random_range(0..omas);
            let event = match rng.random_range(0..100) {
                0..=19 => Event::VmaFault {
                    fault: VMA_FAULTS[rng.random_range(0..VMA_FAULTS.len())],
                    for_ms: rng.random_range(300..2500),
                },
                20..=26 => Event::VmaRestart { down_ms: rng.random_range(0..800) },
                27..=36 => Event::OmaStop { oma },
                37..=46 => Event::OmaKill { oma },
                47..=61 => Event::OmaStart { oma, new_port: rng.random_bool(0.3) },
                62..=73 if shape.db_kills => Event::DbKill { down_ms: rng.random_range(500..5000) },
                62..=81 => Event::DbKillConnections,
                _ => Event::DbPartition { oma, for_ms: rng.random_range(500..4000) },
            };
            // A lasting disturbance ends by 1 s after the events' window at the latest.
            let room = (duration_ms + 1000).saturating_sub(at_ms).max(300);
            let event = match event {
                Event::VmaFault { fault, for_ms } => Event::VmaFault { fault, for_ms: for_ms.min(room) },
                Event::DbKill { down_ms } => Event::DbKill { down_ms: down_ms.min(room) },
                Event::DbPartition { oma, for_ms } => Event::DbPartition { oma, for_ms: for_ms.min(room) },
                other => other,
            };
            events.push(TimedEvent { at_ms, event });
        }
        events.sort_by_key(|e| e.at_ms);
        Schedule { seed, omas, duration_ms, db_kills: shape.db_kills, jobs, events }
    }

    /// The schedule as a replay file (TOML).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a schedule serializes")
    }

    /// Read a replay file, naming what is wrong in it.
    pub fn from_toml(text: &str) -> Result<Schedule, String> {
        let schedule: Schedule = toml::from_str(text).map_err(|e| e.to_string())?;
        schedule.validate()?;
        Ok(schedule)
    }

    /// Events and jobs must fit the run: OMA indices below `omas`, times within the run.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=2).contains(&self.omas) {
            return Err(format!("omas = {}: must be 1 or 2", self.omas));
        }
        if self.duration_ms == 0 || self.duration_ms > 24 * 3600 * 1000 {
            return Err(format!("duration_ms = {}: must be more than 0 and at most a day", self.duration_ms));
        }
        for (i, e) in self.events.iter().enumerate() {
            let oma = match &e.event {
                Event::OmaStop { oma } | Event::OmaKill { oma } | Event::OmaStart { oma, .. } => Some(*oma),
                Event::DbPartition { oma, .. } => Some(*oma),
                _ => None,
            };
            if oma.is_some_and(|o| o >= self.omas) {
                return Err(format!("events[{i}]: oma {} but the run has {} OMA(s)", oma.unwrap_or(0), self.omas));
            }
            if e.at_ms > self.duration_ms {
                return Err(format!("events[{i}]: at_ms {} is after duration_ms {}", e.at_ms, self.duration_ms));
            }
            if matches!(e.event, Event::DbKill { .. }) && !self.db_kills {
                return Err(format!("events[{i}]: db_kill, but db_kills = false"));
            }
            if e.event.lasts() > Duration::from_secs(60) {
                return Err(format!("events[{i}]: lasts over a minute"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, j) in self.jobs.iter().enumerate() {
            if !names.insert(&j.name) {
                return Err(format!("jobs[{i}]: name {} twice", j.name));
            }
            if j.name.is_empty() || j.name.len() > 40 || !j.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(format!("jobs[{i}]: name {:?}: 1-40 letters, digits or '-'", j.name));
            }
            if !(0.0..=100.0).contains(&j.start_percent) {
                return Err(format!("jobs[{i}]: start_percent {} is not a percentage", j.start_percent));
            }
            if j.at_ms > self.duration_ms {
                return Err(format!("jobs[{i}]: at_ms {} is after duration_ms {}", j.at_ms, self.duration_ms));
            }
            if let Some(disks) = &j.disks {
                if !(2..=16).contains(&disks.len()) || disks.iter().any(|d| *d <= 0) {
                    return Err(format!("jobs[{i}]: disks must list 2 to 16 sizes of more than 0 bytes"));
                }
                let n = disks.len() as u64;
                match j.vma {
                    VmaScript::Completes { after_ms } if after_ms >= n * 100 + (n - 1) * DISK_PAUSE_MS => {}
                    VmaScript::Completes { .. } => {
                        return Err(format!(
                            "jobs[{i}]: {n} disks need after_ms >= {} (100 ms a disk, {DISK_PAUSE_MS} ms between)",
                            n * 100 + (n - 1) * DISK_PAUSE_MS
                        ))
                    }
                    _ => return Err(format!("jobs[{i}]: disks go with script = \"completes\" only")),
                }
            }
        }
        Ok(())
    }

    /// Events by kind, for reports.
    pub fn events_by_kind(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut out = std::collections::BTreeMap::new();
        for e in &self.events {
            *out.entry(e.event.kind()).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_it_survives_its_file() {
        let shape = Shape::default();
        let a = Schedule::generate(7, &shape);
        assert_eq!(a, Schedule::generate(7, &shape));
        assert_ne!(a, Schedule::generate(8, &shape));
        assert!(a.validate().is_ok());
        let back = Schedule::from_toml(&a.to_toml()).unwrap();
        assert_eq!(back, a);
    }

    /// `--multi-disk` adds disks to some completing jobs; without it a seed's schedule is the one
    /// it always was (the stored failing seeds and the CI seeds keep their meaning).
    #[test]
    fn multi_disk_jobs_only_when_asked_and_they_fit_their_script() {
        let plain = Schedule::generate(42, &Shape::default());
        assert!(plain.jobs.iter().all(|j| j.disks.is_none()));
        assert!(!plain.to_toml().contains("disks"), "a plain schedule's file is unchanged");
        let multi = Schedule::generate(42, &Shape { multi_disk: true, jobs: 40, ..Shape::default() });
        let with: Vec<&JobPlan> = multi.jobs.iter().filter(|j| j.disks.is_some()).collect();
        assert!(!with.is_empty(), "40 jobs and none with disks");
        for j in with {
            let disks = j.disks.as_ref().unwrap();
            let mut sizes = disks.clone();
            sizes.dedup();
            assert_eq!(sizes.len(), disks.len(), "sizes differ: {disks:?}");
            assert!(j.disk_ms().unwrap() >= MIN_DISK_MS as f64, "{j:?}");
        }
        assert_eq!(Schedule::from_toml(&multi.to_toml()).unwrap(), multi);
        let mut bad = multi.clone();
        let i = bad.jobs.iter().position(|j| j.disks.is_some()).unwrap();
        bad.jobs[i].vma = VmaScript::RunsOn;
        assert!(Schedule::from_toml(&bad.to_toml()).unwrap_err().contains("completes"));
        bad.jobs[i].vma = VmaScript::Completes { after_ms: 50 };
        assert!(Schedule::from_toml(&bad.to_toml()).unwrap_err().contains("after_ms"));
    }

    #[test]
    fn a_replay_file_that_does_not_fit_is_refused_with_a_reason() {
        let mut s = Schedule::generate(3, &Shape { omas: Some(1), ..Shape::default() });
        s.events.push(TimedEvent { at_ms: 10, event: Event::OmaKill { oma: 1 } });
        assert!(Schedule::from_toml(&s.to_toml()).unwrap_err().contains("oma 1 but the run has 1"));
        assert!(Schedule::from_toml("seed = 1").is_err());
        assert!(Schedule::from_toml("not toml at all [").is_err());
    }
}
