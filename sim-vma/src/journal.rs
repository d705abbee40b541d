//! A bounded ring of requests and per-job counters: polls, first/last poll, minimum gap between
//! polls and the most requests in flight at once. The suite proves "exactly one poller" with it.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub const DEFAULT_CAPACITY: usize = 10_000;
/// Stats are kept for at most this many distinct job ids (unknown ids beyond it are not tracked).
pub const MAX_TRACKED_JOBS: usize = 100_000;

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub method: Cow<'static, str>,
    pub path: String,
    /// The job the request resolved to (by id or export name), if any.
    pub job: Option<String>,
    pub outcome: &'static str,
    pub status: u16,
    pub latency_ms: f64,
    /// Who asked: the request's `User-Agent` (the OMA sends `oma/<version> (<instance id>)`), so
    /// polls of one job by two OMAs can be told apart.
    pub client: Option<std::sync::Arc<str>>,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct JobStats {
    pub polls: u64,
    pub first_poll_at: Option<DateTime<Utc>>,
    pub last_poll_at: Option<DateTime<Utc>>,
    /// Smallest time between the starts of two consecutive polls.
    pub min_gap_ms: Option<f64>,
    pub in_flight: u32,
    pub max_in_flight: u32,
    pub outcomes: HashMap<String, u64>,
}

#[derive(Debug)]
pub struct Journal {
    capacity: usize,
    entries: VecDeque<Entry>,
    next_seq: u64,
    stats: HashMap<String, JobStats>,
}

impl Journal {
    pub fn new(capacity: usize) -> Journal {
        Journal {
            capacity: capacity.max(1),
            entries: VecDeque::with_capacity(capacity.min(65_536)),
            next_seq: 0,
            stats: HashMap::new(),
        }
    }

    fn stats_mut(&mut self, job: &str) -> Option<&mut JobStats> {
        if !self.stats.contains_key(job) {
            if self.stats.len() >= MAX_TRACKED_JOBS {
                return None;
            }
            self.stats.insert(job.to_string(), JobStats::default());
        }
        self.stats.get_mut(job)
    }

    /// A poll of `job` starts.
    pub fn poll_started(&mut self, job: &str, at: DateTime<Utc>) {
        let Some(s) = self.stats_mut(job) else { return };
        if let Some(last) = s.last_poll_at {
            let gap = (at - last).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
            s.min_gap_ms = Some(s.min_gap_ms.map_or(gap, |m| m.min(gap)));
        }
        s.polls += 1;
        s.first_poll_at.get_or_insert(at);
        s.last_poll_at = Some(at);
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
    }

    /// A poll of `job` ends with `outcome`.
    pub fn poll_finished(&mut self, job: &str, outcome: &str) {
        if let Some(s) = self.stats.get_mut(job) {
            s.in_flight = s.in_flight.saturating_sub(1);
            match s.outcomes.get_mut(outcome) {
                Some(n) => *n += 1,
                None => {
                    s.outcomes.insert(outcome.to_string(), 1);
                }
            }
        }
    }

    /// Append an entry (its `seq` is assigned here), dropping the oldest when full.
    pub fn record(&mut self, mut entry: Entry) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        entry.seq = self.next_seq;
        self.entries.push_back(entry);
        self.next_seq += 1;
    }

    pub fn entries(&self, job: Option<&str>, limit: usize) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .entries
            .iter()
            .rev()
            .filter(|e| job.is_none() || e.job.as_deref() == job)
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub fn stats(&self, job: &str) -> Option<JobStats> {
        self.stats.get(job).cloned()
    }

    pub fn total_recorded(&self) -> u64 {
        self.next_seq
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn forget_job(&mut self, job: &str) {
        self.stats.remove(job);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.stats.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            seq: 0,
            at: Utc::now(),
            method: "GET".into(),
            path: path.into(),
            job: None,
            outcome: "ok",
            status: 200,
            latency_ms: 0.1,
            client: None,
        }
    }

    #[test]
    fn ring_is_bounded() {
        let mut j = Journal::new(3);
        for i in 0..10 {
            j.record(entry(&format!("/p/{i}")));
        }
        assert_eq!(j.len(), 3);
        assert_eq!(j.total_recorded(), 10);
        assert_eq!(j.entries(None, 10)[0].path, "/p/7");
    }

    #[test]
    fn overlapping_polls_are_seen() {
        let mut j = Journal::new(10);
        let t = Utc::now();
        j.poll_started("a", t);
        j.poll_started("a", t + chrono::Duration::milliseconds(3));
        j.poll_finished("a", "running");
        j.poll_finished("a", "running");
        let s = j.stats("a").unwrap();
        assert_eq!(s.max_in_flight, 2);
        assert_eq!(s.polls, 2);
        assert_eq!(s.min_gap_ms, Some(3.0));
    }
}
