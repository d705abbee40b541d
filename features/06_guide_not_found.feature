@guide
Feature: Testing guide - Scenario 6: Job not found on VMA
  Purpose: verify intelligent handling when a job disappears from the VMA.

  @guide-6A
  Scenario: Test 6A - high progress job (> 90%) is assumed completed
    Given a replicating job at 95% last updated 3 minutes ago
    And the VMA does not know the job
    When the OMA API is restarted
    Then the logs show "not found on VMA"
    And the logs show "Job {job} not found on VMA (404) - likely completed or lost"
    And the logs show "Job {job} not found on VMA but was >90% complete - assuming completed"
    And the job is "completed"
    And the job's progress_percent is 100
    And the VM context is "ready_for_failover"

  @guide-6B
  Scenario: Test 6B - low progress job (< 90%) is marked as lost
    Given a replicating job at 45% last updated 3 minutes ago
    And the VMA does not know the job
    When the OMA API is restarted
    Then the logs show "not found on VMA"
    And the logs show "Job {job} not found on VMA (404) - likely completed or lost"
    And the logs show "Job {job} not found on VMA and was <90% complete - marking as lost"
    And the job is "failed" with classification "job_lost"
    And the VM context allows new operations
