"""scripts/device_check.sh's last step: every part's outcome in one JSON file and one printed table.

    python scripts/device_summary.py --work /tmp/device_check_work --out $OUT/device_check.json

Reads the work folder that device_check.sh fills (parts.tsv; gpu/ from benchmarks/gpu.sh: steps.tsv, one
JSON and one stderr per step, gpu.txt) and the JUnit file beside --out; the device tool brings back at most
8 files, so gpu.sh's ~16 files travel as this one.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

TAIL = 3000
"""Characters of a failed step's stderr kept."""


def read_tsv(path: Path) -> list[tuple[str, int, int]]:
    """(name, rc, seconds) rows; a missing file is no rows."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, rc, seconds = line.split("\t")
        rows.append((name, int(rc), int(seconds)))
    return rows


def junit(path: Path) -> dict[str, Any] | None:
    """Test counts and the failures' names and messages from pytest's --junitxml file."""
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in suite.iter("testcase"):
        for bad in [*case.findall("failure"), *case.findall("error")]:
            failed.append({"test": case.get("name"), "message": (bad.get("message") or "")[:500]})
    return {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "seconds": float(suite.get("time", 0)),
        "failed": failed,
    }


def benchmark(gpu: Path, name: str, rc: int) -> dict[str, Any]:
    """One gpu.sh step: its JSON (when written) and, when it failed, the end of its stderr."""
    out: dict[str, Any] = {"rc": rc}
    js = gpu / f"{name}.json"
    if js.exists():
        out["result"] = json.loads(js.read_text())
    err = gpu / f"{name}.stderr"
    if rc != 0 and err.exists():
        out["stderr_tail"] = err.read_text(errors="replace")[-TAIL:]
    return out


def headline(step: dict[str, Any]) -> str:
    """The step's ratio and gains, as the benchmark printed them."""
    targets = step.get("result", {}).get("targets", {})
    bits = []
    for res in targets.values():
        if "ratio" in res:
            bits.append(f"{res['ratio']:.4g} = {res.get('ratio_meaning', 'ratio')}")
        bits += [f"{k} {v}" for k, v in res.items() if k.startswith("gain_")]
    if not bits and "stderr_tail" in step:
        lines = step["stderr_tail"].strip().splitlines()
        bits.append(lines[-1][:100] if lines else "")
    return "; ".join(bits)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    gpu = args.work / "gpu"
    summary: dict[str, Any] = {"parts": {}, "gpu": None, "tests": junit(args.out.parent / "pytest.xml")}
    if (gpu / "gpu.txt").exists():
        summary["gpu"] = (gpu / "gpu.txt").read_text().strip()
    table = []
    for name, rc, seconds in read_tsv(args.work / "parts.tsv"):
        summary["parts"][name] = {"rc": rc, "seconds": seconds}
        note = ""
        if name == "tests" and summary["tests"]:
            t = summary["tests"]
            note = f"{t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"
            note += "".join(f"\n{'':>22}FAILED {f['test']}" for f in t["failed"])
        table.append((name, rc, seconds, note))
        if name == "gpu.sh":
            steps = {}
            for step, step_rc, step_s in read_tsv(gpu / "steps.tsv"):
                steps[step] = {**benchmark(gpu, step, step_rc), "seconds": step_s}
                table.append((f"  {step}", step_rc, step_s, headline(steps[step])))
            summary["parts"][name]["steps"] = steps
    args.out.write_text(json.dumps(summary, indent=2))
    print("\n== device check summary")
    print(f"{'part':<12} {'rc':>3} {'s':>5}  result")
    for name, rc, seconds, note in table:
        print(f"{name:<12} {rc:>3} {seconds:>5}  {note}")
    print(f"(all of it in {args.out})")


if __name__ == "__main__":
    main()
