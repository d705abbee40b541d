@job-sheet
Feature: Job sheet - observability endpoints (phase 4) and production testing criteria (task 5.3)

  @regression
  Scenario: Defect 6 - the recovery status endpoint and the manual trigger exist and work
    Given the health monitor checks every 60000 ms
    And the OMA API is running
    When a job the OMA never polled appears as replicating at 95%
    And the VMA reports the job completed
    And I GET "/api/v1/job-recovery/status"
    Then the response status is 200
    And the response field "last_run/trigger" is "startup"
    And the response field "not_polled" is 1
    When I POST "/api/v1/job-recovery/trigger?dry_run=true"
    Then the response status is 200
    And the response field "summary/planned" is 1
    And the response field "jobs/0/decision" is "mark completed"
    And the job stays "replicating"
    When I POST "/api/v1/job-recovery/trigger"
    Then the response status is 200
    And the response field "summary/completed" is 1
    And the job is "completed"
    And the recovery metadata shows method "manual"
    When I GET "/api/v1/job-recovery/status"
    Then the response field "runs" is 3
    And the response field "last_run/trigger" is "manual"
    And the response field "totals/total_processed" is 1
    And the response field "totals/completed" is 1
    And the response field "totals/planned" is 0
    And the response field "success_rate" is 1
    And the response field "polling_restart_rate" is "null"

  Scenario: A caller hanging up does not cut a manual recovery short
    Given the health monitor checks every 60000 ms
    And the OMA waits up to 5000 ms for a VMA answer
    And the OMA API is running
    When a job the OMA never polled appears as replicating at 95%
    And the VMA reports the job completed
    And the VMA answers every request after 1000 ms
    And I POST "/api/v1/job-recovery/trigger" and hang up after 300 ms
    Then the job is "completed"
    And the recovery metadata shows method "manual"
    And the health report shows recovery "completed"
    When I POST "/api/v1/job-recovery/trigger?dry_run=true"
    Then the response status is 200

  Scenario: A caller hanging up does not leave a half-started replication
    Given the health monitor checks every 60000 ms
    And the OMA waits up to 5000 ms for a VMA answer
    And the OMA API is running
    When the VMA answers every request after 1000 ms
    And I start a replication of a new VM and hang up after 300 ms
    Then the job is "replicating"
    And the job is polled again within 5 seconds
    And the job's progress is written again within 5 seconds

  @regression
  Scenario: Defect 6 - the polling status endpoints show the polled job
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When I GET "/api/v1/vma-polling/status"
    Then the response status is 200
    And the response field "active_jobs_count" is 1
    And the response field "active_jobs" lists the job
    And the response field "vma_api_healthy" is "true"
    And the response field "polls_total" is at least 2
    And the response fields "polls_successful" and "polls_total" are equal
    And the response field "success_rate" is 1
    When I POST "/api/v1/job-recovery/trigger"
    Then the response status is 200
    And the response field "summary/total_processed" is 0
    And the response field "skipped_being_polled" lists the job
    And the logs show "1 unfinished jobs are being polled by a live poller - left to it"
    When I GET "/api/v1/vma-polling/jobs/{job}"
    Then the response status is 200
    And the response field "is_polling" is "true"
    And the response field "persisted_state/is_active" is "true"
    And the job's polling history shows its last 10 polls, oldest first
    When I GET "/health"
    Then the response field "polling.active_jobs" is 1
    When I GET "/metrics"
    Then the response status is 200
    And the OMA's metrics show "oma_pollers_active 1"
    And the OMA's metrics show "# TYPE oma_vma_polls counter"

  Scenario: Quick restart (under a minute) - jobs continue normally
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the OMA API is restarted
    Then the job stays "replicating"
    And progress continues from where it left off

  Scenario: Long downtime (over 5 minutes) - jobs recover based on VMA status
    Given a replicating job at 30% last updated 6 minutes ago
    And the VMA is running the job at 60% and advancing
    When the OMA API is started
    Then the logs show "Job {job} still running on VMA"
    And the job's progress reaches 60%
    And the job stays "replicating"
    And the OMA's metrics count 1 recovery "polling_restarted" and no other

  Scenario: Polling restarts within 10 seconds of the OMA start
    Given a replicating job at 30% last updated 2 minutes ago
    And the VMA is running the job at 31%
    When the OMA API is started
    Then the logs show "Successfully restarted VMA progress polling for job {job}"
    And polling restarted within 10 seconds of the OMA start

  @regression
  Scenario Outline: Defect 18 - zero false failures: a recent job survives a VMA that is <how>
    Given a replicating job at 40% last updated 5 minutes ago
    And <fault>
    When the OMA API is started
    Then the logs show "Job {job} - VMA unreachable but job is recent - leaving for retry"
    And the job stays "replicating"

    Examples:
      | how                       | fault                                          |
      | refusing connections      | the VMA is unreachable by refused              |
      | accepting and never answering | the VMA is unreachable by blackhole        |
      | resetting connections     | the VMA is unreachable by reset                |
      | hanging after the headers | the VMA is unreachable by hang_after_headers   |
      | answering 503             | the VMA answers every request with status 503  |

  @regression
  Scenario Outline: Defect 18 - an old job is failed whichever way the VMA is unreachable (<fault>)
    Given a replicating job at 40% last updated 45 minutes ago
    And <fault>
    When the OMA API is started
    Then the job is "failed" with classification "vma_unreachable_timeout"

    Examples:
      | fault                                         |
      | the VMA is unreachable by reset               |
      | the VMA is unreachable by hang_after_headers  |
      | the VMA answers every request with status 502 |

  Scenario: With the database down, the API answers 503 naming the cause, and promptly
    Given the OMA reaches its database through a gate
    And an API request waits up to 1000 ms for the database
    And the OMA API is running
    And a replication job was started through the API
    When the database goes away
    And I GET "/health"
    Then the response status is 503
    And the response field "database" is "unreachable"
    And the response field "reason" contains "Connection refused"
    When I GET "/api/v1/replications/{job}"
    Then the response status is 503
    And the response field "error" is "Database unavailable"
    And the response field "details" contains "Connection refused"
    And the response field "details" contains "OMA_API_DB_TIMEOUT"
    And the answer came within 3 seconds
    And the logs show "database unavailable"
    When I GET "/api/v1/job-recovery/status"
    Then the response status is 503
    # Writes give up within the same bound as reads (they used to wait the pool's 10 s).
    When I try to start a replication of a new VM
    Then the response status is 503
    And the response field "error" is "Database unavailable"
    And the answer came within 3 seconds
    When I POST "/api/v1/job-recovery/trigger"
    Then the response status is 503
    And the answer came within 3 seconds
    When I DELETE "/api/v1/vma-polling/jobs/{job}"
    Then the response status is 503
    And the answer came within 3 seconds
    When the database comes back
    And I GET "/api/v1/replications/{job}"
    Then the response status is 200
    And the response field "status" is "replicating"

  Scenario Outline: Every error answer has the JSON error shape (<case>)
    Given the OMA API is running
    When <request>
    Then the response status is <status>
    And the response field "error" is "<error>"
    And the response field "details" contains "<details>"

    Examples:
      | case                        | request                                                       | status | error                  | details               |
      | a query that does not parse | I POST "/api/v1/job-recovery/trigger?dry_run=maybe"           | 400    | Invalid request        | dry_run               |
      | a path that is not UTF-8    | I GET "/api/v1/vm-contexts/%FF%FE/recent-jobs"                | 400    | Invalid request        | UTF-8                 |
      | a method the route lacks    | I PUT "/api/v1/replications/job-1"                            | 405    | Method not allowed     | PUT is not allowed    |
      | a body over the limit       | I POST a JSON body of 3000000 bytes to "/api/v1/replications" | 413    | Request body too large | at most 2097152 bytes |
      | an unknown endpoint         | I GET "/api/v1/no-such-thing"                                 | 404    | Not found              | no such endpoint      |
      | a body that is not JSON     | I POST "/api/v1/replications"                                 | 400    | Invalid request body   | EOF                   |
      | stopping an unpolled job    | I DELETE "/api/v1/vma-polling/jobs/job-never-seen"            | 404    | Job not polled         | is not being polled   |

  Scenario: The progress proxy passes the VMA's answer through, and a job no longer polled keeps its polling record
    Given the health monitor checks every 60000 ms
    And the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When I GET "/api/v1/progress/{job}"
    Then the response status is 200
    And the response field "job_id" is "{job}"
    And the response field "status" is "in_progress"
    And the response field "phase" is "Transfer"
    And the response field "percentage" is at least 20
    When polling of the job is stopped through the API
    And I GET "/api/v1/vma-polling/jobs/{job}"
    Then the response status is 200
    And the response field "is_polling" is "false"
    And the response field "persisted_state/job_id" is "{job}"
    And the response field "persisted_state/is_active" is "false"
    And the response field "persisted_state/polls_total" is at least 2

  Scenario Outline: The VM context and the unified jobs list show a <status> <type> job as the database holds it
    Given a <status> job at <pct>% last updated 3 minutes ago
    And the job is an <type> replication
    And the OMA API is running
    When I GET "/api/v1/vm-contexts/ctx-vm-{job}"
    Then the response status is 200
    And the response field "context_id" is "ctx-vm-{job}"
    And the response field "vm_name" is "vm-{job}"
    And the response field "vm_path" is "/DC1/vm/vm-{job}"
    And the response field "datacenter" is "DC1"
    When I GET "/api/v1/vm-contexts/ctx-vm-{job}/recent-jobs"
    Then the response status is 200
    And the response field "count" is 1
    And the response field "jobs/0/job_id" is "{job}"
    And the response field "jobs/0/status" is "<status>"
    And the response field "jobs/0/display_name" is "<display>"

    Examples:
      | status    | pct | type        | display                 |
      | completed | 100 | initial     | Replication Completed   |
      | completed | 100 | incremental | Replication Completed   |
      | failed    | 40  | initial     | Initial Replication     |
      | failed    | 40  | incremental | Incremental Replication |
