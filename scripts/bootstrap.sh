#!/usr/bin/env bash
# Create .venv and install the locked dependencies (requirements.lock) plus loom-ray itself (editable).
# Re-running is cheap: nothing happens while the lock and pyproject.toml are unchanged.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "bootstrap: Python >= 3.11 needed" >&2; exit 1; }

# Debian packages of the browser, Prometheus and head-loss tests (tests/integration/test_dashboard.py,
# tests/unit/test_prometheus_rules.py, tests/integration/test_production.py): chromium, prometheus (with
# promtool), redis-server (Ray's GCS fault tolerance). Installed only where missing and
# apt-get can run (root, or passwordless sudo); elsewhere those tests skip and say what is missing.
need=()
command -v chromium >/dev/null || need+=(chromium)
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  if [ ${#sudo[@]} -eq 0 ] || sudo -n true 2>/dev/null; then
    echo "bootstrap: installing ${need[*]} from Debian" >&2
    { "${sudo[@]}" apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${need[@]}"; } >&2 \
      || echo "bootstrap: could not install ${need[*]}; the tests that need them skip" >&2
  else
    echo "bootstrap: ${need[*]} missing and apt-get needs root; the tests that need them skip" >&2
  fi
fi

# The Prometheus operator's PrometheusRule CRD, which tests/unit/test_kuberay_manifest.py validates
# kuberay/prometheus-rules.yaml against. Not vendored: `go mod download` fetches the operator's module at the
# release of tests/data/crds/'s PodMonitor CRD (checked by Go's checksum database and against the pinned h1
# hash below) and the one file is copied into $LOOM_CACHE_DIR (default .cache/), keyed by version. Without Go
# or the module proxy, that test skips and says so.
cache=${LOOM_CACHE_DIR:-$root/.cache}
operator=github.com/prometheus-operator/prometheus-operator@v0.93.0
operator_sum=h1:AohlYJT+En8TmNpAcEUJ3GsaJTAqfEBwHmGTVpRm/Io=
crd=$cache/crds/prometheus-operator-v0.93.0/monitoring.coreos.com_prometheusrules.yaml
if [ ! -f "$crd" ]; then
  if command -v go >/dev/null && module=$(cd / && GOFLAGS=-modcacherw GOMODCACHE="$cache/gomod" \
    go mod download -json "$operator" | "$python" -c '
import json, sys
found = json.load(sys.stdin)
if found.get("Error") or found["Sum"] != sys.argv[1]:
    sys.exit(found.get("Error") or "module sum " + found["Sum"] + " is not the pinned " + sys.argv[1])
print(found["Dir"])
' "$operator_sum"); then
    mkdir -p "$(dirname "$crd")"
    cp "$module/example/prometheus-operator-crd/$(basename "$crd")" "$crd.tmp" && mv "$crd.tmp" "$crd"
    echo "bootstrap: $crd fetched" >&2
  else
    echo "bootstrap: PrometheusRule CRD not fetched (needs go and the Go module proxy); its manifest test skips" >&2
  fi
fi

# Installed with bytecode: a Python that may not write it (PYTHONDONTWRITEBYTECODE, as on CI machines) would
# otherwise compile Ray and every dependency from source in each process it starts, and a local Ray starts
# about ten (its API server, agents, log monitor, workers) on every ray.init.
stamp=.venv/.installed-$(cat requirements.lock pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
[ -f "$stamp" ] && exit 0
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"
.venv/bin/uv pip sync -q --compile-bytecode --python .venv/bin/python requirements.lock
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
rm -f .venv/.installed-* && touch "$stamp"
echo "bootstrap: .venv ready" >&2
