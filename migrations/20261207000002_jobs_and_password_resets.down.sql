DROP TABLE password_resets;
DROP TABLE job_schedules;
DROP TABLE jobs;
