"""Run every benchmark and print its figures against the targets.

    python -m bench.run_all                    # default sizes (~15 min)
    python -m bench.run_all --full             # + memory at 100,000 SKUs x 10 blogs (~15 min)
    python -m bench.run_all --quick            # every benchmark in quick mode (~2 min)
    python -m bench.run_all --only latency,trigger_overhead --json > figures.json
    python -m bench.run_all --snapshot HEAD    # measure a commit, not the working tree

Each benchmark runs as its own process (``python -m bench.<name> --json``), with its own private
MariaDB; progress goes to stderr. ``--snapshot REV`` exports ``git archive REV`` into a temporary
directory, copies this bench/ into it, and runs there: figures of a known commit even while other
people edit the working tree (the commit is recorded in every result as ``machine.code``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BENCHMARKS = ("trigger_overhead", "latency", "throughput", "import_storm", "idle", "memory")


def snapshot(rev: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="syncd-bench-snapshot-"))
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    shutil.rmtree(dest / "bench", ignore_errors=True)
    shutil.copytree(HERE, dest / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "BENCH_COMMIT").write_text(commit + "\n")
    print(f"snapshot of {rev} ({commit}) in {dest}", file=sys.stderr)
    return dest


def run_one(root: Path, name: str, extra: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(root))
    t0 = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--json", *extra],
        cwd=str(root),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"benchmark": name, "error": f"exit status {proc.returncode}"}
    out = json.loads(proc.stdout)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out.setdefault("machine", {})["loadavg_at_start"] = load_before
    return out


def verdicts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        name = r.get("benchmark")
        if "error" in r:
            rows.append({"benchmark": name, "figure": r["error"], "target": "", "met": False})
            continue
        t = r.get("target", {})
        if name == "latency":
            rows.append(
                {
                    "benchmark": name,
                    "figure": f"p99 {t.get('measured')} ms at 100/s, 3 blogs",
                    "target": "p99 <= 50 ms",
                    "met": t.get("met"),
                }
            )
        elif name == "throughput":
            d, s = r["drain"], r["steady"]
            rows.append(
                {
                    "benchmark": name + " (drain)",
                    "figure": f"{d['changes_per_s']} changes/s",
                    "target": ">= 1000/s",
                    "met": t.get("drain_met"),
                }
            )
            rows.append(
                {
                    "benchmark": name + " (steady)",
                    "figure": f"{s['applied_per_s']}/s applied of {s['offered_per_s']:g}/s, backlog {s['backlog_at_end']}",
                    "target": ">= 1000/s",
                    "met": t.get("steady_met"),
                }
            )
        elif name == "trigger_overhead":
            rows.append(
                {
                    "benchmark": name,
                    "figure": f"+{t.get('measured_mean')} ms mean, +{t.get('measured_paired_median')} ms paired median",
                    "target": "<= 0.2 ms",
                    "met": t.get("met"),
                }
            )
        elif name == "import_storm":
            rows.append(
                {
                    "benchmark": name,
                    "figure": f"sale p99 {t.get('measured_p99')} ms during the import, "
                    f"import applied in {t.get('measured_import_s')} s",
                    "target": "<= 100 ms, <= 15 s",
                    "met": t.get("met"),
                }
            )
        elif name == "idle":
            i, lat = r["idle"], r["latency_ms"]
            rows.append(
                {
                    "benchmark": name,
                    "figure": f"daemon {i.get('daemon_cpu_pct')}%, server {i.get('server_cpu_pct')}% of a core; "
                    f"sale after quiet p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms",
                    "target": "<= 0.5% each",
                    "met": t.get("met"),
                }
            )
        elif name == "memory":
            rows.append(
                {
                    "benchmark": name,
                    "figure": f"peak RSS {t.get('measured')} MB",
                    "target": "<= 150 MB",
                    "met": t.get("met"),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--full", action="store_true", help="memory at 10,000 and 100,000 SKUs x 10 blogs")
    p.add_argument("--json", action="store_true", help="print every result as one JSON document")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument(
        "--snapshot", metavar="REV", help="benchmark `git archive REV` instead of the working tree"
    )
    p.add_argument("--refresh", choices=("auto", "stub", "real"), default="auto")
    p.add_argument("--keep-snapshot", action="store_true")
    args = p.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n]
    root = snapshot(args.snapshot) if args.snapshot else REPO
    extra = (["--quick"] if args.quick else []) + ["--refresh", args.refresh]
    results = []
    try:
        for name in names:
            print(f"== bench.{name}", file=sys.stderr, flush=True)
            more = ["--skus", "10000,100000"] if args.full and name == "memory" else []
            results.append(run_one(root, name, extra + more))
    finally:
        if args.snapshot and not args.keep_snapshot:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": results}, indent=2, default=str))
        return 0
    sys.path.insert(0, str(REPO))
    from bench.common import print_table  # noqa: PLC0415

    code = next((r.get("machine", {}).get("code") for r in results if "machine" in r), None)
    print(f"\nsyncd {code}")
    print_table(
        verdicts(results),
        [("benchmark", "benchmark"), ("figure", "figure"), ("target", "target"), ("met", "met")],
    )
    return 0 if all(v["met"] for v in verdicts(results)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
