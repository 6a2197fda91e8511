#!/usr/bin/env bash
# Used by `make run`: explain how to set JWT_PUBLIC_KEY when it is missing.
if [ -n "${JWT_PUBLIC_KEY:-}" ] || [ -f .dev/jwt.env ]; then exit 0; fi
grep -qE '^JWT_PUBLIC_KEY: *[^" ]' "${CONFIG:-etc/application.yml}" 2>/dev/null && exit 0
cat >&2 <<'MSG'
peatio-ws needs JWT_PUBLIC_KEY: the public key that verifies Barong's tokens,
as URL-safe base64 of its PEM (Peatio's convention). Either

  * use your Barong key:
      export JWT_PUBLIC_KEY=$(base64 -w0 barong-public.pem | tr '+/' '-_')
      make run

  * or, for development, make a key pair here and run again:
      make dev-key      # writes .dev/jwt-private.pem and .dev/jwt.env
      make run          # picks up .dev/jwt.env
    and mint a token to connect with:
      .venv/bin/python -m peatio_ws.cli token --uid ID1A2B3C4D5E --key .dev/jwt-private.pem
MSG
exit 1
