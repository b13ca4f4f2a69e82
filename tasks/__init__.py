"""Thin Prefect tasks: each wraps one `glasses` call and adds orchestration only
(names, retries, timeouts, logging, artifacts). They pass paths, ids and small dicts."""
