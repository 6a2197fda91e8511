#!/usr/bin/env bash
# Run the unit tests against the LOWEST versions setup.py accepts (each
# `>=X` or `==X` taken as `==X`): the habit of Klein and Twisted itself. A
# version floor that is only written down is a guess; this makes it a fact.
# The virtualenv (.venv-lowest) is made once per setup.py and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
quiet_pip() { grep -v "^WARNING: Location '.*' is ignored" || true; }
VENV=.venv-lowest
stamp="$VENV/.installed-$(sha1sum setup.py | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    pins=$("$VENV/bin/python" - <<'PY'
import ast, pathlib, re
tree = ast.parse(pathlib.Path("setup.py").read_text())
for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg == "install_requires":
        for requirement in ast.literal_eval(node.value):
            name, low = re.match(r"([A-Za-z0-9_.\-\[\]]+)\s*(?:>=|==)\s*([0-9][0-9.]*)", requirement).groups()
            print(f"{name}=={low}")
PY
)
    echo "lowest: installing $(echo $pins | tr '\n' ' ')"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check $pins websockets hypothesis matplotlib 2> >(quiet_pip >&2)
    touch "$stamp"
fi
"$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE "^(twisted|autobahn|pyjwt|txamqp|txredisapi|pyyaml|prometheus.client|orjson) " | tr -s ' ' | paste -sd, -
PEATIO_WS_MAKE_TEST=1 exec "$VENV/bin/python" -m twisted.trial --temp-directory=.state/_trial_lowest tests.unit
