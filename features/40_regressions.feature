@regression
Feature: Regressions - defects of the original OMA (reference §10) that this OMA must not have

  Scenario: Defect 4 - a recent job with the VMA down keeps being polled and resumes when it returns
    Given a replicating job at 40% last updated 5 minutes ago
    And the VMA is running the job at 45%
    And the VMA is unreachable by blackhole
    When the OMA API is started
    Then the logs show "leaving for retry"
    When the VMA is started again
    Then the job's progress reaches 45%
    And the job stays "replicating"

  Scenario Outline: Defect 14 - VMA phase "<phase>" keeps the job replicating
    Given a replicating job at 30% last updated 1 minutes ago
    And the VMA is running the job in phase "<phase>" at <percent>%
    When the OMA API is started
    Then the logs show "Job {job} still running on VMA"
    And the job's progress is written again within 5 seconds
    And the job's vma_current_phase is "<phase>"
    And the job stays "replicating"

    Examples:
      | phase             | percent |
      | Initializing      | 5       |
      | Creating Snapshot | 15      |
      | Discover          | 0       |
      | Transfer          | 0       |

  Scenario: Defect 27 - progress never goes back when the VMA reports a setup phase percentage
    Given a replicating job at 30% last updated 1 minutes ago
    And the VMA is running the job in phase "Creating Snapshot" at 10%
    When the OMA API is started
    Then the job's progress is written again within 5 seconds
    And the job's progress_percent is 30

  Scenario: Defect 17 - an export name carrying another job's progress is not trusted
    Given a replicating job at 30% last updated 1 minutes ago
    And the VMA knows the job only by its id, running at 35%
    And the VMA reports an older job completed under the job's export names
    When the OMA API is started
    Then the logs show "Got VMA response via job ID for {job}"
    And the job stays "replicating"
    And the job's progress reaches 35%

  Scenario: Defect 19 - the recovery summary counts not-found outcomes
    Given a replicating job at 95% last updated 3 minutes ago
    And the VMA does not know the job
    When the OMA API is started
    Then the recovery summary shows "Not found (assumed completed): 1"
    And the recovery summary shows "Completed: 1"

  Scenario: Defect 20 - /health answers while recovery is still waiting for a slow VMA
    Given a replicating job at 30% last updated 1 minutes ago
    And the VMA answers the job slowly, taking 3000 ms
    When the OMA API is started
    Then the API responds to a health check
    And the health report shows recovery "running"

  Scenario: The OMA can log JSON with the guide's messages intact
    Given the OMA logs in JSON
    When the OMA API is started
    Then the logs show "No active jobs found - system is clean"
    And every log line is JSON

  Scenario: A killed OMA (SIGKILL mid-poll) resumes polling at its next start
    Given the OMA API is running
    And a replication job was started through the API
    And the VMA answers the job slowly, taking 300 ms
    When the OMA API is killed
    And the OMA API is started again
    Then the logs show "Job {job} still running on VMA"
    And the job is polled again within 2 seconds
    And the job stays "replicating"
