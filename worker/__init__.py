"""Celery workers: run gpt/ and turn its events into Redis stream entries and database rows."""
