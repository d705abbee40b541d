@manifest
Feature: Release manifest v2.33.1 - VM freed on failure, sanitized errors, operation summary, migrations

  @regression
  Scenario: Defect 9 and 21 - a failed job clears current_job_id so a new replication is accepted
    Given the OMA API is running
    And a replication job was started through the API
    When the job fails on the VMA with "snapshot removed by the hypervisor"
    Then the job is "failed" with classification "vma_reported_failure"
    And the job has no recovery metadata
    And the OMA's metrics count no recoveries
    And the OMA's metrics show "oma_job_finalizations_total{status="failed"} 1"
    And the VM context counts 0 successful and 1 failed job
    And the VM context is "failed"
    And the VM context allows new operations

  @regression
  Scenario: Defect 9 - a completed job frees the VM and records the success
    Given a replicating job at 70% last updated 2 minutes ago
    And the VMA reports the job completed
    When the OMA API is started
    Then the job is "completed"
    And the VM context counts 1 successful and 0 failed jobs
    And the VM context is "ready_for_failover"
    And the VM context allows new operations

  @regression
  Scenario: Defect 10 - a failure after an earlier success leaves the VM ready for failover
    Given a replicating job at 40% last updated 2 minutes ago
    And the VM had an earlier successful replication
    And the VMA reports the job failed with "disk read error"
    When the OMA API is started
    Then the job is "failed"
    And the VM context counts 1 successful and 1 failed job
    And the VM context is "ready_for_failover"

  Scenario: The unified jobs list never shows technical error text
    Given a failed job whose error was "virt-v2v: error: VirtIO drivers not found for /dev/nbd3"
    And the OMA API is running
    When I GET "/api/v1/vm-contexts/ctx-vm-{job}/recent-jobs"
    Then the response status is 200
    And the response field "count" is 1
    And the response field "jobs/0/status" is "failed"
    And the response field "jobs/0/error_message" is "Driver preparation failed - VM may not be compatible with automated conversion"
    And the response field "jobs/0/error_category" is "compatibility"
    And the response contains no technical error text

  Scenario Outline: The unified jobs list words a recovery failure for users, whatever the raw error says
    Given a replicating job at 40% last updated <age> minutes ago
    And <vma>
    When the OMA API is started
    Then the job is "failed" with classification "<class>"
    When I GET "/api/v1/vm-contexts/ctx-vm-{job}/recent-jobs"
    Then the response field "jobs/0/error_message" is "<message>"
    And the response field "jobs/0/error_category" is "<category>"
    And the response contains no technical error text

    Examples:
      | age | vma                           | class                   | message                                                                  | category     |
      | 2   | the VMA does not know the job | job_lost                | Replication was interrupted and could not be resumed                     | platform     |
      | 45  | the VMA is stopped            | vma_unreachable_timeout | Cannot connect to source environment - replication could not be tracked | connectivity |

  Scenario: The operation summary of a failed replication is stored for the GUI
    Given a replicating job at 40% last updated 2 minutes ago
    And the VMA does not know the job
    When the OMA API is started
    Then the job is "failed" with classification "job_lost"
    And the VM's operation summary says the replication "failed"

  Scenario Outline: oma-api refuses a mistyped VMA address at start
    When I run "oma-api --vma-api-url <address>"
    Then the command exits with 2
    And the command output contains "invalid VMA_API_URL (--vma-api-url)"
    And the command output contains "<address>"

    Examples:
      | address          |
      | localhost:9081   |
      | http://          |
      | http://vma:99999 |

  Scenario: Migrations are idempotent
    When I run "oma-api migrate"
    Then the command exits with 0
    When I run "oma-api migrate"
    Then the command exits with 0
    And the command output contains "migrations up to date"

  @regression
  Scenario: Defect 21 - a replication the VMA refuses frees the VM
    Given the OMA API is running
    And the VMA answers every request with status 500
    When I try to start a replication of a new VM
    Then the response status is 502
    And the job is "replication_failed"
    When the VMA is started again
    And I try to start a replication of the job's VM
    Then the response status is 201

  Scenario: The OMA starts before its database and waits for it
    Given the database does not accept connections yet
    When the OMA API is launched
    Then the logs show "Waiting for the database"
    When the database starts accepting connections
    Then the OMA API becomes ready within 10 seconds
    And the API responds to a health check
    And the logs show "Database connection established"

  Scenario: The OMA says why it cannot reach the database and stops after its wait
    Given the database does not accept connections yet
    When I run "oma-api --db-wait 1s"
    Then the command exits with 1
    And the command output contains "Connection refused"
    And the command output contains "no connection after waiting 1s (OMA_DB_WAIT)"

  Scenario: A database that refuses the OMA's login stops it at once, without waiting
    Given the OMA's database user does not exist
    When I run "oma-api --db-wait 60s"
    Then the command exits with 1
    And the command output contains "Access denied for user 'oma_no_such_user'"
    And the command output contains "mysql://oma_no_such_user:***@"
