#!/usr/bin/env bash
# A PostgreSQL server on loopback for the team setup (docs/team.md), for development and tests.
#
#   scripts/postgres-local.sh start    initdb (first time), start the server on 127.0.0.1 and a free port,
#                                      create a database and a user for MLflow runs, for MLflow's login
#                                      store (basic-auth) and for Optuna studies; print the export lines
#   scripts/postgres-local.sh stop     stop exactly the server `start` started (pg_ctl on its data directory)
#   scripts/postgres-local.sh status   exit 0 and print the export lines if running, 3 if not
#
# Everything (data directory, socket, log, credentials) lives in ${PG_LOCAL_DIR:-/tmp/lenet-sweep-postgres};
# `stop` keeps it, so the next `start` serves the same databases (delete the directory to start afresh).
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user (PG_LOCAL_USER),
# otherwise as the calling user. Needs Debian's `postgresql` package (.ci/run installs it); tested on
# Debian 12 / PostgreSQL 15. Passwords are random, kept in $PG_LOCAL_DIR/credentials.env (mode 0600).
set -euo pipefail

STATE=${PG_LOCAL_DIR:-/tmp/lenet-sweep-postgres}
DATA=$STATE/data
SOCKETS=$STATE/run      # unix socket: the script's own admin connection (peer auth), no TCP password needed
LOG=$STATE/postgres.log
CREDENTIALS=$STATE/credentials.env
HOST=127.0.0.1
# database = user name; each user owns its database and nothing else
DATABASES=(mlflow mlflow_auth optuna)

say() { echo "postgres-local: $*"; }
die() { echo "postgres-local: ERROR: $*" >&2; exit 1; }

if ((EUID == 0)); then SERVER_USER=${PG_LOCAL_USER:-postgres}; else SERVER_USER=$(id -un); fi

# The newest installed server's binaries (Debian keeps them off PATH, under /usr/lib/postgresql/<major>/bin).
find_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $dir && -x $dir/pg_ctl ]] || die "no PostgreSQL server in /usr/lib/postgresql: install the package" \
    "postgresql first (apt-get install --no-install-recommends postgresql; .ci/run does)"
  echo "$dir"
}

as_server_user() {
  if ((EUID == 0)); then runuser -u "$SERVER_USER" -- "$@"; else "$@"; fi
}

# The postmaster's pid if the server of this data directory runs (its postmaster.pid names a live postgres).
server_pid() {
  local pid
  [[ -r $DATA/postmaster.pid ]] || return 1
  pid=$(head -n 1 "$DATA/postmaster.pid")
  [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] || return 1   # guards pid reuse
  alive "$pid" || return 1
  echo "$pid"
}

# A TCP port on 127.0.0.1 that nothing listens on right now (PG_LOCAL_PORT picks one).
free_port() {
  local port
  if [[ -n ${PG_LOCAL_PORT:-} ]]; then echo "$PG_LOCAL_PORT"; return; fi
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "found no free port on $HOST"
}

# Whether process $1 runs (a zombie whose parent has not reaped it does not).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

new_password() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }   # hex: nothing to escape in a URL

# First start: the state directory, the cluster and the credentials (port and passwords) it keeps using.
init_state() {
  local bindir=$1 name
  mkdir -p "$STATE"
  chmod 711 "$STATE"   # the server user must reach $DATA; nobody may list the directory
  as_server_user test -x "$STATE" ||
    die "user $SERVER_USER cannot reach $STATE: choose a PG_LOCAL_DIR whose parents others may traverse"
  if [[ ! -s $CREDENTIALS ]]; then
    (
      umask 077
      {
        echo "PG_LOCAL_PORT=$(free_port)"
        for name in "${DATABASES[@]}"; do echo "PASSWORD_${name^^}=$(new_password)"; done
      } >"$CREDENTIALS.new"
    )
    mv "$CREDENTIALS.new" "$CREDENTIALS"
  fi
  if [[ ! -s $DATA/PG_VERSION ]]; then
    mkdir -p "$DATA"
    chown "$SERVER_USER" "$DATA"
    chmod 700 "$DATA"
    # TCP logins by password only (scram); the socket admits only the server user itself (peer).
    as_server_user "$bindir/initdb" -D "$DATA" --auth-host=scram-sha-256 --auth-local=peer \
      --encoding=UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 ||
      { cat "$STATE/initdb.log" >&2; die "initdb failed (log above)"; }
  fi
  mkdir -p "$SOCKETS"
  chown "$SERVER_USER" "$SOCKETS"
  chmod 700 "$SOCKETS"
  touch "$LOG"
  chown "$SERVER_USER" "$LOG"
}

# Create (or re-password) each database's owner and the database itself.
create_databases() {
  local bindir=$1 name password
  for name in "${DATABASES[@]}"; do
    password=$(credential "PASSWORD_${name^^}")
    as_server_user "$bindir/psql" -h "$SOCKETS" -p "$(credential PG_LOCAL_PORT)" -d postgres -qtA \
      -v ON_ERROR_STOP=1 -v name="$name" -v password="$password" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'name') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name')
\gexec
ALTER ROLE :"name" WITH LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name')
\gexec
SQL
  done
}

credential() { sed -n "s/^$1=//p" "$CREDENTIALS"; }

print_exports() {
  local port; port=$(credential PG_LOCAL_PORT)
  url() { echo "postgresql+psycopg://$1:$(credential "PASSWORD_${1^^}")@$HOST:$port/$1"; }
  echo "export PG_MLFLOW_URI=$(url mlflow)"
  echo "export PG_MLFLOW_AUTH_URI=$(url mlflow_auth)"
  echo "export PG_OPTUNA_URI=$(url optuna)"
}

do_start() {
  local bindir pid
  bindir=$(find_bindir)
  if pid=$(server_pid); then
    say "already running (pid $pid, state in $STATE)"
    print_exports
    return 0
  fi
  init_state "$bindir"
  as_server_user "$bindir/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start -o \
    "-c listen_addresses=$HOST -p $(credential PG_LOCAL_PORT) -c unix_socket_directories=$SOCKETS" >/dev/null ||
    { tail -n 20 "$LOG" >&2; die "the server did not start (log: $LOG)"; }
  pid=$(server_pid) || { tail -n 20 "$LOG" >&2; die "the server exited during startup (log: $LOG)"; }
  create_databases "$bindir" || { do_stop; die "could not create the databases"; }
  say "running: pid $pid, $HOST:$(credential PG_LOCAL_PORT), databases ${DATABASES[*]}, state in $STATE"
  print_exports
}

do_stop() {
  local pid
  if ! pid=$(server_pid); then
    say "not running"
    return 0
  fi
  # fast: roll back open transactions and disconnect clients, then shut down cleanly
  as_server_user "$(find_bindir)/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null || true
  if alive "$pid"; then
    say "postgres (pid $pid) still running 30 s after a fast shutdown; sending SIGQUIT"
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  fi
  say "stopped postgres (pid $pid)"
}

do_status() {
  local pid
  if pid=$(server_pid); then
    say "postgres running (pid $pid, $HOST:$(credential PG_LOCAL_PORT), state in $STATE)"
    print_exports
  else
    say "postgres not running (state in $STATE)"
    return 3
  fi
}

case ${1:-} in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
