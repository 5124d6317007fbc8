"""Distributed generation: jobs, their chunks of problems, execution, budgets and progress.

Postgres is the source of truth: a job, its per-problem states and its rationales live there,
and the queue (Celery on Redis, or in-process without a broker) only carries (job id, chunk)
pairs that can be rebuilt from it at any time (the workers' reconciler, or `kpdd resume`).
"""
