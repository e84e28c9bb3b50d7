#!/usr/bin/env bash
# Installs everything carebus needs on a fresh Debian machine, and nothing twice:
#   - redis-server (Debian package) if missing
#   - Java 17 and Maven are expected (checked, installed from Debian if absent)
#   - the Kafka broker jars, assembled by Maven from Maven Central into deploy/kafka/target/libs
#     (cached in ~/.m2, so reruns are offline)
#   - the Python package and its test dependencies (cached by pip)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# Headless Chromium: the dashboard test renders the page as a person would see it.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! ls deploy/kafka/target/libs/kafka_2.13-*.jar >/dev/null 2>&1; then
  echo "assembling the Kafka broker from Maven Central (first run only)"
  mvn -q -B -f deploy/kafka/pom.xml package
fi

# Reinstall the Python package only when its dependency list changed.
stamp=".carebus/pip-installed.sha256"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! python3 -c "import carebus, foundation, faust, confluent_kafka" 2>/dev/null; then
  echo "installing Python dependencies"
  python3 -m pip install -q -e '.[test]'
  mkdir -p .carebus && echo "$want" > "$stamp"
fi
