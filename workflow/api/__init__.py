"""The HTTP API (FastAPI): one routes module per resource, problem details for every refusal."""
