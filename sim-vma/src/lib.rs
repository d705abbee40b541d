//! sim-vma: a faithful, scriptable fake of the VMA agent (SPEC §3, §5).
//!
//! The VMA API speaks the real wire format ([`model`]); a control API ([`control`]) sets per-job
//! modes and transitions ([`spec`]), global faults and restarts; a bounded [`journal`] keeps
//! per-job stats; [`scenario`] files script it all. Every random choice comes from one seed.

pub mod client;
pub mod control;
pub mod faults;
mod hot;
pub mod journal;
mod listener;
pub mod model;
mod replies;
pub mod scenario;
pub mod spec;
pub mod state;
mod vma_routes;
pub mod wire;

pub use client::ControlClient;
pub use listener::{SimConfig, SimVma};
pub use state::SimState;
