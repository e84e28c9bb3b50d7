# Image for the carebus services in docker-compose.yml (Kafka and Redis come from their own images).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY carebus carebus
COPY schemas schemas
COPY producers producers
COPY streams streams
COPY consumers consumers
COPY simulator simulator
COPY bench bench
RUN pip install --no-cache-dir .
EXPOSE 2575 8080
