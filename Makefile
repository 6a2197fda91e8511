# peatio-ws: the two commands are `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: run test prepare lint unit lowest coverage check-install bench chaos demo dev-key clean mutation

## Install what is missing, then run the daemon in the foreground on the defaults. Without a
## JWT_PUBLIC_KEY, a development key pair is made in .dev/ (and said so, loudly). The queue is
## left in .dev/ at a stop, so `kill -USR2 <pid>` restarts it in place on the code as it is now,
## its clients still connected (docs/deploy.md section 11).
run: prepare
	@PY=$(PY) scripts/check-jwt-key.sh
	@set -a; [ -f .dev/jwt.env ] && [ -z "$${JWT_PUBLIC_KEY:-}" ] && . .dev/jwt.env; set +a; \
	mkdir -p .dev; export RABBITMQ_HANDOVER_FILE="$${RABBITMQ_HANDOVER_FILE:-$(CURDIR)/.dev/queue.json}"; \
	exec $(VENV)/bin/twistd -n --pidfile= peatio-ws $(ARGS)

## Install what is missing (chromium for the demo page's test, prometheus for promtool), then lint,
## type-check and run the whole trial suite in a random order (integration tests against the real
## RabbitMQ and Redis included; PEATIO_WS_MAKE_TEST=1: a missing promtool fails) under branch coverage,
## then the unit tests on the lowest versions setup.py accepts, then a plain `pip install .`.
test:
	@PREPARE_EXTRA_PACKAGES="chromium prometheus systemd" scripts/prepare.sh
	$(PY) -m ruff check .
	$(PY) -m mypy
	PEATIO_WS_MAKE_TEST=1 $(PY) -m coverage run -m twisted.trial --random=0 --temp-directory=.state/_trial_temp tests
	@$(MAKE) --no-print-directory coverage
	scripts/lowest.sh
	scripts/check-install.sh

## The branch coverage of peatio_ws/ by the last `make test` (or `coverage run`), by module.
coverage:
	@$(PY) -m coverage report --skip-covered --sort=cover | tail -n 25

prepare:
	@scripts/prepare.sh

lint: prepare
	$(PY) -m ruff check .
	$(PY) -m mypy

## The unit tests only: Twisted's fakes, no server needed.
unit: prepare
	$(PY) -m twisted.trial --random=0 --temp-directory=.state/_trial_temp tests.unit

## The unit tests on the lowest versions of the dependencies setup.py accepts (own .venv-lowest).
lowest: prepare
	scripts/lowest.sh

check-install: prepare
	scripts/check-install.sh

## A development key pair in .dev/ (used by `make run` when JWT_PUBLIC_KEY is unset).
dev-key: prepare
	@mkdir -p .dev
	$(PY) -m peatio_ws.cli keygen --reuse --out .dev/jwt-private.pem > .dev/jwt.env.new && mv .dev/jwt.env.new .dev/jwt.env
	@echo "wrote .dev/jwt-private.pem and .dev/jwt.env (JWT_PUBLIC_KEY=...)"

bench: prepare
	@set -o pipefail; stamp=$(VENV)/.bench-$$(sha1sum bench/requirements.txt | cut -c1-12); \
	if [ ! -f "$$stamp" ]; then \
		echo "bench: installing bench/requirements.txt into $(VENV) (for the benchmark only)"; \
		$(PY) -m pip install -q --disable-pip-version-check -r bench/requirements.txt 2>&1 \
			| { grep -v "^WARNING: Location '.*' is ignored" || true; } \
		&& rm -f $(VENV)/.bench-* && touch "$$stamp"; \
	fi
	$(PY) -m bench $(ARGS)

## The fault-injection suite, long version (PEATIO_WS_CHAOS=full; `make test` runs the quick one):
## broker faults (one node, and a three-node cluster losing its nodes), Redis and client faults and
## hostile input against the real servers. Prints the figures
## (also on failure), kept in .state/_trial_chaos/chaos-figures.txt; docs/reliability.md explains them.
chaos: prepare
	@status=0; PEATIO_WS_CHAOS=full $(PY) -m twisted.trial --temp-directory=.state/_trial_chaos \
		tests.unit.test_fuzz tests.chaos.test_chaos tests.chaos.test_chaos_cluster tests.chaos.test_chaos_redis \
		tests.chaos.test_chaos_clients tests.chaos.test_chaos_hostile tests.chaos.test_chaos_restart || status=$$?; \
	echo; echo "== chaos figures =="; \
	$(PY) -m tests.support.figures .state/_trial_chaos/chaos-figures.txt; exit $$status

## Mutation testing of the modules where a silent bug costs most (auth, registry, routing, uids, the
## legacy dialect, the order-book store, stream names) against their unit tests, each in a clone of
## the committed HEAD in /tmp (mutmut 2.5.1 in .venv-mutation). Slow: not in `make test`, run it
## before a release. `make mutation ARGS="uids routing"` for some modules; docs/testing.md has the scores.
mutation: prepare
	scripts/mutation.sh $(ARGS)

clean:
	rm -rf build dist *.egg-info .state _trial_temp .mypy_cache .ruff_cache .venv-lowest
	find . -name dropin.cache -delete

## Try it in five minutes: the daemon, a development key pair (.dev/, reused), the demo page on
## http://127.0.0.1:8090/ with a dev-only token endpoint, and sample orders and trades every second;
## a market panel (ranger public streams: one market's order book and trades); after a close 1012
## the page reconnects and reloads its orders from the demo's stand-in for the REST API.
## Ctrl-C stops everything. Options: make demo ARGS="--http-port 8091 --interval 0.5" (see --help).
demo: prepare
	@exec $(PY) demo/run.py $(ARGS)
