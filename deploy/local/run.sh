#!/usr/bin/env bash
# `make run`: the main job on local defaults. Starts local Kafka and PostgreSQL
# unless TALLY_KAFKA_BOOTSTRAP / TALLY_DATABASE_URL are set, then `tally demo`:
# migrations, the example metrics, a worker, a synthetic stream and a live
# summary. Ctrl-C stops the demo, then the services this script started.
set -euo pipefail

export TALLY_LOG_TAG=run
# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "${TALLY_REPO_ROOT}"

started=()
cleanup() {
  local rc=$?
  for service in "${started[@]}"; do
    log "stopping the local ${service} this run started"
    bash "deploy/local/${service}.sh" stop || true
  done
  exit "${rc}"
}
trap cleanup EXIT
# Ctrl-C reaches the demo (same terminal); this script lives on to clean up.
trap 'true' INT

if [[ -z "${TALLY_KAFKA_BOOTSTRAP:-}" ]]; then
  bash deploy/local/kafka.sh status >/dev/null 2>&1 || started+=(kafka)
  export "$(bash deploy/local/kafka.sh start)"
fi
if [[ -z "${TALLY_DATABASE_URL:-}" ]]; then
  bash deploy/local/postgres.sh status >/dev/null 2>&1 || started+=(postgres)
  export "$(bash deploy/local/postgres.sh start)"
fi

status=0
.venv/bin/tally demo "$@" || status=$?
# 130 is the demo's answer to Ctrl-C: a normal way to stop.
if ((status != 0 && status != 130)); then
  exit "${status}"
fi
