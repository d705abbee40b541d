@rollback
Feature: Testing guide - rollback procedure ("Rollback Time: < 2 minutes")
  The previous build is OMA_PREVIOUS_BUILD, a command like OMA_UNDER_TEST (QC points it at the
  last release's binary); unset, the build under test stands in for it. Migrations only add, so
  the previous build runs on the schema the build under test migrated.

  Scenario: Rolling back keeps running jobs polled, and rolling forward again finishes them
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the OMA is rolled back to the previous build
    Then the rollback took under 120 seconds
    And the job is polled again within 5 seconds
    And progress continues from where it left off
    And the job stays "replicating"
    When the build under test is deployed again
    Then the job is polled again within 5 seconds
    And the job is polled by exactly one poller
    And the job completes successfully
    And the VM context allows new operations
