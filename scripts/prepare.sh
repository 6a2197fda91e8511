#!/usr/bin/env bash
# Prepare this machine for running or testing peatio-ws: Debian packages
# (RabbitMQ, Redis, the AMQP spec), the local servers, and the virtualenv.
# Idempotent and quiet when there is nothing to do. Used by `make run` and
# `make test`; safe to run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

# pip warns about every missing local index directory configured on some hosts; not ours to fix.
quiet_pip() { grep -v "^WARNING: Location '.*' is ignored" || true; }
log() { printf 'prepare: %s\n' "$*" >&2; }
die() { printf 'prepare: ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

# --- Debian packages --------------------------------------------------------
want=(rabbitmq-server redis-server amqp-specs python3-venv)
[ -n "${PREPARE_EXTRA_PACKAGES:-}" ] && read -r -a extra <<<"$PREPARE_EXTRA_PACKAGES" && want+=("${extra[@]}")
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# python3-venv only matters when the interpreter cannot make a venv by itself.
if [[ " ${missing[*]} " == *" python3-venv "* ]] && python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing=("${missing[@]/python3-venv/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep . || true))
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # Do not let the package scripts start services through systemd/invoke-rc.d;
    # we start them below in a way that works with and without systemd.
    $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- servers ----------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    log "starting Redis"
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
    redis-cli -h 127.0.0.1 ping 2>/dev/null | grep -q PONG || die "Redis did not start (see /var/log/redis/ci.log)"
fi

if ! port_open 5672; then
    log "starting RabbitMQ"
    $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 120); do port_open 5672 && break; sleep 0.5; done
    port_open 5672 || die "RabbitMQ did not start on 127.0.0.1:5672 (see /var/log/rabbitmq/)"
    $SUDO rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi

# --- the virtualenv -----------------------------------------------------------
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer is needed ($PY is $("$PY" -V 2>&1))"
VENV=.venv
stamp="$VENV/.installed-$(cat setup.py | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    log "installing Python dependencies into $VENV"
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel 2> >(quiet_pip >&2)
    # Dependencies only; the code itself runs from this checkout.
    deps=$("$VENV/bin/python" - <<'PY'
import ast, pathlib
tree = ast.parse(pathlib.Path("setup.py").read_text())
for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg in ("install_requires", "extras_require"):
        value = ast.literal_eval(node.value)
        items = value if isinstance(value, list) else [d for group in value.values() for d in group]
        print("\n".join(items))
PY
)
    mapfile -t deplist <<<"$deps"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${deplist[@]}" 2> >(quiet_pip >&2)
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
