"""Assembles ci/nightly's outputs into target/nightly/report.md and report.json.

Usage: nightly_report.py OUT_DIR START_SEED MINUTES DETERMINISM CANARY SHARD
       nightly_report.py --merge OUT_DIR SHARD_DIR...   (joins the shards' report.json)
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


def mutants(out):
    """The night's share of mutation testing (ci/mutants), or None if it did not run."""
    share_file = out / "mutants" / "share.json"
    if not share_file.exists():
        return None
    share = json.loads(share_file.read_text())
    found = {}
    for kind in ("caught", "missed", "timeout", "unviable"):
        path = out / "mutants" / "mutants.out" / f"{kind}.txt"
        found[kind] = [l for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    return {**share, **{k: len(v) for k, v in found.items()}, "survivors": found["missed"]}


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None


def shard_report(out, start_seed, minutes, determinism, canary, shard):
    return {
        "start_seed": start_seed,
        "minutes": minutes,
        "shards": [shard],
        "machine": {"cpus": os.cpu_count(), "system": platform.platform()},
        "versions": {
            "rustc": version(["rustc", "--version"]),
            "litestream": version([os.environ.get("LITESTREAM_BIN", "litestream"), "version"]),
        },
        "sweeps": sweeps(out),
        "determinism": [determinism],
        "canary": [canary],
        "chaos": chaos_runs(out),
        "mutants": [m] if (m := mutants(out)) else [],
    }


def merged(dirs):
    parts = [json.loads((Path(d) / "report.json").read_text()) for d in dirs]
    first = parts[0]
    return {
        "start_seed": min(p["start_seed"] for p in parts),
        "minutes": first["minutes"],
        "shards": [s for p in parts for s in p["shards"]],
        "machine": first["machine"],
        "versions": first["versions"],
        "sweeps": [f for p in parts for f in p["sweeps"]],
        "determinism": [d for p in parts for d in p["determinism"]],
        "canary": [c for p in parts for c in p["canary"]],
        "chaos": [r for p in parts for r in p["chaos"]],
        "mutants": [m for p in parts for m in p.get("mutants", [])],
    }


def render(report):
    determinism = "ok" if all(d == "ok" for d in report["determinism"]) else "; ".join(report["determinism"])
    canary = "caught" if all(c == "caught" for c in report["canary"]) else "not caught"
    lines = ["# Nightly chaos run", "",
             f"Starting seed {report['start_seed']} (from the date), {report['minutes']:g} minutes, "
             f"shards {', '.join(report['shards'])}, {report['machine']['cpus']} CPUs each; "
             f"Litestream {report['versions']['litestream']}.", "",
             "## Simulator sweeps", "", "| family | seeds | failed | seeds/min |", "| --- | --- | --- | --- |"]
    for f in report["sweeps"]:
        lines.append(f"| {f['family']} | {f['seeds']} | {f['failed'] if f['failed'] is not None else 'error'} | {f['seeds_per_minute'] or ''} |")
    for f in report["sweeps"]:
        for x in f["failures"]:
            lines.append(f"- {f['family']} seed {x['seed']}: {x['why']}  \n  replay: `{x['replay']}`")
        if f["error"]:
            lines.append(f"- {f['family']} did not run: {f['error']}")
    lines += ["", f"Determinism (same seed, two processes): {determinism}. "
              f"Canary (planted `drop-old-tail` must be caught): {canary}.", "",
              "## Real-process chaos", "",
              "| SUT | scenario | seed | cycles | commits | lost | oldest lost | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["chaos"]:
        verdict = "all claims held" if not r["violations"] else f"{len(r['violations'])} violated"
        lines.append(f"| {r['sut']} | {r['scenario']} | {r['seed']} | {r['cycles']} | {r['commits']} | "
                     f"{r['lost']} | {r['oldest_lost_ms']} ms | {verdict} |")
    for r in report["chaos"]:
        for v in r["violations"]:
            lines.append(f"- {r['sut']} {r['scenario']} seed {r['seed']}: {v}  \n  replay: `{r['replay']}`")
    lines += ["", "## Mutation testing", ""]
    if not report["mutants"]:
        lines.append("Not run.")
    for m in report["mutants"]:
        tested = m["caught"] + m["missed"] + m["timeout"]
        rate = f"{(m['caught'] + m['timeout']) / tested:.0%}" if tested else "none tested"
        lines.append(
            f"Share {m['share']} of {m['shares']} ({m['mutants']} mutants of {m['files']}): "
            f"{tested} tested in the budget, {m['caught']} caught, {m['timeout']} timed out "
            f"(counted as caught), {m['missed']} survived, {m['unviable']} did not build; "
            f"kill rate {rate}.")
        for line in m["survivors"]:
            lines.append(f"- survived: `{line}`")
    lines.append("")
    lines.append("Survivors are for review (a missing test, or an equivalent mutant); they do not "
                 "fail the run.")
    ok = (all(f["failed"] == 0 for f in report["sweeps"])
          and not any(r["sut"] == "sluice" and r["violations"] for r in report["chaos"])
          and determinism == "ok" and canary == "caught")
    return "\n".join(lines) + "\n", ok


def main():
    if sys.argv[1] == "--merge":
        out = Path(sys.argv[2])
        report = merged(sys.argv[3:])
    else:
        out = Path(sys.argv[1])
        report = shard_report(out, int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text, ok = render(report)
    (out / "report.md").write_text(text)
    print(text)
    print(f"nightly: {'passed' if ok else 'FAILED'}; reports in {out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
