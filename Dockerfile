# One image for every avrr service (migrate now; api, worker, beat and relay as they land).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY workflow ./workflow
COPY config ./config
COPY migrations ./migrations
RUN pip install -e . && useradd --create-home avrr
USER avrr
ENTRYPOINT ["avrr"]
