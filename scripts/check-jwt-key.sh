#!/usr/bin/env bash
# Used by `make run`, before the daemon starts. When JWT_PUBLIC_KEY is set
# nowhere (environment, etc/application.yml), make the development key pair
# in .dev/ (or reuse the one there) and say so loudly: what it is, where the
# private key is, how to mint a token, how to use the exchange's real key.
# `make run` then reads .dev/jwt.env. The daemon itself never makes a key.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEV=.dev
KEY=$DEV/jwt-private.pem
ENV_FILE=$DEV/jwt.env

if [ -n "${JWT_PUBLIC_KEY:-}" ]; then exit 0; fi
grep -qE '^JWT_PUBLIC_KEY: *[^" ]' "${CONFIG:-etc/application.yml}" 2>/dev/null && exit 0

made=""
if [ ! -s "$ENV_FILE" ] || [ ! -f "$KEY" ]; then
    mkdir -p "$DEV"
    # --reuse: a private key already there (the demo's) is kept, only its public half written.
    "$PY" -m peatio_ws.cli keygen --reuse --out "$KEY" >"$ENV_FILE.new"
    mv "$ENV_FILE.new" "$ENV_FILE"
    made=1
fi

bar=$(printf '%.0s=' $(seq 1 78))
if [ -n "$made" ]; then
    headline="JWT_PUBLIC_KEY is not set: \`make run\` made a DEVELOPMENT key pair in $DEV/"
else
    headline="JWT_PUBLIC_KEY is not set: \`make run\` uses the DEVELOPMENT key pair in $DEV/"
fi
cat >&2 <<MSG
$bar
  $headline
  FOR DEVELOPMENT ONLY: anyone with the private key can log in as any member.

    private key: $KEY   (signs tokens; keep it out of production)
    public key:  $ENV_FILE   (JWT_PUBLIC_KEY=..., read by \`make run\`)

  Mint a token to connect with (send {"jwt":"Bearer <token>"}):
    $PY -m peatio_ws.cli token --uid ID1A2B3C4D5E --key $KEY

  To use the exchange's real key (Barong's public key) instead:
    export JWT_PUBLIC_KEY=\$(base64 -w0 barong-public.pem | tr '+/' '-_')
    make run        # the environment wins over $DEV/; rm -r $DEV to forget it
$bar
MSG
