#!/usr/bin/env bash
# Debian's Prometheus for local development and tests: installs the package when
# missing (without starting its system service), and runs private servers on
# loopback, each with its own config and state directory.
#
#   deploy/local/prometheus.sh install
#   deploy/local/prometheus.sh {start|restart} [CONFIG [STATE_DIR]]
#   deploy/local/prometheus.sh {stop|status|env} [STATE_DIR]
#
# install print TALLY_PROMETHEUS_BIN=... and TALLY_PROMTOOL_BIN=..., installing
#         Debian's `prometheus` package first when either is missing (root only)
# start   start a server on 127.0.0.1 in the background (idempotent for the same
#         STATE_DIR), wait until it is ready, print
#         TALLY_PROMETHEUS_URL=http://127.0.0.1:<port>
# stop    SIGTERM, wait, SIGKILL after a timeout (idempotent)
# status  print the state; exit 0 when running, 3 when not
# env     print TALLY_PROMETHEUS_URL=... when running (exit 3 when not)
#
# CONFIG defaults to a file generated in STATE_DIR that scrapes a worker on
# 127.0.0.1:${TALLY_TELEMETRY_PORT:-9464} (job "tally") and loads
# deploy/prometheus/alerts.yml. STATE_DIR defaults to $TALLY_LOCAL_DIR/prometheus;
# it holds the TSDB (tsdb/), the pid file and the log. Only KEY=VALUE lines go to
# stdout; progress goes to stderr. Settings (environment):
#   TALLY_LOCAL_DIR                  state root (default <repo>/.local)
#   TALLY_PROMETHEUS_PORT            listen port on 127.0.0.1 (default 39090)
#   TALLY_PROMETHEUS_START_TIMEOUT   seconds to wait for readiness (default 60)
#   TALLY_PROMETHEUS_STOP_TIMEOUT    seconds before SIGKILL (default 20)
set -euo pipefail

TALLY_LOG_TAG=prometheus
# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HOST=127.0.0.1
PORT="${TALLY_PROMETHEUS_PORT:-39090}"
START_TIMEOUT="${TALLY_PROMETHEUS_START_TIMEOUT:-60}"
STOP_TIMEOUT="${TALLY_PROMETHEUS_STOP_TIMEOUT:-20}"
ALERTS="${TALLY_REPO_ROOT}/deploy/prometheus/alerts.yml"

prometheus_usage() {
  printf 'usage: %s install | {start|restart} [CONFIG [STATE_DIR]] | {stop|status|env} [STATE_DIR]\n' "$0" >&2
  exit 2
}

for n in "${PORT}" "${START_TIMEOUT}" "${STOP_TIMEOUT}"; do
  [[ "${n}" =~ ^[0-9]+$ ]] || die "not a number: '${n}'"
done

# Absolute path of a file or directory that may not exist yet.
absolute() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "${PWD}" "$1" ;;
  esac
}

find_bin() {
  local name="$1" path
  path="$(command -v "${name}" 2>/dev/null || true)"
  [[ -z "${path}" && -x "/usr/bin/${name}" ]] && path="/usr/bin/${name}"
  [[ -n "${path}" ]] || return 1
  printf '%s\n' "${path}"
}

# Install Debian's package without letting its maintainer scripts start (or, on
# a systemd machine, enable at boot) the system-wide prometheus service: we only
# want the binaries. A policy-rc.d that exits 101 makes invoke-rc.d and
# deb-systemd-invoke refuse every start; one already in place is left alone.
install_prometheus() {
  local policy=/usr/sbin/policy-rc.d ours=false
  ((EUID == 0)) || die "prometheus/promtool not found; install Debian's 'prometheus' package (needs root)"
  command -v apt-get >/dev/null || die "prometheus/promtool not found and apt-get is unavailable"
  log "prometheus not found: installing Debian's prometheus package (binaries only, service not started)"
  if [[ ! -e "${policy}" ]]; then
    printf '#!/bin/sh\n# Temporary, from deploy/local/prometheus.sh: start no services.\nexit 101\n' >"${policy}"
    chmod 0755 "${policy}"
    ours=true
    # Removed on any exit, even when apt fails.
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends prometheus >&2
  if [[ "${ours}" == true ]]; then
    rm -f "${policy}"
    trap - EXIT
  fi
  # Debian enables the unit at install time; on a systemd machine it would start
  # at the next boot and hold port 9090. Leave it installed but disabled.
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl disable --now prometheus.service >&2 2>/dev/null || true
  fi
}

cmd_install() {
  local prometheus promtool
  if ! prometheus="$(find_bin prometheus)" || ! promtool="$(find_bin promtool)"; then
    install_prometheus
    prometheus="$(find_bin prometheus)" || die "prometheus still not found after installing"
    promtool="$(find_bin promtool)" || die "promtool still not found after installing"
  fi
  printf 'TALLY_PROMETHEUS_BIN=%s\nTALLY_PROMTOOL_BIN=%s\n' "${prometheus}" "${promtool}"
}

# --- a private server ---------------------------------------------------------------

set_state() {
  STATE_DIR="$(absolute "${1:-${TALLY_LOCAL_DIR}/prometheus}")"
  PID_FILE="${STATE_DIR}/prometheus.pid"
  PORT_FILE="${STATE_DIR}/prometheus.port"
  SERVER_LOG="${STATE_DIR}/prometheus.log"
  TSDB_DIR="${STATE_DIR}/tsdb"
}

print_env() {
  printf 'TALLY_PROMETHEUS_URL=http://%s:%s\n' "${HOST}" "$1"
}

running_pid() {
  local pid
  [[ -f "${PID_FILE}" ]] || return 1
  pid="$(<"${PID_FILE}")"
  pid_alive "${pid}" && pid_cmdline_has "${pid}" "--storage.tsdb.path=${TSDB_DIR}" || return 1
  printf '%s\n' "${pid}"
}

running_port() {
  local port
  port="$(cat "${PORT_FILE}" 2>/dev/null || true)"
  printf '%s\n' "${port:-${PORT}}"
}

# Prometheus answers 200 on /-/ready once the TSDB is open and the config loaded.
server_ready() {
  python3 - "http://${HOST}:$1/-/ready" <<'PY'
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

default_config() {
  local config="${STATE_DIR}/prometheus.yml"
  cat >"${config}" <<EOF
# Generated by deploy/local/prometheus.sh; edits are overwritten on the next start.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - ${ALERTS}
scrape_configs:
  - job_name: tally
    static_configs:
      - targets: ["127.0.0.1:${TALLY_TELEMETRY_PORT:-9464}"]
EOF
  printf '%s\n' "${config}"
}

cmd_start() {
  local config pid deadline prometheus
  if pid="$(running_pid)"; then
    log "already running (pid ${pid}) on ${HOST}:$(running_port), state in ${STATE_DIR}"
    print_env "$(running_port)"
    return 0
  fi
  prometheus="$(find_bin prometheus)" || die "prometheus not found: run '$0 install' first (as root)"
  command -v python3 >/dev/null || die "python3 not found (used for the readiness check)"
  if port_open "${HOST}" "${PORT}"; then
    die "${HOST}:${PORT} is already in use by another process (set TALLY_PROMETHEUS_PORT)"
  fi
  mkdir -p "${STATE_DIR}" "${TSDB_DIR}"
  if [[ -n "${CONFIG_ARG}" ]]; then
    config="$(absolute "${CONFIG_ARG}")"
    [[ -f "${config}" ]] || die "no config file ${config}"
  else
    config="$(default_config)"
  fi

  log "starting on ${HOST}:${PORT} with ${config}, state in ${STATE_DIR}"
  nohup setsid "${prometheus}" \
    --config.file="${config}" \
    --storage.tsdb.path="${TSDB_DIR}" \
    --storage.tsdb.retention.time=2d \
    --web.listen-address="${HOST}:${PORT}" \
    --web.enable-lifecycle \
    --log.level=info \
    >>"${SERVER_LOG}" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "${pid}" >"${PID_FILE}"
  printf '%s\n' "${PORT}" >"${PORT_FILE}"

  deadline=$((SECONDS + START_TIMEOUT))
  until server_ready "${PORT}"; do
    if ! pid_alive "${pid}"; then
      rm -f "${PID_FILE}"
      tail_log "${SERVER_LOG}" 30
      die "prometheus (pid ${pid}) exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      tail_log "${SERVER_LOG}" 30
      cmd_stop >/dev/null || true
      die "not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "ready (pid ${pid})"
  print_env "${PORT}"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "${PID_FILE}"
    log "not running (state in ${STATE_DIR})"
    return 0
  fi
  log "stopping (pid ${pid})"
  stop_pid "${pid}" "${STOP_TIMEOUT}"
  rm -f "${PID_FILE}"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    printf 'prometheus: running (pid %s) on %s:%s, state in %s\n' "${pid}" "${HOST}" "$(running_port)" "${STATE_DIR}"
    return 0
  fi
  printf 'prometheus: stopped (state in %s)\n' "${STATE_DIR}"
  return 3
}

cmd_env() {
  if running_pid >/dev/null; then
    print_env "$(running_port)"
    return 0
  fi
  log "not running"
  return 3
}

command="${1:-}"
case "${command}" in
  install)
    (($# == 1)) || prometheus_usage
    cmd_install
    ;;
  start | restart)
    (($# <= 3)) || prometheus_usage
    CONFIG_ARG="${2:-}"
    set_state "${3:-}"
    [[ "${command}" == start ]] || cmd_stop
    cmd_start
    ;;
  stop | status | env)
    (($# <= 2)) || prometheus_usage
    set_state "${2:-}"
    "cmd_${command}"
    ;;
  *) prometheus_usage ;;
esac
