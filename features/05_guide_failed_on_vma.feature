@guide
Feature: Testing guide - Scenario 5: Job failed on VMA
  Purpose: verify VMA-reported failures are properly handled.

  @guide-5
  Scenario: Job failed on VMA
    Given a replicating job at 40% last updated 2 minutes ago
    And the VMA reports the job failed with "NBD connection refused by target"
    When the OMA API is restarted
    Then the logs show "VMA reports job failed: NBD connection refused by target"
    And the logs show "Recovery decision for job {job}: VMA status=failed"
    And the logs show "Job {job} failed on VMA - marking as failed with VMA error"
    And the job is "failed" with classification "vma_reported_failure"
    And the job's error_message is "NBD connection refused by target"
    And the job's vma_error_classification is "vma_reported_failure"
    And the VM context allows new operations
