#!/usr/bin/env bash
# A local Redis for the redisstore tests: no persistence, 127.0.0.1 only.
#
#   eval "$(scripts/redis.sh start)"   install if missing, start, wait until ready, export TOLLGATE_REDIS_ADDR
#   scripts/redis.sh stop              stop the Redis this script started
#   scripts/redis.sh env               print the env var only
#
# redis-server is installed with apt-get when it is not in PATH. The server
# runs daemonized, not under systemd, with its pidfile, port and log in
# TOLLGATE_REDIS_DIR (default: a folder in TMPDIR). It listens on
# TOLLGATE_REDIS_PORT (default 16379), or on the next free port when that one
# is taken by something else. start prints only `export` lines on stdout
# (everything else goes to stderr) and reuses a Redis it started earlier that
# still answers.
set -euo pipefail

dir=${TOLLGATE_REDIS_DIR:-${TMPDIR:-/tmp}/tollgate-redis}
pidfile=$dir/redis.pid
portfile=$dir/port
logfile=$dir/redis.log
want_port=${TOLLGATE_REDIS_PORT:-16379}
ready_timeout=10 # seconds

log() { echo "redis.sh: $*" >&2; }

port() { cat "$portfile" 2>/dev/null || echo "$want_port"; }

print_env() { echo "export TOLLGATE_REDIS_ADDR=127.0.0.1:$(port)"; }

# running, stop
source "$(dirname "${BASH_SOURCE[0]}")/lib/pidfile.sh"

# answers PORT: a Redis answers PING on 127.0.0.1:PORT.
answers() (
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || true
  [ "${reply%$'\r'}" = "+PONG" ]
) 2>/dev/null

# taken PORT: something listens on 127.0.0.1:PORT.
taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install() {
  command -v redis-server >/dev/null && return
  log "installing redis-server"
  # A service the package may start listens on 6379, apart from ours.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2
}

start() {
  if running && answers "$(port)"; then
    log "already running (pid $(cat "$pidfile"), port $(port))"
    print_env
    return
  fi
  running && stop
  install
  mkdir -p "$dir"
  local p=$want_port
  while taken "$p"; do
    p=$((p + 1))
    [ "$p" -lt $((want_port + 100)) ] || { log "no free port in $want_port..$((want_port + 99))"; exit 1; }
  done
  [ "$p" = "$want_port" ] || log "port $want_port is taken; using $p"
  echo "$p" >"$portfile"
  rm -f "$pidfile"
  redis-server --bind 127.0.0.1 --port "$p" --save "" --appendonly no --protected-mode yes \
    --daemonize yes --pidfile "$pidfile" --logfile "$logfile" --dir "$dir" >&2
  local deadline=$((SECONDS + ready_timeout))
  until answers "$p"; do
    if [ $SECONDS -ge $deadline ]; then
      log "not ready after ${ready_timeout}s; its log ($logfile):"; tail -20 "$logfile" >&2; stop; exit 1
    fi
    sleep 0.1
  done
  log "ready (pid $(cat "$pidfile")) on 127.0.0.1:$p"
  print_env
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
env) print_env ;;
*) echo "usage: $0 [start|stop|env]" >&2; exit 2 ;;
esac
