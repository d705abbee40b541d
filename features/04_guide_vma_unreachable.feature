@guide
Feature: Testing guide - Scenario 4: VMA unreachable during recovery
  Purpose: verify graceful handling when the VMA is down. Ages are past timestamps.

  @guide-4-recent
  Scenario: VMA unreachable, recent job (< 30 minutes old)
    Given a replicating job at 40% last updated 10 minutes ago
    And the VMA is stopped
    When the OMA API is started
    Then the logs show "VMA unreachable for job {job}"
    And the logs show "Job {job} - VMA unreachable but job is recent - leaving for retry"
    And the logs show "VMA services not available - job recovery will be limited"
    And the job stays "replicating"
    And the logs do not show "Job {job} marked as failed"

  @guide-4-old
  Scenario: VMA unreachable, old job (> 30 minutes old)
    Given a replicating job at 40% last updated 45 minutes ago
    And the VMA is stopped
    When the OMA API is started
    Then the logs show "VMA unreachable for job {job}"
    And the logs show "Job {job} - VMA unreachable and job is old"
    And the job is "failed" with classification "vma_unreachable_timeout"
    And the job's error message contains "VMA unreachable"
    And the recovery metadata shows method "timeout"
    When the VMA is started again
    Then the VM context allows new operations

  @guide-4-return
  Scenario: System recovers when the VMA comes back online
    Given a replicating job at 40% last updated 10 minutes ago
    And the VMA is running the job at 41%
    And the VMA is stopped
    When the OMA API is started
    Then the logs show "leaving for retry"
    When the VMA is started again
    Then the job is polled again within 5 seconds
    And the job's progress is written again within 5 seconds
    And the job stays "replicating"
    And the job's progress_percent is 41
