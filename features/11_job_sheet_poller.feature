@job-sheet
Feature: Job sheet - poller error detection, health monitor and no duplicate polling (tasks 2.1 - 2.3)

  @regression
  Scenario: Defect 1 - HTTP 200 "job not found" at recovery is detected as not found
    Given a replicating job at 50% last updated 3 minutes ago
    And the VMA answers HTTP 200 "job not found" for the job
    When the OMA API is started
    Then the logs show "not found on VMA (HTTP 200 'not found')"
    And the job is "failed" with classification "job_lost"

  Scenario: The poller respects the grace period for a job the VMA does not know yet
    Given the OMA API is running
    And a replication job was started through the API
    When the VMA loses the job for 5 polls, then runs it at 20%
    Then the job's progress reaches 20%
    And the job stays "replicating"
    And the logs do not show "marked as failed"
    When I GET "/api/v1/vma-polling/jobs/{job}"
    Then the response field "polled_by_this_instance.last_error" is "job not found on VMA (within grace)"

  @regression
  Scenario: Defect 15 - after the grace period the poller finalizes a job the VMA no longer knows
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the VMA starts answering HTTP 200 "job not found" for the job
    Then the job is "failed" with classification "job_lost"
    And the VM context allows new operations

  @regression
  Scenario: Defect 2.3 - the health monitor re-attaches an orphaned job
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When polling of the job is stopped through the API
    Then the logs show "Found job not being polled - restarting"
    And the logs show "Health monitor: Job {job} NOT being polled (orphaned) - investigating"
    And the job is polled again within 5 seconds
    And the job's progress is written again within 5 seconds
    And no two polls of the job overlap
    And the job is polled every interval

  Scenario: A job created through the API while the health monitor checks is not taken for an orphan
    # Found by looping the suite with a core busy: the startup scan loaded a job the API had
    # written but not yet tracked, and "recovered" it (recovery metadata on a new job).
    Given the health monitor checks every 100 ms
    And the OMA holds each new job 1 s between writing it and polling it
    And the OMA API is running
    When a replication job was started through the API
    Then the job's progress reaches 1%
    And the job has no recovery metadata
    And the logs do not show "Found job not being polled"
    And the OMA's metrics count no recoveries

  Scenario: The health monitor names ten orphaned jobs a round and counts the rest
    Given the OMA API is running
    When 25 jobs no poller owns appear at once
    Then the logs show "Found 15 more jobs not being polled - restarting them"
    And every one of them is polled again within 5 seconds
    And the logs show "Found job not being polled - restarting" 10 times
    And the logs show "NOT being polled (orphaned) - investigating" 10 times

  Scenario: A health monitor round re-attaches running orphans, finalizes completed ones and reports both
    Given the OMA API is running
    When 6 jobs no poller owns appear at once, 2 of them completed on the VMA
    Then a health monitor round reports 6 jobs checked, 6 orphaned, 4 re-attached and 2 finalized, none slow
    And the logs show "Health monitor: 6 orphaned jobs, 4 re-attached to polling, 2 finalized"
    And the OMA's metrics count 4 orphaned jobs re-attached
    And a health monitor round reports 4 jobs checked, 0 orphaned, 0 re-attached and 0 finalized, none slow

  Scenario: The health monitor tells a polled job whose VMA went silent from an orphan
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the VMA is unreachable by refused
    Then a health monitor round reports 1 job checked, 0 orphaned, 0 re-attached and 0 finalized, 1 slow
    And the logs show "Health monitor: Job {job} is being polled (polling may be slow)"
    And the logs do not show "Job {job} NOT being polled"
    And the job stays "replicating"

  @regression
  Scenario: Defect 5 and 15 - the health monitor rescues a job that was never polled
    Given the OMA API is running
    When a job the OMA never polled appears as ready_for_sync at 35%
    Then the logs show "Found job not being polled - restarting"
    And the job's progress is written again within 5 seconds
    And the job is "replicating"
    And the job's polling_restarted_at is set

  Scenario: No duplicate polling after a restart
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the OMA API is restarted
    Then the logs show "Successfully restarted VMA progress polling for job {job}"
    And the job is polled by exactly one poller
    And the job is polled every interval

  Scenario: A stalled database pauses polling only when the lease runs out, then polling resumes
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When another database session holds the job's polling state locked
    Then the OMA waits on that lock
    And the logs show "Polling of 1 jobs paused: their leases could not be renewed in time"
    When the other database session releases the lock
    Then the logs show "Polling resumed: leases renewed"
    And the job is polled every interval
    And the job's progress is written again within 5 seconds
    And the job stays "replicating"

  Scenario: A stalled database does not hold up shutdown
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When another database session holds the job's polling state locked
    Then the OMA waits on that lock
    And the OMA API exits cleanly on SIGTERM within 6 seconds
    And the logs show "VMA poller could not flush its last progress writes"
    And the logs show "could not hand over polling leases: the database did not answer"

  Scenario: Polling survives the database dropping the OMA's connections
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the database drops every connection of the OMA
    Then the job's progress is written again within 5 seconds
    And the job is polled every interval
    And the API responds to a health check

  Scenario: The OMA rides out a database restart
    Given the OMA reaches its database through a gate
    And the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the database goes away
    Then the health check reports the database unreachable
    And the logs show "Polling of 1 jobs paused: their leases could not be renewed in time"
    When the database comes back
    Then the logs show "Polling resumed: leases renewed"
    And the job is polled every interval
    And the job's progress is written again within 5 seconds
    And the database counts every poll of the job within 3 seconds
    And the API responds to a health check
    And the job stays "replicating"

  Scenario: A final status the database refused is written at a later poll
    Given the health monitor checks every 60000 ms
    And the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the database rejects every write that finalizes the job
    And the job completes on the VMA
    Then the logs show "Failed to finalize job {job} as completed"
    And the OMA has failed to poll the job 2 times in a row
    When I GET "/api/v1/vma-polling/jobs/{job}"
    Then the response field "polled_by_this_instance.last_result" is "finalize_failed"
    And the response field "polled_by_this_instance.polls_failed" is at least 2
    When the database accepts the job's writes again
    Then the job is "completed"
    And the VM context allows new operations

  Scenario: A final status the database refuses during startup recovery is reported, and written later
    Given the health monitor checks every 60000 ms
    And a replicating job at 95% last updated 3 minutes ago
    And the VMA reports the job completed
    When the database rejects every write that finalizes the job
    And the OMA API is restarted
    Then the logs show "Failed to recover job {job}: "
    And the recovery summary shows "Errors: 1"
    # Recovery claimed the job: its poller keeps the lease and retries the final write.
    And the logs show "Failed to finalize job {job} as completed"
    And the job stays "replicating"
    When I POST "/api/v1/job-recovery/trigger"
    Then the response field "skipped_being_polled" lists the job
    When I GET "/api/v1/job-recovery/status"
    Then the response field "totals/errors" is 1
    And the response field "success_rate" is 0
    When the database accepts the job's writes again
    Then the job is "completed"
    And the VM context allows new operations

  Scenario: A polling claim the database refuses at startup is said so, and made once it accepts
    Given a replicating job at 40% last updated 3 minutes ago
    And the VMA is running the job at 40%
    When the database refuses to record polling of the job
    And the OMA API is started
    Then the logs show "Failed to restart polling for 1 jobs"
    And the recovery summary shows "Errors: 1"
    And the job stays "replicating"
    When the database records polling of the job again
    Then the job is polled again within 5 seconds
    And the job is polled by exactly one poller
    And the job stays "replicating"

  Scenario Outline: A job <status> outside the OMA stops being polled
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When another component marks the job <status> in the database
    Then the logs show "Stopped polling job {job}: it is finished or no longer owned by this instance"
    And the VMA is no longer asked about the job
    And the job is "<status>"

    Examples:
      | status    |
      | cancelled |
      | completed |

  Scenario: Poll statistics the database refuses are dropped and said so, and progress goes on
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the database refuses every write of the job's poll statistics
    Then the logs show "the database refused them, so they are dropped (the next polls write afresh)" 2 or more times
    And the logs do not show "they are kept and written when the database answers"
    And the job's progress is written again within 5 seconds
    When the database takes the job's poll statistics again
    Then the database counts the job's polls again within 5 seconds
    And the logs show "Polling results are written again after"

  Scenario: Poll statistics that lose a lock race are kept and retried at a measured pace
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When every write of the job's poll statistics loses a lock race
    Then the logs show "they are kept and written when the database answers"
    And the job's progress is written again within 5 seconds
    When the database takes the job's poll statistics again
    Then the logs show "Polling results are written again after"
    And the failed writes were retried no more than 10 times a second
    And the database counts the job's polls again within 3 seconds
    And the job stays "replicating"

  Scenario: Two OMA processes starting at once never double-poll or double-finalize
    Given 4 running jobs and 2 jobs completed on the VMA
    When two OMA API processes start at the same time
    Then every completed job is finalized exactly once
    And every running job is polled by exactly one process
    And the logs show "Reconciled 6 jobs: asked the VMA in"

  @regression
  Scenario: An OMA cut off from the database stops polling before another OMA takes its job over
    Given the OMA reaches its database through a gate
    And the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When a second OMA API starts with its own way to the database
    And the database goes away
    Then the second OMA polls the job within 10 seconds
    When the database comes back
    Then the logs show "Stopped polling job {job}: it is finished or no longer owned by this instance"
    And only the second OMA polls the job from now on
    And no two OMAs ever polled the job within half an interval of each other
    And the logs show "Polling of 1 jobs paused: their leases could not be renewed in time"
    And the job stays "replicating"

  @regression
  Scenario: Defect 16 - a slow VMA never causes overlapping polls or bursts
    Given a replicating job at 30% last updated 1 minutes ago
    And the VMA answers the job slowly, taking 350 ms
    When the OMA API is started
    Then the job's progress is written again within 5 seconds
    And no two polls of the job overlap
    And the job stays "replicating"

  Scenario Outline: A VMA answering garbage (<kind>) never damages the job, and is logged once
    Given the OMA API is running
    And a replication job was started through the API
    And the job has reached 20% progress
    When the VMA answers the job with a <kind> body
    Then the logs show "VMA polling error for job {job}: <reported>: <detail>"
    And the OMA has failed to poll the job 6 times in a row
    And the database records 6 failed polls in a row for the job
    And the failing job's polls are 6 intervals apart
    And the job stays "replicating"
    And the job's progress is still at least 20%
    When I GET "/api/v1/vma-polling/jobs/{job}"
    Then the response field "polled_by_this_instance.last_error" contains "<detail>"
    And the response field "polled_by_this_instance.polls_failed" is at least 6
    When the VMA runs the job at 60%
    Then the job's progress reaches 60%
    And the logs show "VMA polling works again for job {job} after"
    And the logs show "VMA polling works again for job {job}" once
    And the logs show "VMA polling error for job {job}" once

    Examples:
      | kind        | reported       | detail                         |
      | not_json    | malformed_body | progress body is not JSON      |
      | truncated   | malformed_body | progress body is not JSON      |
      | wrong_types | malformed_body | progress body has wrong fields |
      | oversized   | body_too_large | progress body larger than      |
