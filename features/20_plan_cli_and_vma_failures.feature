@plan
Feature: Plan - manual recovery CLI, VMA restart and a dying copy process

  Scenario: job-recovery scan lists an orphaned job
    Given a replicating job at 40% last updated 45 minutes ago
    When I run "job-recovery scan"
    Then the command exits with 0
    And the command output contains "Found 1 potentially orphaned jobs"
    And the command output contains "Job ID: {job}"
    And the command output contains "Progress: 40.0%"

  Scenario: job-recovery accepts the original flag spelling
    Given a replicating job at 40% last updated 45 minutes ago
    When I run "job-recovery -action=scan -max-age=30"
    Then the command exits with 0
    And the command output contains "Job ID: {job}"
    When I run "job-recovery -action=status"
    Then the command exits with 0
    And the command output contains "Potentially orphaned jobs: 1"
    And the command output contains "Recommended action:"

  Scenario: job-recovery recover --dry-run shows the VMA-validated decision and changes nothing
    Given a replicating job at 40% last updated 45 minutes ago
    And the VMA does not know the job
    When I run "job-recovery recover --dry-run"
    Then the command exits with 0
    And the command output contains "DRY RUN: Would recover orphaned jobs (no changes made)"
    And the command output contains "VMA status=not_found, decision: mark failed (job_lost)"
    And the job stays "replicating"

  @regression
  Scenario: Defect 11 - job-recovery recover asks the VMA and applies the decision
    Given a replicating job at 40% last updated 45 minutes ago
    And the VMA reports the job completed
    When I run "job-recovery -action=recover"
    Then the command exits with 0
    And the command output contains "VMA status=completed, decision: mark completed → completed"
    And the job is "completed"
    And the recovery metadata shows method "manual"
    When the OMA API is started
    Then the VM context allows new operations

  Scenario: job-recovery status as JSON
    Given a replicating job at 40% last updated 45 minutes ago
    When I run "job-recovery status --json"
    Then the command exits with 0
    And the command's JSON field "orphaned_jobs" is 1
    And the command's JSON field "unfinished_jobs" is 1

  Scenario Outline: job-recovery refuses a mistyped VMA address and changes nothing
    Given a replicating job at 40% last updated 45 minutes ago
    When I run "job-recovery recover --vma-api-url <address>"
    Then the command exits with 2
    And the command output contains "VMA_API_URL"
    And the command output contains "<address>"
    And the job stays "replicating"

    Examples:
      | address               |
      | localhost:9081        |
      | http://               |
      | http://vma:99999      |
      | ftp://vma:9081        |

  Scenario: job-recovery says why it cannot reach the database
    Given the database does not accept connections yet
    When I run "job-recovery scan"
    Then the command exits with 1
    And the command output contains "Connection refused"
    And the command output contains "no connection after waiting 5s (job-recovery's wait)"

  Scenario: job-recovery rejects an unknown action with exit code 2
    When I run "job-recovery -action=explode"
    Then the command exits with 2

  Scenario: The VMA restarts and loses every job: a running job is marked lost after the grace period
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the VMA restarts and forgets every job
    Then the logs show "not found on VMA and was <90% complete - marking as lost"
    And the job is "failed" with classification "job_lost"
    And the VM context allows new operations

  @regression
  Scenario: Defect 12 - the copy process dies: frozen progress is detected as a stall while polling
    Given the OMA stall timeout is 1 second
    And the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the VMA's copy process for the job dies
    Then the job is "failed" with classification "vma_stalled"
    And the job's error message contains "stalled"
    And the VM context allows new operations

  @regression
  Scenario: Defect 12 - a job whose copy process died long ago is failed at recovery
    Given a replicating job at 40% last updated 1 minutes ago
    And the VMA's copy process for the job died at 40%
    And the job's bytes match what the VMA reports
    And the job's progress last changed 45 minutes ago
    When the OMA API is started
    Then the job is "failed" with classification "vma_stalled"
    When I GET "/api/v1/vm-contexts/ctx-vm-{job}/recent-jobs"
    Then the response field "jobs/0/error_message" is "Replication stopped making progress"
