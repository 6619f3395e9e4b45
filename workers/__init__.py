"""Celery workers, the outbox relay and the beat schedule: the engine's asynchronous side."""
