#!/usr/bin/env bash
# A local Jaeger v2 for tollgate's traces and e2e tests: in-memory storage,
# every listener on 127.0.0.1 (tools/jaeger/config-loopback.yaml).
#
#   eval "$(scripts/jaeger.sh start)"   build once, start, wait until ready, export the env vars
#   scripts/jaeger.sh stop              stop the Jaeger this script started
#   scripts/jaeger.sh env               print the env vars only
#
# The binary is built from tools/jaeger (its own go.mod: Jaeger pins an older
# OpenTelemetry than tollgate) into .bin/jaeger, once, and again whenever
# tools/jaeger/go.sum changes; the first build takes minutes. start prints
# only `export` lines on stdout (everything else goes to stderr) and reuses a
# Jaeger it started earlier that is still healthy. Ports can be changed with
# the TOLLGATE_JAEGER_*_PORT variables the config names.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export GOTOOLCHAIN=local

bin=.bin/jaeger
stamp=.bin/jaeger.go.sum # the go.sum the binary was built from
pidfile=.bin/jaeger.pid
logfile=.bin/jaeger.log
config=tools/jaeger/config-loopback.yaml

export TOLLGATE_JAEGER_OTLP_GRPC_PORT=${TOLLGATE_JAEGER_OTLP_GRPC_PORT:-14317}
export TOLLGATE_JAEGER_OTLP_HTTP_PORT=${TOLLGATE_JAEGER_OTLP_HTTP_PORT:-14318}
export TOLLGATE_JAEGER_QUERY_PORT=${TOLLGATE_JAEGER_QUERY_PORT:-16696}
export TOLLGATE_JAEGER_QUERY_GRPC_PORT=${TOLLGATE_JAEGER_QUERY_GRPC_PORT:-16695}
export TOLLGATE_JAEGER_HEALTH_PORT=${TOLLGATE_JAEGER_HEALTH_PORT:-13143}
health=http://127.0.0.1:$TOLLGATE_JAEGER_HEALTH_PORT/status
query=http://127.0.0.1:$TOLLGATE_JAEGER_QUERY_PORT
ready_timeout=${TOLLGATE_JAEGER_READY_TIMEOUT:-60} # seconds

log() { echo "jaeger.sh: $*" >&2; }

print_env() {
  echo "export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$TOLLGATE_JAEGER_OTLP_HTTP_PORT"
  echo "export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
  echo "export TOLLGATE_JAEGER_QUERY=$query"
}

# running, stop
source "$(dirname "${BASH_SOURCE[0]}")/lib/pidfile.sh"
healthy() { curl -fs -o /dev/null --max-time 2 "$health" && curl -fs -o /dev/null --max-time 2 "$query/api/v3/services"; }

build() {
  if [ -x "$bin" ] && [ -f "$stamp" ] && cmp -s tools/jaeger/go.sum "$stamp"; then
    return
  fi
  log "building $bin from tools/jaeger (minutes the first time)"
  mkdir -p .bin
  local start=$SECONDS
  (cd tools/jaeger && go build -o "$root/$bin" github.com/jaegertracing/jaeger/cmd/jaeger) >&2
  cp tools/jaeger/go.sum "$stamp"
  log "built in $((SECONDS - start))s"
}

start() {
  command -v curl >/dev/null || { log "curl is needed to wait for Jaeger"; exit 1; }
  if running && healthy; then
    log "already running (pid $(cat "$pidfile"))"
    print_env
    return
  fi
  running && stop
  build
  if curl -fsS -o /dev/null --max-time 2 "$health" 2>/dev/null; then
    log "something else already answers on $health; set TOLLGATE_JAEGER_*_PORT"
    exit 1
  fi
  # setsid: the server outlives this script and a Ctrl-C of the caller.
  setsid "$bin" --config "$config" >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + ready_timeout))
  until healthy; do
    if ! running; then
      log "exited at start; its log ($logfile):"; tail -20 "$logfile" >&2; rm -f "$pidfile"; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "not ready after ${ready_timeout}s; its log ($logfile):"; tail -20 "$logfile" >&2; stop; exit 1
    fi
    sleep 0.2
  done
  log "ready (pid $(cat "$pidfile")): OTLP http://127.0.0.1:$TOLLGATE_JAEGER_OTLP_HTTP_PORT, query/UI $query"
  print_env
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
env) print_env ;;
build) build ;;
*) echo "usage: $0 [start|stop|env|build]" >&2; exit 2 ;;
esac
