//! Prometheus metrics: recoveries by outcome, polls by result, pollers active and paused,
//! orphans re-attached, drift between the database and polling.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    recoveries: Family<Labels, Counter>,
    polls: Family<Labels, Counter>,
    pub pollers_active: Gauge,
    pub polling_paused: Gauge,
    pub orphans_reattached: Counter,
    pub drift: Gauge,
    finalizations: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("oma");
        let recoveries = Family::<Labels, Counter>::default();
        let polls = Family::<Labels, Counter>::default();
        let pollers_active = Gauge::default();
        let polling_paused = Gauge::default();
        let orphans_reattached = Counter::default();
        let drift = Gauge::default();
        let finalizations = Family::<Labels, Counter>::default();
        registry.register("recoveries", "Recovery decisions applied, by outcome", recoveries.clone());
        registry.register("vma_polls", "VMA progress polls, by result", polls.clone());
        registry.register("pollers_active", "Jobs this process is polling", pollers_active.clone());
        registry.register(
            "polling_paused",
            "Tracked jobs not polled because their lease could not be renewed in time",
            polling_paused.clone(),
        );
        registry.register(
            "orphans_reattached",
            "Unpolled jobs the health monitor re-attached",
            orphans_reattached.clone(),
        );
        registry.register(
            "polling_drift",
            "Unfinished jobs no live poller owned at the last health check",
            drift.clone(),
        );
        registry.register("job_finalizations", "Jobs finalized, by final status", finalizations.clone());
        Metrics {
            registry,
            recoveries,
            polls,
            pollers_active,
            polling_paused,
            orphans_reattached,
            drift,
            finalizations,
        }
    }

    /// Put `outcome` on the page at 0, so a scraper (and a test) sees the family before the first
    /// recovery: an absent metric and a zero count are not the same answer.
    pub fn declare_recovery(&self, outcome: &'static str) {
        let _ = self.recoveries.get_or_create(&vec![("outcome", outcome)]);
    }

    pub fn declare_finalization(&self, status: &'static str) {
        let _ = self.finalizations.get_or_create(&vec![("status", status)]);
    }

    pub fn recovery(&self, outcome: &'static str) {
        self.recoveries.get_or_create(&vec![("outcome", outcome)]).inc();
    }

    pub fn poll(&self, result: &'static str) {
        self.polls.get_or_create(&vec![("result", result)]).inc();
    }

    pub fn finalized(&self, status: &'static str) {
        self.finalizations.get_or_create(&vec![("status", status)]).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
