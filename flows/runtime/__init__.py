"""Process plumbing: one run's setup, Prefect's API and defaults, schedules, progress, the collector."""
