//! The benchmarks of `oma-bench` (docs/PERFORMANCE.md): the OMA at scale on the real parts
//! ([`scale`]: recovery, resume, steady polling, a database outage) and sim-vma against wiremock
//! under load ([`loadgen`]). They print figures; tests check that they run, never their timings.

pub mod loadgen;
pub mod scale;
