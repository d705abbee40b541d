@guide
Feature: Testing guide - Scenario 3: Job completed during OMA downtime (CRITICAL TEST)
  Purpose: verify jobs completed during downtime are properly finalized.

  @guide-3
  Scenario: Job completed during OMA downtime
    Given the OMA API is running
    And a replication job was started through the API
    When the OMA API is stopped
    And the job completes on the VMA
    And the OMA API is started
    Then the logs show "Found 1 active jobs requiring recovery validation"
    And the logs show "Processing job: {job}"
    And the logs show "Got VMA response via NBD export name"
    And the logs show "Recovery decision for job {job}: VMA status=completed"
    And the logs show "Job {job} completed on VMA (100.0%) - finalizing"
    And the logs show "Job {job} marked as completed"
    And the recovery summary shows "Completed: 1"
    And the logs show "Job recovery summary by outcome outcomes={"completed": 1}"
    And the job is "completed"
    And the job's progress_percent is 100.0
    And the job's current_operation is "Completed"
    And the job's completed_at is set
    And the VM context is "ready_for_failover"
    And no polling was started for the job
