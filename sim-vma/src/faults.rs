//! The fault plan's draws, pure: given the configured faults and the seeded RNG, what happens to
//! one accepted connection (blackhole, reset) or one request (hang after headers, an error status,
//! latency). Each configured fault draws in a fixed order, so a seed replays the same faults.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::RngExt;

use crate::spec::{Faults, UnreachableMode};

/// What the fault plan decided for one request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    pub unreachable: Option<UnreachableMode>,
    pub error_status: Option<u16>,
    pub latency: Option<Duration>,
    /// Answer with garbage (a 200 whose body is not the VMA's).
    pub garbage: bool,
}

/// Blackhole and reset act on whole connections: decided once per accepted connection.
pub fn is_connection_fault(mode: UnreachableMode) -> bool {
    matches!(mode, UnreachableMode::Blackhole | UnreachableMode::Reset)
}

/// Draw the connection-level decision for a newly accepted connection.
pub fn decide_connection_fault(faults: &Faults, rng: &mut StdRng) -> Option<UnreachableMode> {
    match faults.unreachable {
        Some((mode, p)) if is_connection_fault(mode) && rng.random::<f64>() < p => Some(mode),
        _ => None,
    }
}

/// Draw one request's decision. Each configured fault draws from the RNG in a fixed order, so
/// the same seed and the same faults give the same sequence of decisions.
pub fn decide_faults(faults: &Faults, rng: &mut StdRng) -> FaultDecision {
    let mut d = FaultDecision::default();
    if let Some((mode, p)) = faults.unreachable {
        if mode == UnreachableMode::HangAfterHeaders && rng.random::<f64>() < p {
            d.unreachable = Some(mode);
        }
    }
    if let Some((status, p)) = faults.error_rate {
        if rng.random::<f64>() < p {
            d.error_status = Some(status);
        }
    }
    if let Some(p) = faults.garbage {
        d.garbage = rng.random::<f64>() < p;
    }
    if let Some((base, jitter, p)) = faults.latency {
        if rng.random::<f64>() < p {
            let extra = if jitter.is_zero() { 0 } else { rng.random_range(0..=jitter.as_micros() as u64) };
            d.latency = Some(base + Duration::from_micros(extra));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::FaultSpec;
    use rand::SeedableRng;

    #[test]
    fn the_same_seed_gives_the_same_fault_decisions() {
        let faults = FaultSpec {
            unreachable: Some(crate::spec::UnreachableSpec {
                mode: UnreachableMode::HangAfterHeaders,
                probability: Some(0.3),
            }),
            latency: Some(crate::spec::LatencySpec {
                base: "10ms".into(),
                jitter: Some("20ms".into()),
                probability: Some(0.5),
            }),
            error_rate: Some(crate::spec::ErrorRateSpec { status: Some(503), probability: 0.2 }),
            garbage: None,
            for_duration: None,
        }
        .compile()
        .unwrap();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..500).map(|_| decide_faults(&faults, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let decisions = run(42);
        let resets = decisions.iter().filter(|d| d.unreachable.is_some()).count();
        assert!((100..200).contains(&resets), "about 30% of 500: {resets}");
    }
}
