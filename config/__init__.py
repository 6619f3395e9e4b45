"""Settings, logging and (later) Celery settings; imports nothing of the project."""
