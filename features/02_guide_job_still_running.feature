@guide
Feature: Testing guide - Scenario 2: Job still running on VMA (CRITICAL TEST)
  Purpose: verify polling automatically restarts for jobs running on the VMA.

  @guide-2
  Scenario: Job still running on VMA
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the OMA API is stopped
    Then the job is still running on the VMA
    And the logs do not show "were not written"
    When the OMA API is started
    Then the logs show "Found 1 active jobs requiring recovery validation"
    And the logs show "Processing job: {job}"
    And the logs show "Checking VMA status for job {job}"
    And the logs show "Found 1 NBD export names for job {job}, trying progress API"
    And the logs show "Got VMA response via NBD export name migration-vol-"
    And the logs show "Recovery decision for job {job}: VMA status=running"
    And the logs show "Job {job} still running on VMA"
    And the logs show "Successfully restarted VMA progress polling for job {job}"
    And the recovery summary shows "Total processed: 1"
    And the recovery summary shows "Still running (polling restarted): 1"
    And the logs do not show "VMA services not available"
    And the recovery metadata shows method "vma_validated"
    And the recovery metadata shows polling restarted
    And vma_last_poll_at updates every poll interval
    And progress continues from where it left off
    And the job is polled by exactly one poller
    And the job completes successfully
