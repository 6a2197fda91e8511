#!/usr/bin/env bash
# Prove that a plain, non-editable `pip install .` into a fresh virtualenv
# gives a working `twistd peatio-ws`, run from a directory that is not the
# checkout, with the packaged defaults, and that a bad setting stops start-up
# with one clear line.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
work=$(mktemp -d /tmp/peatio-ws-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "check-install: FAIL: $*" >&2; exit 1; }

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$src" >"$work/pip.log" 2>&1 \
    || { cat "$work/pip.log" >&2; fail "pip install . failed"; }
cd /
unset PYTHONPATH
[ -f "$work"/venv/lib/python3*/site-packages/twisted/plugins/peatio_ws_plugin.py ] || fail "plugin not installed"
# Capture first: grep -q exiting early would give twistd a broken pipe under pipefail.
help=$("$work/venv/bin/twistd" --help) || fail "twistd --help failed"
grep -q "peatio-ws" <<<"$help" || fail "twistd --help does not list peatio-ws"
help=$("$work/venv/bin/twistd" peatio-ws --help) || fail "twistd peatio-ws --help failed"
grep -q -- "--config" <<<"$help" || fail "twistd peatio-ws --help does not show --config"
"$work/venv/bin/peatio-ws" --help >/dev/null || fail "peatio-ws console script"

set +e
out=$(WEBSOCKET_PORT=notaport JWT_PUBLIC_KEY=x "$work/venv/bin/twistd" -n --pidfile= peatio-ws 2>&1); rc=$?
set -e
[ "$rc" != 0 ] || fail "a bad WEBSOCKET_PORT did not stop start-up"
[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "expected one line, got: $out"
printf '%s\n' "$out" | grep -q "WEBSOCKET_PORT" || fail "the error does not name WEBSOCKET_PORT: $out"

set +e
out=$(JWT_PUBLIC_KEY=not-a-key "$work/venv/bin/twistd" -n --pidfile= peatio-ws 2>&1); rc=$?
set -e
[ "$rc" != 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && printf '%s\n' "$out" | grep -q JWT_PUBLIC_KEY \
    || fail "an unreadable JWT_PUBLIC_KEY did not give one line naming it: $out"
echo "check-install: non-editable install OK (twistd peatio-ws found, defaults packaged, config errors are one line)"
