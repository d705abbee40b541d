//! Domain vocabulary: job statuses, replication types, failure classes and recovery methods.
//! Their strings live here only: code compares the enums, SQL text gets them from `as_str`.

use std::time::Duration;

use sqlx::error::BoxDynError;
use sqlx::mysql::{MySql, MySqlTypeInfo, MySqlValueRef};

/// Every status a replication job can have. Unknown strings are rejected at the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Pending,
    Initializing,
    Analyzing,
    Provisioning,
    Attaching,
    Configuring,
    ReadyForSync,
    Replicating,
    Completed,
    Failed,
    ReplicationFailed,
    Cancelled,
}

/// Statuses of an unfinished job: recovery, polling and the health monitor look at these.
pub const ACTIVE_STATUSES: [JobStatus; 7] = [
    JobStatus::Initializing,
    JobStatus::Analyzing,
    JobStatus::Provisioning,
    JobStatus::Attaching,
    JobStatus::Configuring,
    JobStatus::ReadyForSync,
    JobStatus::Replicating,
];

/// Terminal statuses are absorbing: no code path moves a job out of one.
pub const TERMINAL_STATUSES: [JobStatus; 4] =
    [JobStatus::Completed, JobStatus::Failed, JobStatus::ReplicationFailed, JobStatus::Cancelled];

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Initializing => "initializing",
            JobStatus::Analyzing => "analyzing",
            JobStatus::Provisioning => "provisioning",
            JobStatus::Attaching => "attaching",
            JobStatus::Configuring => "configuring",
            JobStatus::ReadyForSync => "ready_for_sync",
            JobStatus::Replicating => "replicating",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::ReplicationFailed => "replication_failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        [JobStatus::Pending]
            .into_iter()
            .chain(ACTIVE_STATUSES)
            .chain(TERMINAL_STATUSES)
            .find(|status| status.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        TERMINAL_STATUSES.contains(&self)
    }

    /// Setup statuses that legitimately wait before the VMA knows the job (job sheet task 1.4.3).
    pub fn setup_grace(self) -> Option<Duration> {
        match self {
            JobStatus::Initializing | JobStatus::Attaching => Some(Duration::from_secs(5 * 60)),
            JobStatus::ReadyForSync => Some(Duration::from_secs(2 * 60)),
            _ => None,
        }
    }
}

/// `'failed','replication_failed'` for the statuses of a failed job (VM context counters).
pub fn failed_status_sql_list() -> String {
    [JobStatus::Failed, JobStatus::ReplicationFailed]
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Read from a `VARCHAR` column: a string that is not a status is an error naming it.
impl sqlx::Type<MySql> for JobStatus {
    fn type_info() -> MySqlTypeInfo {
        <str as sqlx::Type<MySql>>::type_info()
    }

    fn compatible(ty: &MySqlTypeInfo) -> bool {
        <str as sqlx::Type<MySql>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, MySql> for JobStatus {
    fn decode(value: MySqlValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as sqlx::Decode<MySql>>::decode(value)?;
        JobStatus::parse(text).ok_or_else(|| format!("{text:?} is not a job status").into())
    }
}

impl serde::Serialize for JobStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `'initializing','analyzing',…` for `status IN (…)` clauses. Constant text, never user input.
pub fn active_status_sql_list() -> String {
    ACTIVE_STATUSES.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(",")
}

/// `replication_jobs.replication_type`: a full copy or changed blocks only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationType {
    Initial,
    Incremental,
}

impl ReplicationType {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationType::Initial => "initial",
            ReplicationType::Incremental => "incremental",
        }
    }

    pub fn parse(s: &str) -> Option<ReplicationType> {
        [ReplicationType::Initial, ReplicationType::Incremental].into_iter().find(|t| t.as_str() == s)
    }
}

impl<'de> serde::Deserialize<'de> for ReplicationType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ReplicationType::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("replication_type must be initial or incremental, not {text:?}"))
        })
    }
}

impl serde::Serialize for ReplicationType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl sqlx::Type<MySql> for ReplicationType {
    fn type_info() -> MySqlTypeInfo {
        <str as sqlx::Type<MySql>>::type_info()
    }

    fn compatible(ty: &MySqlTypeInfo) -> bool {
        <str as sqlx::Type<MySql>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, MySql> for ReplicationType {
    fn decode(value: MySqlValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as sqlx::Decode<MySql>>::decode(value)?;
        ReplicationType::parse(text).ok_or_else(|| format!("{text:?} is not a replication type").into())
    }
}

/// Why a job was failed: stored in `vma_error_classification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    VmaReportedFailure,
    JobLost,
    VmaUnreachableTimeout,
    VmaStalled,
    ReplicateRejected,
}

impl FailureClass {
    pub const ALL: [FailureClass; 5] = [
        FailureClass::VmaReportedFailure,
        FailureClass::JobLost,
        FailureClass::VmaUnreachableTimeout,
        FailureClass::VmaStalled,
        FailureClass::ReplicateRejected,
    ];

    pub fn parse(s: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::VmaReportedFailure => "vma_reported_failure",
            FailureClass::JobLost => "job_lost",
            FailureClass::VmaUnreachableTimeout => "vma_unreachable_timeout",
            FailureClass::VmaStalled => "vma_stalled",
            FailureClass::ReplicateRejected => "replicate_rejected",
        }
    }
}

/// How a recovery decision was reached: stored in `recovery_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMethod {
    /// The VMA answered and the decision followed its answer.
    VmaValidated,
    /// The VMA did not answer and the decision followed the job's age.
    Timeout,
    /// An operator asked for it (CLI `recover` or `POST /api/v1/job-recovery/trigger`).
    Manual,
}

impl RecoveryMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryMethod::VmaValidated => "vma_validated",
            RecoveryMethod::Timeout => "timeout",
            RecoveryMethod::Manual => "manual",
        }
    }
}

/// NBD export name of a volume, as the VMA knows it.
pub fn nbd_export_name(volume_id: &str) -> String {
    format!("migration-vol-{volume_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_string() {
        for status in ACTIVE_STATUSES.into_iter().chain(TERMINAL_STATUSES) {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("Replicating"), None);
    }

    #[test]
    fn active_and_terminal_are_disjoint() {
        for status in ACTIVE_STATUSES {
            assert!(!status.is_terminal(), "{status}");
        }
        assert_eq!(
            active_status_sql_list(),
            "'initializing','analyzing','provisioning','attaching','configuring','ready_for_sync','replicating'"
        );
    }
}
