#!/usr/bin/env bash
# Make sure the system tools and real services Keel's tests use are present and
# running: promtool (Debian `prometheus`), PostgreSQL, Redis, NATS with JetStream.
# Idempotent: installs only what is missing, starts only what is stopped.
# Used by .ci/run; developers and tests may call it too.
set -euo pipefail
shopt -s inherit_errexit

log() { echo "services: $*" >&2; }
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi

apt_updated=""
apt_install() {
  if [[ -z "$apt_updated" ]]; then
    $SUDO apt-get update -qq >&2
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

wait_port() {  # host port name
  local i
  for i in $(seq 1 60); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  log "$3 did not start listening on $1:$2 within 30 s"
  return 1
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- tools -----------------------------------------------------------------
command -v promtool >/dev/null 2>&1 || { log "installing promtool (prometheus)"; apt_install prometheus; }
command -v flock >/dev/null 2>&1 || apt_install util-linux
command -v sqlite3 >/dev/null 2>&1 || true  # not needed: Python's sqlite3 is used

# --- PostgreSQL --------------------------------------------------------------
if ! port_open 127.0.0.1 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing postgresql"
    apt_install postgresql
  fi
  ver="$(ls /etc/postgresql | sort -V | tail -n1)"
  log "starting PostgreSQL $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_port 127.0.0.1 5432 postgresql
fi

# --- Redis -------------------------------------------------------------------
if ! port_open 127.0.0.1 6379; then
  command -v redis-server >/dev/null 2>&1 || { log "installing redis-server"; apt_install redis-server; }
  log "starting redis-server"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 127.0.0.1 6379 redis
fi

# --- NATS with JetStream -----------------------------------------------------
if ! port_open 127.0.0.1 4222; then
  command -v nats-server >/dev/null 2>&1 || [[ -x /usr/sbin/nats-server ]] || { log "installing nats-server"; apt_install nats-server; }
  log "starting nats-server -js"
  $SUDO mkdir -p /var/lib/nats-server
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port 127.0.0.1 4222 nats
fi

log "promtool $(promtool --version 2>&1 | head -n1 | awk '{print $3}'), postgresql:5432, redis:6379, nats:4222 — ready"
