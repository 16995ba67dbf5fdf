"""Write README's benchmark tables, one per daemon from its newest results file (bench/results/*.json),
between the `<!-- bench:begin -->` and `<!-- bench:end -->` markers, so the README's numbers are the
committed ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def table(doc: dict, source: str) -> str:
    lines = [
        f"From `{source}` ({doc['daemon']} {doc.get('daemon_version', '').split(':')[-1].strip()}, "
        f"{doc['host']['cpus']} CPUs, "
        f"{doc['date'][:10]}); medians over the runs shown, min-max in brackets, every pair interleaved.",
        "",
        "| benchmark | boshcpi | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
        if "baseline" in r:
            v, b = r["value"], r["baseline"]
            ours = f"{v['median_ms']:.0f} ms [{v['min_ms']:.0f}-{v['max_ms']:.0f}] x{v['runs']}"
            base = f"{r['baseline_name']}: {b['median_ms']:.0f} ms [{b['min_ms']:.0f}-{b['max_ms']:.0f}]"
            if r.get("note"):
                base += f"; {r['note']}"
            lines.append(f"| {r['name']} | {ours} | {base} | {r['ratio']:.2f} | {r['target']} | {met} |")
        else:
            v = r["value"]
            note = f" ({r['note']})" if r.get("note") else ""
            lines.append(f"| {r['name']} | {v['value']} {v['unit']}{note} | | | {r['target']} | {met} |")
    for note in doc.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines)


def main() -> int:
    # By the date each run recorded (a fresh clone's file times say nothing): oldest first, so a later
    # run of the same daemon replaces an earlier one.
    runs = sorted(
        ((f, json.loads(f.read_text())) for f in (ROOT / "bench" / "results").glob("*.json")),
        key=lambda run: run[1]["date"],
    )
    if not runs:
        print("no results in bench/results", file=sys.stderr)
        return 1
    newest = {doc["daemon"]: (f, doc) for f, doc in runs}
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tables = [
        table(doc, f.relative_to(ROOT).as_posix())
        for _, (f, doc) in sorted(newest.items(), key=lambda kv: (kv[0] != "lxd", kv[0]))
    ]
    readme.write_text(f"{head}{BEGIN}\n" + "\n\n".join(tables) + f"\n{END}{tail}")
    print(f"README.md: tables from {', '.join(f.name for f, _ in newest.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
