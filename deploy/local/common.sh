# shellcheck shell=bash
# Shared helpers for deploy/local/*.sh. Sourced, never executed.
#
# Conventions of the scripts that source this file:
#   - stdout carries only machine-readable output (KEY=VALUE lines);
#   - everything else (progress, errors) goes to stderr;
#   - TALLY_LOCAL_DIR (default: <repo root>/.local) holds all state.

TALLY_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
TALLY_LOCAL_DIR="${TALLY_LOCAL_DIR:-${TALLY_REPO_ROOT}/.local}"
# Make it absolute (the directory may not exist yet) so that running from any
# cwd, and switching cwd inside the scripts, keeps pointing at the same place.
case "${TALLY_LOCAL_DIR}" in
  /*) ;;
  *) TALLY_LOCAL_DIR="${PWD}/${TALLY_LOCAL_DIR}" ;;
esac
export TALLY_LOCAL_DIR

# The calling script sets TALLY_LOG_TAG (e.g. "kafka") before sourcing.
log() {
  printf '[%s] %s\n' "${TALLY_LOG_TAG:-local}" "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

# port_open HOST PORT: does something accept TCP connections there?
port_open() {
  local host="$1" port="$2"
  # The fd is closed when the subshell exits.
  (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null
}

# pid_alive PID: is that process running (and not a zombie)?
pid_alive() {
  local pid="$1" state
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null || true)"
  [[ "${state}" != "Z" ]]
}

# wait_reaped PID SECONDS: wait while PID is a zombie (killed, not yet reaped:
# some init processes reap orphans late, and a zombie still "exists" for kill -0).
wait_reaped() {
  local pid="$1" deadline=$((SECONDS + $2))
  while [[ "$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null || true)" == "Z" ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# stop_pid PID SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL and wait
# until the process is reaped.
stop_pid() {
  local pid="$1" timeout="$2" deadline
  kill -TERM "${pid}" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while pid_alive "${pid}"; do
    if ((SECONDS >= deadline)); then
      log "still running after ${timeout}s: SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
      wait_reaped "${pid}" 5 || true
      break
    fi
    sleep 0.1
  done
}

# pid_cmdline_has PID NEEDLE: does the process's command line contain NEEDLE?
# Guards against acting on a recycled pid from a stale pid file.
pid_cmdline_has() {
  local pid="$1" needle="$2"
  [[ -r "/proc/${pid}/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${needle}"
}

# tail_log FILE [LINES]: show the end of a log file on stderr.
tail_log() {
  local file="$1" lines="${2:-40}"
  if [[ -f "${file}" ]]; then
    log "last ${lines} lines of ${file}:"
    tail -n "${lines}" "${file}" >&2 || true
  else
    log "(no log file at ${file})"
  fi
}

# usage NAME: the common command line of the service scripts.
usage() {
  printf 'usage: %s {start|stop|status|env|restart}\n' "$1" >&2
  exit 2
}
