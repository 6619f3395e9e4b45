# One image for every avrr service: migrate, worker, beat, relay, flower (and the api when it lands).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY workflow ./workflow
COPY config ./config
COPY workers ./workers
COPY migrations ./migrations
RUN pip install -e . && useradd --create-home avrr
USER avrr
ENTRYPOINT ["avrr"]
