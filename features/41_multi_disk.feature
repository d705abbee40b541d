Feature: A multi-disk job completes only when every disk is copied
  migratekit copies a VM's disks one after another under one job id and reports "completed" at
  100% at the end of each disk (reference §10, defect 13). The original OMA marked the job
  completed after the first disk, freed the VM for failover and stopped polling while the other
  disks were still copying. The OMA counts the disks and finalizes only when all are done: in
  the poller, in the startup recovery and in the health monitor.

  Background:
    Given the OMA polls every 100 ms

  Scenario: Regression - the poller does not complete a three-disk job when its first disk completes
    Given a replicating job at 0% with disks of 10, 20 and 5 GiB
    And the VMA copies the job's disks one after another, 25% a poll, pausing 5 polls between disks
    When the OMA API is started
    Then the logs show "Job {job}: disk 1 of 3 copied" once
    And the job is still "replicating" while the VMA answers "completed" for disk 1
    And the OMA has recorded 1 of the job's disks as copied
    And the job's progress covers all its disks
    And the VMA had finished all 3 disks when the job was completed
    And the logs show "Job {job}: disk 2 of 3 copied" once
    And the logs show "Job {job} completed on VMA" once
    And the VM context allows new operations

  Scenario Outline: A restart between disks keeps the count, and the job completes after the third disk (<answers>)
    Given a replicating job at 0% with disks of 10, 20 and 5 GiB
    And the VMA copies the job's disks one after another, 50% a poll, pausing 12 polls between disks<listing>
    When the OMA API is started
    And the OMA has recorded 1 of the job's disks as copied
    And the OMA API is killed
    And the OMA API is started again
    Then the logs show "Job {job} completed on VMA for 1 of 3 disks only - not finalized; polling continues" once
    And the VMA had finished all 3 disks when the job was completed
    And the logs show "Job {job}: disk 1 of 3 copied" once
    And the logs show "Job {job}: disk 2 of 3 copied" once

    Examples:
      | answers                        | listing              |
      | no per-disk entries            |                      |
      | with disk_progresses           | , listing each disk  |

  Scenario: Startup recovery finds a three-disk job whose first disk is done and keeps polling it
    Given a replicating job at 0% with disks of 10, 20 and 5 GiB
    And the VMA copies the job's disks one after another, 100% a poll, pausing 3 polls between disks
    When the OMA API is started
    Then the logs show "Job {job} completed on VMA for 1 of 3 disks only - not finalized; polling continues" once
    And the logs show "Successfully restarted VMA progress polling for job {job}" once
    And the VMA had finished all 3 disks when the job was completed

  Scenario: The health monitor finds an orphaned three-disk job whose first disk is done and keeps polling it
    Given the health monitor checks every 200 ms
    And the OMA API is running
    When a replicating job with disks of 10, 20 and 5 GiB appears that no poller owns, its first disk copied at the VMA's first answer
    Then the logs show "Job {job} completed on VMA for 1 of 3 disks only - not finalized; polling continues" once
    And the VMA had finished all 3 disks when the job was completed
