"""A task that does nothing: the bare-Celery baseline of bench/pipeline.py."""

from __future__ import annotations

from workers.app import app


@app.task(name="avrr.noop")
def noop(_: int = 0) -> None:
    """Drained by the same worker setup as the effects, so the two rates compare like for like."""
