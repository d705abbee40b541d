@job-sheet
Feature: Job sheet - VMA-validated recovery and active job detection (tasks 1.1 - 1.4, 3.1)
  Recovery asks the VMA before deciding, uses NBD export names first, restarts polling for
  running jobs in every active state, and respects the setup-status grace periods.

  Scenario: NBD export names are the primary lookup method
    Given a replicating job at 30% last updated 2 minutes ago
    And the VMA is running the job at 31%
    When the OMA API is started
    Then the logs show "Got VMA response via NBD export name migration-vol-"
    And the logs do not show "Got VMA response via job ID for {job}"
    And the job's vma_current_phase is "Transfer"

  Scenario: The job id is the fallback when the VMA does not know the export names
    Given a replicating job at 30% last updated 2 minutes ago
    And the VMA knows the job only by its id, running at 32%
    When the OMA API is started
    Then the logs show "Got VMA response via job ID for {job}"
    And the job's progress reaches 32%

  Scenario Outline: A job stuck in "<status>" that is running on the VMA is detected and polled
    Given a <status> job at 0% last updated 10 minutes ago
    And the VMA is running the job at 12%
    When the OMA API is started
    Then the logs show "Processing job: {job}"
    And the logs show "Successfully restarted VMA progress polling for job {job}"
    And the job is "replicating"
    And the job's progress is written again within 5 seconds

    Examples:
      | status         |
      | initializing   |
      | analyzing      |
      | provisioning   |
      | attaching      |
      | configuring    |
      | ready_for_sync |
      | replicating    |

  @regression
  Scenario Outline: Defect 3 - a <status> job <minutes> minutes old that the VMA does not know yet is left to finish setting up
    Given a <status> job at 0% last updated <minutes> minutes ago that was never polled
    And the VMA does not know the job
    When the OMA API is started
    Then the logs show "Job {job} not found on VMA yet - within grace period"
    And the job stays "<status>"

    Examples:
      | status         | minutes |
      | initializing   | 4       |
      | ready_for_sync | 1       |
      | attaching      | 4       |

  @regression
  Scenario: Job sheet 2.2 - the grace period holds for an HTTP 200 "job not found" too
    Given an initializing job at 0% last updated 4 minutes ago that was never polled
    And the VMA answers HTTP 200 "job not found" for the job
    When the OMA API is started
    Then the logs show "not found on VMA (HTTP 200 'not found')"
    And the logs show "Job {job} not found on VMA yet - within grace period"
    And the job stays "initializing"
    And the logs do not show "marked as lost"

  @regression
  Scenario Outline: Defect 3 - a <status> job older than its grace that the VMA does not know is marked as lost
    Given a <status> job at 0% last updated <minutes> minutes ago that was never polled
    And the VMA does not know the job
    When the OMA API is started
    Then the job is "failed" with classification "job_lost"

    Examples:
      | status         | minutes |
      | initializing   | 6       |
      | ready_for_sync | 3       |
      | attaching      | 6       |
      | configuring    | 1       |

  Scenario: Recovery metadata columns are filled for every recovered job
    Given a replicating job at 30% last updated 2 minutes ago
    And the VMA is running the job at 31%
    When the OMA API is started
    Then the logs show "Successfully restarted VMA progress polling for job {job}"
    And the recovery metadata shows method "vma_validated"
    And the recovery metadata shows polling restarted
    And the job's recovery_attempted is "true"
