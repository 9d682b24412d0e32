#!/usr/bin/env bash
# A private PostgreSQL server for local development and tests, from Debian's
# packages (installed when missing), with its data under $TALLY_LOCAL_DIR.
#
#   deploy/local/postgres.sh {start|stop|status|env|restart}
#
# start   initdb on first use, start (idempotent), wait for pg_isready, make
#         sure role/database `tally` exist, print
#         TALLY_DATABASE_URL=postgresql://tally:tally@127.0.0.1:<port>/tally
# stop    fast shutdown, immediate shutdown after a timeout (idempotent)
# status  print the state; exit 0 when running, 3 when not
# env     print TALLY_DATABASE_URL=... when running (exit 3 when not)
# restart stop + start, keeping the data
#
# Only the KEY=VALUE line goes to stdout; progress goes to stderr. The server
# runs as a non-root OS user: `tally` (created as a system user) when this
# script runs as root, else the current user. Settings (environment):
#   TALLY_LOCAL_DIR            state root (default <repo>/.local); this script
#                              uses $TALLY_LOCAL_DIR/postgres
#   TALLY_PG_PORT              TCP port on 127.0.0.1 (default 55432)
#   TALLY_PG_BINDIR            server binaries (default: newest
#                              /usr/lib/postgresql/*/bin)
#   TALLY_PG_START_TIMEOUT     seconds to wait for readiness (default 60)
#   TALLY_PG_STOP_TIMEOUT      seconds before an immediate shutdown (default 30)
set -euo pipefail

TALLY_LOG_TAG=postgres
# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HOST=127.0.0.1
PORT="${TALLY_PG_PORT:-55432}"
DB_USER=tally
DB_PASSWORD=tally
DB_NAME=tally
OS_USER_DEFAULT=tally
PG_DIR="${TALLY_LOCAL_DIR}/postgres"
DATA_DIR="${PG_DIR}/data"
SOCKET_DIR="${PG_DIR}/run"
SERVER_LOG="${PG_DIR}/postgres.log"
START_TIMEOUT="${TALLY_PG_START_TIMEOUT:-60}"
STOP_TIMEOUT="${TALLY_PG_STOP_TIMEOUT:-30}"

for n in "${PORT}" "${START_TIMEOUT}" "${STOP_TIMEOUT}"; do
  [[ "${n}" =~ ^[0-9]+$ ]] || die "not a number: '${n}'"
done

# Unix socket paths are limited to 107 bytes.
socket_path="${SOCKET_DIR}/.s.PGSQL.${PORT}"
((${#socket_path} <= 107)) || die "socket path too long (${#socket_path} > 107 bytes): ${socket_path}; use a shorter TALLY_LOCAL_DIR"

if ((EUID == 0)); then
  OS_USER="${OS_USER_DEFAULT}"
else
  OS_USER="$(id -un)"
fi

print_env() {
  printf 'TALLY_DATABASE_URL=postgresql://%s:%s@%s:%s/%s\n' \
    "${DB_USER}" "${DB_PASSWORD}" "${HOST}" "${1:-${PORT}}" "${DB_NAME}"
}

# The port of the running server (line 4 of postmaster.pid); it may differ from
# TALLY_PG_PORT in this shell.
running_port() {
  local port
  port="$(sed -n 4p "${DATA_DIR}/postmaster.pid" 2>/dev/null || true)"
  [[ "${port}" =~ ^[0-9]+$ ]] || port="${PORT}"
  printf '%s\n' "${port}"
}

# Run a command as the server's OS user, from a directory it can enter, with
# a fixed locale (English messages, no warnings about missing locales).
as_user() {
  if ((EUID == 0)); then
    (cd "${PG_DIR}" && LC_ALL=C.UTF-8 runuser -u "${OS_USER}" -- "$@")
  else
    (cd "${PG_DIR}" && LC_ALL=C.UTF-8 "$@")
  fi
}

find_bindir() {
  local dir
  if [[ -n "${TALLY_PG_BINDIR:-}" ]]; then
    [[ -x "${TALLY_PG_BINDIR}/pg_ctl" ]] || die "no pg_ctl in TALLY_PG_BINDIR=${TALLY_PG_BINDIR}"
    printf '%s\n' "${TALLY_PG_BINDIR}"
    return 0
  fi
  # Newest major version first.
  while IFS= read -r dir; do
    if [[ -x "${dir}/postgres" && -x "${dir}/initdb" && -x "${dir}/pg_ctl" ]]; then
      printf '%s\n' "${dir}"
      return 0
    fi
  done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -t/ -k4,4 -rV)
  return 1
}

install_postgres() {
  ((EUID == 0)) || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; install Debian's 'postgresql' package (or set TALLY_PG_BINDIR)"
  command -v apt-get >/dev/null || die "PostgreSQL server binaries not found and apt-get is unavailable"
  log "PostgreSQL server not found: installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q postgresql >&2
}

ensure_os_user() {
  ((EUID == 0)) || return 0
  id -u "${OS_USER}" >/dev/null 2>&1 && return 0
  log "creating system user ${OS_USER}"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "${OS_USER}"
}

# The server user must be able to reach PG_DIR: every ancestor needs +x for it.
ensure_traversable() {
  local dir="${PG_DIR}" ancestors=() i
  ((EUID == 0)) || return 0
  while [[ "${dir}" != "/" ]]; do
    dir="$(dirname "${dir}")"
    ancestors+=("${dir}")
  done
  # From / downwards, so each check sees its parents already fixed.
  for ((i = ${#ancestors[@]} - 1; i >= 0; i--)); do
    dir="${ancestors[i]}"
    if ! runuser -u "${OS_USER}" -- test -x "${dir}"; then
      log "granting search permission (o+x) on ${dir} so ${OS_USER} can reach ${PG_DIR}"
      chmod o+x "${dir}"
    fi
  done
}

prepare_dirs() {
  mkdir -p "${PG_DIR}"
  ensure_traversable
  if ((EUID == 0)); then
    chown "${OS_USER}:" "${PG_DIR}"
  fi
  chmod 0750 "${PG_DIR}"
  as_user mkdir -p "${SOCKET_DIR}"
  as_user chmod 0700 "${SOCKET_DIR}"
  as_user touch "${SERVER_LOG}"
}

init_cluster() {
  local pwfile
  [[ -f "${DATA_DIR}/PG_VERSION" ]] && return 0
  if [[ -e "${DATA_DIR}" ]]; then
    # A half-done initdb (interrupted): start over.
    log "removing incomplete data directory ${DATA_DIR}"
    rm -rf "${DATA_DIR}"
  fi
  log "initdb into ${DATA_DIR} (server user ${OS_USER})"
  pwfile="${PG_DIR}/.initdb-password"
  # shellcheck disable=SC2016  # expanded by the inner sh
  as_user sh -c 'umask 077 && printf "%s\n" "$1" >"$2"' sh "${DB_PASSWORD}" "${pwfile}"
  # Socket: trust (the socket directory is private to the server user);
  # TCP: scram-sha-256 passwords.
  if ! as_user "${BINDIR}/initdb" -D "${DATA_DIR}" -U "${DB_USER}" --pwfile="${pwfile}" \
    --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 --no-instructions >&2; then
    rm -f "${pwfile}"
    die "initdb failed"
  fi
  rm -f "${pwfile}"
  # shellcheck disable=SC2016  # expanded by the inner sh
  as_user sh -c 'printf "\n# Local test settings, rewritten by deploy/local/postgres.sh on every start.\ninclude = '"'"'tally.conf'"'"'\n" >>"$1"' \
    sh "${DATA_DIR}/postgresql.conf"
}

write_config() {
  # shellcheck disable=SC2016  # expanded by the inner sh
  as_user sh -c 'cat >"$1"' sh "${DATA_DIR}/tally.conf" <<EOF
# Generated by deploy/local/postgres.sh on every start; edits are overwritten.
listen_addresses = '${HOST}'
port = ${PORT}
unix_socket_directories = '${SOCKET_DIR}'
unix_socket_permissions = 0700
password_encryption = scram-sha-256

max_connections = 200
shared_buffers = 256MB
# Durable: tests crash Tally's process, not the OS, but keep the real thing.
fsync = on
synchronous_commit = on
full_page_writes = on
# Flushes write tens of MB of WAL at a time; checkpoints every few flushes
# would double that with full-page images.
max_wal_size = 4GB
checkpoint_timeout = 15min
wal_compression = on
work_mem = 32MB

timezone = 'UTC'
log_timezone = 'UTC'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
}

# The postmaster's pid from postmaster.pid, if that process is alive. pg_ctl
# status alone would count a killed but not yet reaped (zombie) postmaster.
postmaster_pid() {
  local pid
  pid="$(sed -n 1p "${DATA_DIR}/postmaster.pid" 2>/dev/null || true)"
  pid_alive "${pid}" || return 1
  printf '%s\n' "${pid}"
}

pg_running() {
  [[ -f "${DATA_DIR}/PG_VERSION" ]] || return 1
  postmaster_pid >/dev/null || return 1
  as_user "${BINDIR}/pg_ctl" status -D "${DATA_DIR}" >/dev/null 2>&1
}

# After a crash (kill -9), PostgreSQL refuses to start while the old postmaster's
# pid still exists, and a zombie does: wait until it has been reaped.
wait_old_postmaster() {
  local pid
  pid="$(sed -n 1p "${DATA_DIR}/postmaster.pid" 2>/dev/null || true)"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 0
  wait_reaped "${pid}" 30 || log "warning: old postmaster ${pid} is still a zombie; starting anyway"
}

ensure_database() {
  local exists
  exists="$(as_user "${BINDIR}/psql" -X -q -h "${SOCKET_DIR}" -p "${PORT}" -U "${DB_USER}" -d postgres \
    -tAc "SELECT 1 FROM pg_database WHERE datname = '${DB_NAME}'")"
  if [[ "${exists}" != "1" ]]; then
    log "creating database ${DB_NAME}"
    as_user "${BINDIR}/createdb" -h "${SOCKET_DIR}" -p "${PORT}" -U "${DB_USER}" -O "${DB_USER}" "${DB_NAME}" >&2
  fi
}

cmd_start() {
  local deadline port
  if pg_running; then
    port="$(running_port)"
    log "already running on ${HOST}:${port} (data ${DATA_DIR})"
    [[ "${port}" == "${PORT}" ]] || log "warning: running on port ${port}, not the requested ${PORT}"
    print_env "${port}"
    return 0
  fi
  if port_open "${HOST}" "${PORT}"; then
    die "${HOST}:${PORT} is already in use by another process (set TALLY_PG_PORT)"
  fi
  ensure_os_user
  prepare_dirs
  init_cluster
  write_config
  wait_old_postmaster

  log "starting on ${HOST}:${PORT}, log ${SERVER_LOG}"
  if ! as_user "${BINDIR}/pg_ctl" start -D "${DATA_DIR}" -l "${SERVER_LOG}" -w -t "${START_TIMEOUT}" >&2; then
    tail_log "${SERVER_LOG}" 40
    die "pg_ctl start failed"
  fi
  deadline=$((SECONDS + START_TIMEOUT))
  until "${BINDIR}/pg_isready" -q -h "${HOST}" -p "${PORT}" -d postgres -U "${DB_USER}"; do
    if ((SECONDS >= deadline)); then
      tail_log "${SERVER_LOG}" 40
      die "not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.3
  done
  ensure_database
  log "ready"
  print_env
}

cmd_stop() {
  if ! pg_running; then
    log "not running"
    return 0
  fi
  log "stopping (fast shutdown)"
  if ! as_user "${BINDIR}/pg_ctl" stop -D "${DATA_DIR}" -m fast -w -t "${STOP_TIMEOUT}" >&2; then
    log "fast shutdown timed out: immediate shutdown"
    as_user "${BINDIR}/pg_ctl" stop -D "${DATA_DIR}" -m immediate -w -t 10 >&2 || true
  fi
  pg_running && die "still running"
  log "stopped"
}

cmd_status() {
  if pg_running; then
    printf 'postgres: running on %s:%s (data %s)\n' "${HOST}" "$(running_port)" "${DATA_DIR}"
    return 0
  fi
  printf 'postgres: stopped (data %s)\n' "${DATA_DIR}"
  return 3
}

cmd_env() {
  if pg_running; then
    print_env "$(running_port)"
    return 0
  fi
  log "not running"
  return 3
}

case "${1:-}" in
  start | stop | status | env | restart) ;;
  *) usage "$0" ;;
esac

if ! BINDIR="$(find_bindir)"; then
  if [[ "$1" == start || "$1" == restart ]]; then
    install_postgres
    BINDIR="$(find_bindir)" || die "PostgreSQL server binaries still not found after installing"
  else
    # Nothing can be running from binaries that do not exist.
    case "$1" in
      stop) exit 0 ;;
      status) printf 'postgres: not installed\n' ;;
      env) log "not installed" ;;
    esac
    exit 3
  fi
fi

case "$1" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  restart)
    cmd_stop
    cmd_start
    ;;
esac
