//! Test support shared by oma's own database tests and the acceptance harness: a MariaDB server
//! ([`mariadb`]), a fresh database per test ([`TestDatabase`]), jobs seeded as a previous OMA left
//! them ([`seed`]) and waiting for a condition ([`wait_until`]). It does not depend on `oma`: the
//! caller passes the migrations, and seeding is plain SQL against the schema.

pub mod database;
pub mod mariadb;
pub mod owner;
pub mod ports;
pub mod reaper;
pub mod seed;
pub mod wait;

pub use database::TestDatabase;
pub use ports::free_port;
pub use seed::{seed_job, seed_jobs_bulk, SeedJob};
pub use wait::wait_until;
