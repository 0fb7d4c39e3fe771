"""Scheduled batch jobs: a job spec (:mod:`stacsr.batch.spec`) run idempotently (:mod:`stacsr.batch.run`)."""
