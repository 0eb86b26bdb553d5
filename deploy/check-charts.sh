#!/usr/bin/env bash
# Checks the Helm charts in deploy/helm/ the way CI does, offline:
#
#   1. `helm lint --strict` of each chart with its default values and with every values file in
#      its examples/ directory;
#   2. `helm template` of the same, for Kubernetes 1.35.0;
#   3. `kubernetes-validate -k 1.35.0 --strict` of every rendered manifest. Objects of kinds with
#      no bundled schema (third-party custom resources such as cert-manager's) cannot be
#      validated: each is listed as skipped with that reason. The charts' own CRDs are
#      CustomResourceDefinition objects and are validated like any other object; then
#      deploy/check/crd-samples.py checks that their schemas accept the ServiceExports and
#      ServiceImports the zone reads and writes, and reject malformed ones;
#   4. checkov (kubernetes framework) on every rendered manifest, and on deploy/Dockerfile.
#      Offline, checkov knows no severities (they come from its online platform), so every failed
#      check counts as high severity: it fails this script unless the chart skips it with a
#      justification (`checkov.io/skipN: CKV_K8S_xx=reason`). A skip without a reason fails too.
#   5. deploy/dashboards/strait.json queries only metrics the Rust sources define.
#
# Tools come from PATH, or from .tools/ as .ci/run installs them. Exits non-zero on any failure,
# after printing a summary. KEEP_RENDERED=DIR keeps the rendered manifests in DIR; CHARTS=DIR
# checks the charts in DIR instead of deploy/helm (to try the script on a broken copy).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KUBE_VERSION=1.35.0
NAMESPACE=strait-check

export PATH="$ROOT/.tools/layer/helm:$ROOT/.tools/layer/kubectl:$ROOT/.tools/venv/bin:$PATH"
for tool in helm kubernetes-validate checkov python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "check-charts: $tool not found (install it as .ci/run does)" >&2
    exit 2
  fi
done
# checkov: no telemetry, no platform download, no update check.
export CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false BC_SKIP_MAPPING=TRUE CHECKOV_SKIP_VERSION_CHECK=true

if [ -n "${KEEP_RENDERED:-}" ]; then
  OUT=$KEEP_RENDERED
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi

failures=()
skips=()
rows=()
fail() { failures+=("$1"); echo "FAIL: $1"; }

# Reads checkov's JSON report on stdin. Prints one line per failed check and per skip, then a
# final line "FAILED SKIPPED PASSED". A failed check fails unless its severity is known and below
# HIGH; a skip needs a reason.
checkov_verdict() {
  python3 -c '
import json, sys
text = sys.stdin.read().strip()
reports = json.loads(text) if text else []
if isinstance(reports, dict):
    reports = [reports]
failed = skipped = passed = 0
for report in reports:
    results = report.get("results", {})
    passed += len(results.get("passed_checks", []))
    for c in results.get("failed_checks", []):
        sev = c.get("severity")
        if sev is not None and str(sev).upper() not in ("HIGH", "CRITICAL"):
            print("note  %s %s (severity %s): %s" % (c["check_id"], c["resource"], sev, c["check_name"]))
            continue
        failed += 1
        print("fail  %s %s (severity %s): %s" % (c["check_id"], c["resource"], sev or "unknown offline", c["check_name"]))
    for c in results.get("skipped_checks", []):
        reason = (c.get("check_result", {}).get("suppress_comment") or "").strip()
        if not reason or reason == "No comment provided":
            failed += 1
            print("fail  %s %s: skipped without a justification" % (c["check_id"], c["resource"]))
        else:
            skipped += 1
            print("skip  %s %s: %s" % (c["check_id"], c["resource"], reason))
if passed == 0:
    # A scan that checked nothing proves nothing (an unparsable manifest, a wrong framework).
    failed += 1
    print("fail  checkov ran no check")
print(failed, skipped, passed)
'
}

CHARTS=${CHARTS:-deploy/helm}
for chart_dir in "${CHARTS%/}"/*/; do
  chart=$(basename "$chart_dir")
  value_sets=("defaults")
  for f in "$chart_dir"examples/*.yaml; do
    [ -e "$f" ] && value_sets+=("$f")
  done
  for values in "${value_sets[@]}"; do
    if [ "$values" = defaults ]; then
      label="$chart (default values)"
      args=()
      name=defaults
    else
      label="$chart ($(basename "$values"))"
      args=(-f "$values")
      name=$(basename "$values" .yaml)
    fi
    echo
    echo "=== $label"
    rendered="$OUT/$chart/$name/manifest.yaml"
    mkdir -p "$(dirname "$rendered")"

    lint="ok"
    if ! helm lint --strict "$chart_dir" "${args[@]}" --kube-version "$KUBE_VERSION" --namespace "$NAMESPACE" >"$OUT/lint.log" 2>&1; then
      cat "$OUT/lint.log"
      fail "helm lint: $label"
      lint="FAIL"
    fi

    if ! helm template strait "$chart_dir" "${args[@]}" --namespace "$NAMESPACE" \
      --kube-version "$KUBE_VERSION" --include-crds >"$rendered" 2>"$OUT/template.log"; then
      cat "$OUT/template.log"
      fail "helm template: $label"
      rows+=("$(printf '%-48s lint %-4s template FAIL' "$label" "$lint")")
      continue
    fi
    objects=$(grep -c '^kind:' "$rendered")
    echo "helm template: $objects objects"

    # Schema validation. Unknown kinds are warnings in kubernetes-validate; list them as skips.
    validate="ok"
    kubernetes-validate -k "$KUBE_VERSION" --strict "$rendered" >"$OUT/validate.log" 2>&1
    rc=$?
    grep -v '^INFO' "$OUT/validate.log" | grep -v "Couldn't find schema" || true
    if [ "$rc" -ne 0 ] || grep -q '^ERROR' "$OUT/validate.log"; then
      fail "kubernetes-validate --strict: $label"
      validate="FAIL"
    fi
    valid_count=$(grep -c '^INFO .* passed for resource' "$OUT/validate.log" || true)
    no_schema=$(grep "Couldn't find schema" "$OUT/validate.log" |
      sed -E 's/.*kind ([A-Za-z]+) with api version ([^ ]+).*/\1 (\2)/' | sort | uniq -c |
      sed -E 's/^ *([0-9]+) (.*)/\2 x\1/' | paste -sd, - || true)
    if [ -n "$no_schema" ]; then
      echo "kubernetes-validate: $valid_count objects valid; skipped (custom resources of a CRD that is not part of Kubernetes, no schema bundled): $no_schema"
      skips+=("kubernetes-validate: $(echo "$no_schema" | sed -E 's/ x[0-9]+//g')|custom resources of third-party CRDs: no schema bundled to validate them against|$label")
    else
      echo "kubernetes-validate: $valid_count objects valid"
    fi

    # The chart's own CRDs: do they accept what the zone writes and reject malformed objects?
    if grep -q '^kind: CustomResourceDefinition' "$rendered"; then
      if python3 deploy/check/crd-samples.py "$rendered" deploy/check/mcs-samples.yaml >"$OUT/crd.log" 2>&1; then
        echo "CRD schemas: $(grep -c '^ok' "$OUT/crd.log") sample objects judged right (deploy/check/mcs-samples.yaml)"
      else
        cat "$OUT/crd.log"
        fail "CRD schemas vs deploy/check/mcs-samples.yaml: $label"
        validate="FAIL"
      fi
    fi

    # Security scan.
    checkov -f "$rendered" --framework kubernetes --compact --skip-download \
      -o json >"$OUT/checkov.json" 2>"$OUT/checkov.log"
    if ! verdict=$(checkov_verdict <"$OUT/checkov.json"); then
      cat "$OUT/checkov.log"
      fail "checkov produced no readable report: $label"
      rows+=("$(printf '%-48s lint %-4s template ok   validate %-4s checkov FAIL' "$label" "$lint" "$validate")")
      continue
    fi
    echo "$verdict" | sed '$d'
    read -r c_failed c_skipped c_passed <<<"$(echo "$verdict" | tail -n1)"
    echo "checkov: $c_passed passed, $c_failed failed, $c_skipped skipped with a justification"
    checkov_state="ok"
    if [ "$c_failed" -ne 0 ]; then
      fail "checkov: $c_failed failed check(s) in $label"
      checkov_state="FAIL"
    fi
    while IFS= read -r line; do
      # "skip  CHECK RESOURCE: REASON" -> "checkov CHECK|REASON|label"
      line=${line#skip  }
      [ -n "$line" ] && skips+=("checkov ${line%% *}|${line#*: }|$label")
    done < <(echo "$verdict" | grep '^skip ' || true)
    rows+=("$(printf '%-48s lint %-4s template ok   validate %-4s checkov %-4s (%s objects; checkov %s passed, %s skipped)' \
      "$label" "$lint" "$validate" "$checkov_state" "$objects" "$c_passed" "$c_skipped")")
  done
done

echo
echo "=== deploy/Dockerfile"
checkov -f deploy/Dockerfile --framework dockerfile --compact --skip-download \
  -o json >"$OUT/checkov-docker.json" 2>"$OUT/checkov-docker.log"
if verdict=$(checkov_verdict <"$OUT/checkov-docker.json"); then
  echo "$verdict" | sed '$d'
  read -r c_failed c_skipped c_passed <<<"$(echo "$verdict" | tail -n1)"
  echo "checkov: $c_passed passed, $c_failed failed, $c_skipped skipped with a justification"
  state=ok
  if [ "$c_failed" -ne 0 ]; then
    fail "checkov: $c_failed failed check(s) in deploy/Dockerfile"
    state=FAIL
  fi
  rows+=("$(printf '%-48s checkov %-4s (%s passed, %s skipped)' "deploy/Dockerfile" "$state" "$c_passed" "$c_skipped")")
else
  cat "$OUT/checkov-docker.log"
  fail "checkov produced no readable report: deploy/Dockerfile"
fi

echo
echo "=== deploy/dashboards/strait.json"
if python3 deploy/check/dashboard-metrics.py deploy/dashboards/strait.json \
  global zone sidecar eastwest-gateway observe; then
  rows+=("$(printf '%-48s metric names ok' "deploy/dashboards/strait.json")")
else
  fail "dashboard queries a metric the code does not define"
  rows+=("$(printf '%-48s metric names FAIL' "deploy/dashboards/strait.json")")
fi

echo
echo "=== Summary (helm $(helm version --template '{{.Version}}'), kubernetes-validate $(kubernetes-validate --version 2>&1 | awk '{print $NF}'), checkov $(checkov --version 2>/dev/null), Kubernetes $KUBE_VERSION)"
printf '%s\n' "${rows[@]}"
if [ ${#skips[@]} -gt 0 ]; then
  echo "Skipped, with reasons (each once; where):"
  printf '%s\n' "${skips[@]}" | awk -F'|' '
    { key = $1 "|" $2; if (!(key in where)) { order[n++] = key; where[key] = $3 }
      else if (index(where[key], $3) == 0) where[key] = where[key] "; " $3 }
    END { for (i = 0; i < n; i++) { split(order[i], p, "|"); printf "  - %s: %s\n      in: %s\n", p[1], p[2], where[order[i]] } }'
fi
# One unit per chart and values set, and the Dockerfile.
total=${#rows[@]}
failed_units=$(printf '%s\n' "${rows[@]}" | grep -c 'FAIL' || true)
if [ ${#failures[@]} -gt 0 ]; then
  [ "$failed_units" -eq 0 ] && failed_units=1 && total=$((total + 1))
  echo "Failures:"
  printf '  - %s\n' "${failures[@]}"
  echo "check-charts: $((total - failed_units)) passed, $failed_units failed"
  exit 1
fi
echo "check-charts: $total passed, 0 failed"
