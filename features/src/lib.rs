//! Acceptance harness (SPEC §6): MariaDB provisioning ([`mariadb`]), the real `oma-api` as an OS
//! process ([`oma_process`]) and one scenario's world ([`lab`]): fresh database, embedded
//! sim-vma, OMA processes on free ports, seeded jobs, and waits that print what they saw.

pub mod chaos;
pub mod expected_lines;
pub mod gate;
pub mod lab;
pub mod local_lab;
pub mod oma_process;
pub mod play;
pub mod procfs;

pub use lab::Lab;
pub use oma_process::{OmaConfig, OmaProcess};
pub use oma_test_support::{mariadb, SeedJob, TestDatabase};
