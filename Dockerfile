# Image for the carebus services in docker-compose.yml (Kafka and Redis come from their own images).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY foundation foundation
COPY carebus carebus
COPY schemas schemas
COPY producers producers
COPY streams streams
COPY consumers consumers
COPY simulator simulator
COPY bench bench
# What the services read at run time from the checkout's layout: credentials, Kafka's logging
# settings, install scripts (deploy/), and the packages are installed in place (editable) so that
# paths relative to the code resolve under /app as they do in a checkout.
COPY deploy deploy
RUN pip install --no-cache-dir -e .
EXPOSE 2575 8080
