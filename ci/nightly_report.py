"""Assembles ci/nightly's outputs into target/nightly/report.md and report.json.

Usage: nightly_report.py OUT_DIR START_SEED MINUTES DETERMINISM CANARY
Exits 1 on a simulator failure, a sluice chaos violation, a determinism difference or a
canary that was not caught; Litestream's violations are reported only.
"""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path


def sweeps(out):
    families = []
    for path in sorted((out / "sweeps").glob("*.txt")):
        text = path.read_text()
        tally = re.search(r"(\d+) seeds, (\d+) failed, (\d+) seeds/minute", text)
        failures = re.findall(r"^seed (\d+) FAILED: (.*)$", text, re.M)
        replays = re.findall(r"^  replay: (.*)$", text, re.M)
        families.append({
            "family": path.stem,
            "seeds": int(tally.group(1)) if tally else 0,
            "failed": int(tally.group(2)) if tally else None,
            "seeds_per_minute": int(tally.group(3)) if tally else None,
            "failures": [
                {"seed": int(s), "why": why, "replay": r}
                for (s, why), r in zip(failures, replays)
            ],
            "error": None if tally else text.strip()[-500:],
        })
    return families


def chaos_runs(out):
    runs = []
    for path in sorted((out / "chaos").glob("*.json")):
        r = json.loads(path.read_text())
        cycles = r["cycles"]
        violations = [f"cycle {i}: {v}" for i, c in enumerate(cycles) for v in c["violations"]]
        runs.append({
            "sut": r["sut"],
            "scenario": Path(r["scenario"] or "default").stem,
            "seed": r["seed"],
            "cycles": len(cycles),
            "commits": sum(c["commits_logged"] for c in cycles),
            "lost": sum(c["lost_commits"] for c in cycles),
            "oldest_lost_ms": max((c["oldest_lost_ms"] or 0 for c in cycles), default=0),
            "violations": violations,
            "replay": f"cargo run --release -p sluice-sim -- chaos --sut {r['sut']} --seed {r['seed']}"
            + (f" --scenario {r['scenario']}" if r["scenario"] else ""),
        })
    # A run that wrote no JSON failed to run at all.
    for path in sorted((out / "chaos").glob("*.txt")):
        if not path.with_suffix(".json").exists():
            sut = path.stem.split("-")[0]
            runs.append({"sut": sut, "scenario": path.stem, "seed": None, "cycles": 0,
                         "commits": 0, "lost": 0, "oldest_lost_ms": 0,
                         "violations": ["did not run: " + path.read_text().strip()[-300:]],
                         "replay": None})
    return runs


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None


def main():
    out = Path(sys.argv[1])
    start_seed, minutes, determinism, canary = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
    families = sweeps(out)
    runs = chaos_runs(out)
    report = {
        "start_seed": start_seed,
        "minutes": minutes,
        "machine": {"cpus": os.cpu_count(), "system": platform.platform()},
        "versions": {
            "rustc": version(["rustc", "--version"]),
            "litestream": version([os.environ.get("LITESTREAM_BIN", "litestream"), "version"]),
        },
        "sweeps": families,
        "determinism": determinism,
        "canary": canary,
        "chaos": runs,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    lines = [f"# Nightly chaos run", "",
             f"Starting seed {start_seed} (from the date), {minutes:g} minutes, "
             f"{os.cpu_count()} CPUs; Litestream {report['versions']['litestream']}.", "",
             "## Simulator sweeps", "", "| family | seeds | failed | seeds/min |", "| --- | --- | --- | --- |"]
    for f in families:
        lines.append(f"| {f['family']} | {f['seeds']} | {f['failed'] if f['failed'] is not None else 'error'} | {f['seeds_per_minute'] or ''} |")
    for f in families:
        for x in f["failures"]:
            lines.append(f"- {f['family']} seed {x['seed']}: {x['why']}  \n  replay: `{x['replay']}`")
        if f["error"]:
            lines.append(f"- {f['family']} did not run: {f['error']}")
    lines += ["", f"Determinism (same seed, two processes): {determinism}. "
              f"Canary (planted `drop-old-tail` must be caught): {canary}.", "",
              "## Real-process chaos", "",
              "| SUT | scenario | seed | cycles | commits | lost | oldest lost | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        verdict = "all claims held" if not r["violations"] else f"{len(r['violations'])} violated"
        lines.append(f"| {r['sut']} | {r['scenario']} | {r['seed']} | {r['cycles']} | {r['commits']} | "
                     f"{r['lost']} | {r['oldest_lost_ms']} ms | {verdict} |")
    for r in runs:
        for v in r["violations"]:
            lines.append(f"- {r['sut']} {r['scenario']} seed {r['seed']}: {v}  \n  replay: `{r['replay']}`")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print((out / "report.md").read_text())

    bad = [f for f in families if f["failed"] != 0]
    bad_chaos = [r for r in runs if r["sut"] == "sluice" and r["violations"]]
    ok = not bad and not bad_chaos and determinism == "ok" and canary == "caught"
    print(f"nightly: {'passed' if ok else 'FAILED'}; reports in {out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
