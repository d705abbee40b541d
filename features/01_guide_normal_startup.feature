@guide
Feature: Testing guide - Scenario 1: Normal startup with no active jobs (baseline)
  Purpose: verify recovery doesn't break normal startup.

  @guide-1
  Scenario: Normal startup with no active jobs
    Given the VMA is running
    And there are no active jobs in the database
    When the OMA API is started
    Then the service starts without errors
    And the logs show "Starting intelligent job recovery with VMA validation on OMA startup"
    And the logs show "No active jobs found - system is clean"
    And the logs show "Job recovery completed successfully"
    And the logs show "OMA API server started successfully"
    And the logs show "Health monitor started"
    And the API responds to a health check
    And the OMA uses under 0.1 of a CPU core while idle
