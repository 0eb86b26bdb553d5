"""Checks deploy/dashboards/strait.json: valid JSON, every panel has a query, and every metric it
queries is one the Rust sources define (so a renamed metric cannot leave a dashboard panel empty).

Usage: dashboard-metrics.py DASHBOARD.json SOURCE_DIR... ; exits 1 on a problem.
"""

import json
import pathlib
import re
import sys


def main(dashboard, source_dirs):
    with open(dashboard) as f:
        dash = json.load(f)
    sources = "".join(
        p.read_text(errors="replace")
        for d in source_dirs
        for p in pathlib.Path(d).rglob("*.rs")
        if "target" not in p.parts
    )
    problems = []
    used = set()
    panels = [p for p in dash["panels"] if p.get("type") != "row"]
    for panel in panels:
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"panel {panel.get('title')!r} has no query")
        for t in targets:
            used |= set(re.findall(r"strait_[a-z0-9_]+", t.get("expr", "")))
    for name in sorted(used):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        # Sidecars and gateways build their identity metrics from a prefix (PREFIX_cert_...).
        suffix = re.sub(r"^strait_(sidecar|gateway)_", "PREFIX_", base)
        if f'"{base}"' not in sources and suffix not in sources:
            problems.append(f"{name}: no metric of that name in the sources")
    for p in problems:
        print("FAIL", p)
    print(f"{len(panels)} panels, {len(used)} metric names, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
