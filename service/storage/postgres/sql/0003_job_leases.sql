-- Which replica runs a running job, until when (the database's clock decides expiry):
-- service/storage/protocols/jobs.py. A lease not renewed in time may be claimed by another
-- replica, which resumes the job.
CREATE TABLE job_leases (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
