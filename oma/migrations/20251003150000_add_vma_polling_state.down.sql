-- Revert the polling state: leases and poll statistics go; jobs are untouched.
DROP TABLE IF EXISTS vma_polling_state;
