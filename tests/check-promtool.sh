#!/usr/bin/env bash
# Validates the operations artefacts in deploy/:
#   1. promtool check rules   deploy/prometheus/alerts.yml deploy/prometheus/recording.yml
#   2. promtool test rules    deploy/prometheus/alerts_test.yml   (every alert fires / stays quiet)
#   3. deploy/check-dashboard.py: the Grafana dashboard is well-formed and every PromQL expression
#      (dashboard and rules) uses only metrics and labels Postrider defines; it also writes every
#      dashboard expression into a throw-away rule file that promtool then parses (PromQL syntax)
#   4. deploy/check-manifests.py: every YAML file under deploy/ parses, the Kubernetes manifests
#      agree with each other and the PrometheusRule holds exactly the groups of the rule files
#   5. haproxy -c: deploy/haproxy/haproxy.cfg is a valid HAProxy configuration
#
# Installs Debian's `prometheus` (for promtool) and `haproxy` packages when missing, without
# starting their services. Exits non-zero on the first failure.
#
# usage: tests/check-promtool.sh       (from anywhere inside the repository)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run() {
  echo "+ $*"
  "$@"
}

packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v haproxy >/dev/null 2>&1 || packages+=(haproxy)
if ((${#packages[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing ${packages[*]} and cannot install it here (needs root and apt-get)" >&2
    exit 1
  fi
  echo "installing Debian's ${packages[*]} for promtool / haproxy -c (service start suppressed)"
  # policy-rc.d exit status 101 = "action forbidden": invoke-rc.d then never starts the daemons
  # the packages' maintainer scripts would otherwise launch. Any existing policy is restored.
  policy=/usr/sbin/policy-rc.d
  saved=""
  if [[ -e $policy ]]; then
    saved=$(mktemp)
    cp -p "$policy" "$saved"
  fi
  restore_policy() {
    if [[ -n $saved ]]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  export DEBIAN_FRONTEND=noninteractive
  run apt-get update -qq
  echo "+ apt-get install -y -qq --no-install-recommends ${packages[*]}"
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  restore_policy
  trap - EXIT
fi
echo "using $(promtool --version 2>&1 | sed -n 1p)"

python=${PYTHON:-python3}
if ! "$python" -c 'import yaml' 2>/dev/null; then
  echo "PyYAML missing: installing it"
  run "$python" -m pip install --quiet pyyaml
fi

run promtool check rules deploy/prometheus/alerts.yml deploy/prometheus/recording.yml
run promtool test rules deploy/prometheus/alerts_test.yml

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
run "$python" deploy/check-dashboard.py --emit-rules "$scratch/dashboard-exprs.yml"
run promtool check rules "$scratch/dashboard-exprs.yml"
run "$python" deploy/check-manifests.py
run haproxy -c -q -f deploy/haproxy/haproxy.cfg

echo "check-promtool: all operations checks passed"
