#!/usr/bin/env bash
# Mutation testing (issue 17): how many deliberate small breaks of the modules
# where a silent bug costs most do the unit tests catch? Slow (15 minutes to
# over an hour on a busy 2-core machine): run before a release, never in
# `make test`.
#
#   scripts/mutation.sh                 every module below
#   scripts/mutation.sh uids routing    only these (names from the table)
#
# mutmut rewrites the source files IN PLACE, one mutant at a time, so it never
# runs in this checkout: each module gets its own clone of the committed HEAD
# (uncommitted changes are not measured) in a temporary directory, with its
# own .mutmut-cache, and the unit tests that cover that module as the runner
# (trial with this checkout's .venv, PYTHONPATH set to the clone).
#
# Environment: MUTATION_WORKDIR (default: a new /tmp/peatio-ws-mutation.XXXXXX;
# an existing one keeps each module's clone and cache, so an interrupted run
# resumes where it stopped), MUTATION_NICE (default 19), MUTATION_MIN_TIMEOUT
# (default 120: seconds a mutant's test run may take before it counts as hung).
# The results stay in the work directory; a summary is also copied to
# .state/mutation-summary.txt. docs/testing.md records the last scores and
# explains every surviving mutant.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=$REPO/.venv/bin/python
MUTVENV=$REPO/.venv-mutation
MUTMUT_VERSION=2.5.1
quiet_pip() { grep -v "^WARNING: Location '.*' is ignored" || true; }
log() { printf 'mutation: %s\n' "$*" >&2; }
die() { printf 'mutation: ERROR: %s\n' "$*" >&2; exit 1; }

# name | module | the unit test modules that cover it (the fastest relevant ones)
MODULES=(
    "uids|peatio_ws/uids.py|tests.unit.test_uids tests.unit.test_amqp_routing"
    "routing|peatio_ws/amqp/routing.py|tests.unit.test_amqp_routing"
    "names|peatio_ws/streams/names.py|tests.unit.test_streams_names tests.unit.test_mutants_streams"
    "orderbook|peatio_ws/streams/orderbook.py|tests.unit.test_streams_orderbook tests.unit.test_streams_hub tests.unit.test_mutants_streams"
    "legacy|peatio_ws/websocket/legacy.py|tests.unit.test_protocol tests.unit.test_connection_logs tests.unit.test_mutants_streams"
    "registry|peatio_ws/registry.py|tests.unit.test_registry tests.unit.test_registry_batch"
    "auth|peatio_ws/auth.py|tests.unit.test_auth tests.unit.test_pyjwt_door"
)

[ -x "$PY" ] || die "$PY not found: run 'make prepare' first"
git rev-parse --verify -q HEAD >/dev/null || die "no commit to clone"

# --- the mutmut virtualenv (its own: mutmut's pins stay out of .venv) ------------
stamp="$MUTVENV/.installed-mutmut-$MUTMUT_VERSION"
if [ ! -f "$stamp" ]; then
    if ! "$MUTVENV/bin/mutmut" version 2>/dev/null | grep -qx "mutmut version $MUTMUT_VERSION"; then
        log "installing mutmut==$MUTMUT_VERSION into $MUTVENV"
        [ -x "$MUTVENV/bin/python" ] || python3 -m venv "$MUTVENV"
        "$MUTVENV/bin/python" -m pip install -q --disable-pip-version-check "mutmut==$MUTMUT_VERSION" 2> >(quiet_pip >&2)
    fi
    touch "$stamp"
fi
MUTMUT=$MUTVENV/bin/mutmut

# --- which modules -------------------------------------------------------------------
selected=()
if [ "$#" -eq 0 ]; then
    selected=("${MODULES[@]}")
else
    for want in "$@"; do
        found=""
        for spec in "${MODULES[@]}"; do
            [ "${spec%%|*}" = "$want" ] && found=$spec
        done
        [ -n "$found" ] || die "unknown module '$want' (one of: $(printf '%s ' "${MODULES[@]%%|*}"))"
        selected+=("$found")
    done
fi

WORK=${MUTATION_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/peatio-ws-mutation.XXXXXX")}
mkdir -p "$WORK"
case "$(cd "$WORK" && pwd)/" in
    "$REPO"/*) die "MUTATION_WORKDIR must be outside the checkout ($REPO): mutmut edits files in place" ;;
esac
NICE=(nice -n "${MUTATION_NICE:-19}")
MIN_TIMEOUT=${MUTATION_MIN_TIMEOUT:-120}
RUNNING=""
# mutmut runs in a session of its own (so that a hung one can be stopped whole): stop it with us.
trap '[ -z "$RUNNING" ] || kill -- "-$RUNNING" 2>/dev/null || true' EXIT
SUMMARY=$WORK/summary.txt
head=$(git rev-parse --short HEAD)
started=$(date +%s)
{
    echo "mutation testing of $REPO (HEAD $head) with mutmut $MUTMUT_VERSION, $(date -u +%Y-%m-%dT%H:%MZ)"
    printf '%-10s %-8s %-31s %6s %6s %6s %8s  %s\n' module commit file killed total score timeouts \
        "survivors (mutmut ids)"
} >"$SUMMARY"

ids() { "$MUTMUT" result-ids "$1" 2>/dev/null | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'; }
count() { local n=0 _; for _ in $1; do n=$((n + 1)); done; echo "$n"; }

# Mark the mutants of a status untested again, so that the next `mutmut run` tries them.
retry() {
    "$MUTVENV/bin/python" -c 'import sqlite3, sys
db = sqlite3.connect(".mutmut-cache")
db.execute("UPDATE Mutant SET status = ? WHERE status = ?", ("untested", sys.argv[1]))
db.commit()' "$1"
}

# One module: the unmutated run first (it must pass; its time sets mutmut's
# timeout, ten times as long, with a floor of MUTATION_MIN_TIMEOUT seconds so
# that a loaded machine does not turn a survivor into a "timeout"), then
# mutmut, watched: mutmut 2.5.1's worker process can die (a cache lookup
# failing now and then), leaving the main process waiting for ever; it is
# then stopped and the run resumed. Timeouts are tried once more.
run_module() {
    local name=$1 path=$2 clone=$3 log=$WORK/$1.log attempt=0 retried="" start pid begun elapsed
    begun=$(date +%s.%N)
    "${NICE[@]}" "$WORK/$name.runner" || die "$name: the tests fail without mutations (run $WORK/$name.runner)"
    elapsed=$(awk -v a="$begun" -v b="$(date +%s.%N)" -v floor="$MIN_TIMEOUT" \
        'BEGIN { t = b - a; if (t < floor / 10) t = floor / 10; print t }')
    (cd "$clone" && "$MUTVENV/bin/python" -c 'import sys
from mutmut.cache import hash_of_tests, set_cached_test_time
set_cached_test_time(float(sys.argv[1]), hash_of_tests(["tests/unit"]))' "$elapsed" >/dev/null)
    : >>"$log"
    while [ "$attempt" -lt 4 ]; do
        attempt=$((attempt + 1))
        start=$(wc -l <"$log")
        (cd "$clone" && exec setsid "${NICE[@]}" "$MUTMUT" run --paths-to-mutate "$path" --tests-dir tests/unit \
            --runner "$WORK/$name.runner" --simple-output --no-progress >>"$log" 2>&1) &
        pid=$!
        RUNNING=$pid
        while kill -0 "$pid" 2>/dev/null; do
            sleep 10
            if tail -n +"$((start + 1))" "$log" | grep -q '^Traceback'; then
                sleep 60
                if kill -0 "$pid" 2>/dev/null; then
                    log "$name: mutmut's worker died (see $log); resuming"
                    kill -- "-$pid" 2>/dev/null || kill "$pid"
                fi
                break
            fi
        done
        wait "$pid" || true
        RUNNING=""
        # Killed mid-mutant: put the module back as it was.
        [ ! -f "$clone/$path.bak" ] || mv "$clone/$path.bak" "$clone/$path"
        if [ -z "$retried" ] && [ -n "$(cd "$clone" && ids timeout)" ]; then
            retried=1
            (cd "$clone" && retry bad_timeout)
            continue
        fi
        [ -n "$(cd "$clone" && ids untested)" ] || break
    done
}

for spec in "${selected[@]}"; do
    IFS='|' read -r name path tests <<<"$spec"
    clone=$WORK/$name
    if [ ! -d "$clone/.git" ]; then
        git clone -q "$REPO" "$clone"
    fi
    for t in $tests; do
        [ -f "$clone/${t//.//}.py" ] || die "$name: $t not in the committed tree"
    done
    # Any failure, an import error included, must be exit code 1: mutmut
    # 2.x counts every other exit code as "the tests passed".
    cat >"$WORK/$name.runner" <<EOF
#!/usr/bin/env bash
cd "$clone" && PYTHONPATH="$clone" "$PY" -m twisted.trial --exitfirst --temp-directory="$clone/.trial" $tests >/dev/null 2>&1 || exit 1
EOF
    chmod +x "$WORK/$name.runner"
    log "$name: mutating $path against $tests (clone in $clone)"
    t0=$(date +%s)
    run_module "$name" "$path" "$clone"
    cd "$clone"
    killed=$(count "$(ids killed) $(ids suspicious)")
    timeouts=$(ids timeout)
    survived=$(ids survived)
    untested=$(count "$(ids untested) $(ids skipped)")
    cd "$REPO"
    nt=$(count "$timeouts")
    ns=$(count "$survived")
    total=$((killed + nt + ns + untested))
    caught=$((killed + nt))
    score=$(awk -v k="$caught" -v t="$total" 'BEGIN { if (t) printf "%.1f%%", 100 * k / t; else print "-" }')
    commit=$(git -C "$clone" rev-parse --short HEAD)
    printf '%-10s %-8s %-31s %6s %6s %6s %8s  %s\n' "$name" "$commit" "$path" "$caught" "$total" "$score" "$nt" \
        "${survived:--}" >>"$SUMMARY"
    [ "$untested" -eq 0 ] || echo "  $name: $untested mutants untested (the run was interrupted?)" >>"$SUMMARY"
    log "$name: $caught of $total killed ($score) in $(($(date +%s) - t0)) s; survivors: ${survived:-none}"
done

{
    echo "killed counts mutmut's killed, suspicious (killed, slowly) and timeout (hung past ten times the"
    echo "unmutated run, at least $MIN_TIMEOUT s, twice)"
    echo "run time: $(($(date +%s) - started)) s"
    echo "a survivor's diff: cd $WORK/<module> && $MUTMUT show <id>"
} >>"$SUMMARY"
mkdir -p .state
cp "$SUMMARY" .state/mutation-summary.txt
echo
cat "$SUMMARY"
