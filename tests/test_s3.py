"""Stores on a real S3 server (SeaweedFS on 127.0.0.1): the same bytes as a local store, readable with
storage_options, written by 2 torchrun ranks, never holding or logging credentials, and surviving an outage."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import torch
import xarray as xr

from distinterp import store
from distinterp.analyses.llc import compute_llc
from distinterp.store import StoreConfigMismatch, StoreError
from tests.fixtures.s3 import S3Server
from tests.jobs import run
from tests.test_sampling import assert_same_data

pytestmark = pytest.mark.s3
ROOT = Path(__file__).resolve().parents[1]
JOB: dict[str, Any] = {"num_chains": 3, "num_draws": 6}
"""tests.jobs' tiny GPT-2 run, shrunk: one chunk per chain."""
PROBES, REQUESTS = 10, 130
"""S3 HEAD + LIST, and all requests, one sample() of JOB may make (measured then, plus some slack)."""


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, as torchrun's workers do (OMP_NUM_THREADS=1), so results match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Target:
    """Where a store lives: its URL and the storage_options that reach it."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        extra = {"skip_instance_cache": True, "use_listings_cache": False} if "://" in self.url else {}
        return fsspec.core.url_to_fs(self.url, **self.options, **extra)

    def objects(self) -> dict[str, bytes]:
        """Every object of the store: key relative to the store -> bytes."""
        fs, root = self.fs()
        paths = fs.find(root)
        return {p[len(root) :].lstrip("/"): data for p, data in fs.cat(paths).items()}

    def open(self) -> xr.DataTree:
        kwargs = {"storage_options": self.options} if self.options else {}
        return xr.open_datatree(self.url, engine="zarr", consolidated=False, **kwargs)


def sample_into(target: Target, **overrides: Any) -> None:
    with one_thread():
        run(target.url, storage_options=target.options or None, **{**JOB, **overrides})


def assert_same_objects(got: dict[str, bytes], expected: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(expected), "the stores hold different objects"
    differ = [k for k in expected if got[k] != expected[k]]
    assert not differ, f"objects with different bytes: {differ}"


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Target:
    """JOB sampled into a local store by one process."""
    target = Target(str(tmp_path_factory.mktemp("reference") / "run.zarr"))
    sample_into(target)
    return target


@pytest.fixture
def server(s3_server: S3Server) -> S3Server:
    """The session's S3 server, running (an earlier outage test may have left it stopped)."""
    s3_server.start()
    return s3_server


class StoreConformance:
    """What every store back end must do with the same sample() call; subclasses say where the store lives."""

    @pytest.fixture(scope="class")
    def target(self) -> Target:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def written(self, target: Target) -> Target:
        sample_into(target)
        return target

    def test_objects_are_byte_identical_to_a_local_run(self, written: Target, reference: Target) -> None:
        assert_same_objects(written.objects(), reference.objects())

    def test_opens_as_a_datatree_with_storage_options(self, written: Target, reference: Target) -> None:
        got, expected = written.open().dataset, reference.open().dataset
        assert got.attrs == expected.attrs and got.attrs["completed"] == 1
        assert set(got.data_vars) == set(expected.data_vars)
        assert_same_data(got, expected)

    def test_compute_llc_is_equal(self, written: Target, reference: Target) -> None:
        got, expected = compute_llc(written.open()), compute_llc(reference.open())
        np.testing.assert_array_equal(got.llc_per_chain.values, expected.llc_per_chain.values, strict=True)
        assert float(got.llc_mean) == float(expected.llc_mean)

    def test_rerun_of_a_complete_store_changes_nothing(self, written: Target) -> None:
        before = written.objects()
        sample_into(written)
        assert_same_objects(written.objects(), before)

    def test_other_configuration_is_refused_and_store_untouched(self, written: Target) -> None:
        before = written.objects()
        with pytest.raises(StoreConfigMismatch, match="has a different sampler config") as err:
            sample_into(written, lr=2e-3)
        assert written.url in str(err.value)
        assert_same_objects(written.objects(), before)


class TestLocalStore(StoreConformance):
    @pytest.fixture(scope="class")
    def target(self, tmp_path_factory: pytest.TempPathFactory) -> Target:
        return Target(str(tmp_path_factory.mktemp("local") / "run.zarr"))


class TestS3Store(StoreConformance):
    @pytest.fixture(scope="class")
    def target(self, s3_server: S3Server) -> Target:
        s3_server.start()
        return Target(
            s3_server.url(f"conformance-{uuid.uuid4().hex[:8]}/run.zarr"), s3_server.storage_options
        )

    def test_no_credentials_in_any_object_of_the_bucket(self, written: Target, s3_server: S3Server) -> None:
        bucket = Target(s3_server.url(""), s3_server.storage_options)
        objects = bucket.objects()
        assert any(k.endswith("zarr.json") for k in objects)
        for secret in (s3_server.key, s3_server.secret):
            leaks = [k for k, data in objects.items() if secret.encode() in data or secret in k]
            assert not leaks, f"a credential is stored in {leaks}"


def test_sample_to_s3_makes_few_requests(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """One sample() into a fresh S3 store, its requests counted at the S3 client (passed through): the
    write path opens metadata it wrote without re-reading it and probes nothing twice (a tiny store once
    cost ~300 requests, mostly HEAD and LIST existence probes; grids write thousands of them)."""
    from aiobotocore.client import AioBaseClient

    counts: Counter[str] = Counter()
    call = AioBaseClient._make_api_call

    async def counted(self: Any, operation_name: str, api_params: Any) -> Any:
        counts[operation_name] += 1
        return await call(self, operation_name, api_params)

    monkeypatch.setattr(AioBaseClient, "_make_api_call", counted)
    sample_into(Target(server.url(f"requests-{uuid.uuid4().hex[:8]}/run.zarr"), server.storage_options))
    probes = counts["HeadObject"] + counts["HeadBucket"] + counts["ListObjectsV2"] + counts["ListObjects"]
    assert probes <= PROBES and sum(counts.values()) <= REQUESTS, dict(counts)


@pytest.mark.distributed
def test_two_torchrun_ranks_write_one_s3_store(server: S3Server, s3_url: str, reference: Target) -> None:
    """2 ranks, credentials and endpoint from AWS_* variables only: the same objects as one local process."""
    url = f"{s3_url}/run.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "tests.jobs", url, json.dumps(JOB)]
    env = {
        **os.environ,
        **server.env,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
    }
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert_same_objects(Target(url, server.storage_options).objects(), reference.objects())


def _all_text(caplog: pytest.LogCaptureFixture, errors: list[BaseException]) -> str:
    """Every captured log line and every error as a user would see it (message and traceback)."""
    parts = [caplog.text, *(r.getMessage() for r in caplog.records)]
    for e in errors:
        parts += [str(e), repr(e), "".join(traceback.format_exception(e))]
    return "\n".join(parts)


def test_credentials_never_reach_logs_or_errors(
    server: S3Server, s3_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Secrets passed in storage_options: absent from DEBUG logs (botocore's signed requests included),
    from the errors of a wrong secret, a session token and a wrong endpoint, and from every stored object."""
    good = server.storage_options
    fast = {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 2}}
    wrong_secret = {**good, "secret": f"wrong-secret-{uuid.uuid4().hex}", **fast}
    token = {**good, "token": f"session-token-{uuid.uuid4().hex}", **fast}
    nowhere = {**good, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, **fast}
    errors: list[BaseException] = []
    caplog.set_level(logging.DEBUG)
    sample_into(Target(f"{s3_url}/ok.zarr", good))
    for name, options in [("secret", wrong_secret), ("token", token), ("endpoint", nowhere)]:
        target = Target(f"{s3_url}/{name}.zarr", options)
        with pytest.raises(StoreError) as err:
            sample_into(target)
        assert target.url in str(err.value), f"the {name} error does not name the store"
        errors.append(err.value)
    assert "botocore" in caplog.text, "botocore's DEBUG logs were not captured"
    text = _all_text(caplog, errors)
    secrets = [server.key, server.secret, wrong_secret["secret"], token["token"]]
    assert [s for s in secrets if s in text] == []
    objects = Target(server.url(""), good).objects()
    assert not [k for k, data in objects.items() for s in secrets if s.encode() in data]


def _kill_after_first_flush(server: S3Server, key: str, timeout: float = 60.0) -> threading.Thread:
    """A thread that SIGKILLs the server as soon as the object `key` (chain 0's progress) exists."""

    def watch() -> None:
        client = server.client()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    client.head_object(Bucket=server.bucket, Key=key)
                    server.kill()
                    return
                time.sleep(0.02)
        finally:
            client.close()

    thread = threading.Thread(target=watch, name="kill-s3", daemon=True)
    thread.start()
    return thread


def test_server_dies_mid_write_then_rerun_completes(
    server: S3Server,
    s3_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The S3 server dies after the first chunk: writes retry with backoff, then a StoreError names the
    store (no secrets) and the progress; after a restart the same call finishes a store equal to a clean run."""
    job = {"num_chains": 2, "num_draws": 300}  # 6 chunks per chain: the server dies with most still to come
    monkeypatch.setattr(store.writer, "WRITE_RETRY_S", (0.2, 0.4, 0.8))
    options = {  # no botocore retries: the writer's own backoff is what is under test
        **server.storage_options,
        "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2},
    }
    target = Target(f"{s3_url}/run.zarr", options)
    prefix = target.url.removeprefix(f"s3://{server.bucket}/")
    watcher = _kill_after_first_flush(server, f"{prefix}/chain_steps_done/c/0")
    caplog.set_level(logging.WARNING, logger="distinterp")
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        sample_into(target, **job)
    elapsed = time.monotonic() - start
    watcher.join(timeout=5)
    assert not server.running, "the server was not killed mid-run"
    message = str(err.value)
    assert (
        target.url in message
        and re.search(r"chain 0: \d+/300 steps", message)
        and "rerun the same command" in message
    )
    assert server.secret not in _all_text(caplog, [err.value]) and server.key not in message
    delays = [float(m) for m in re.findall(r"retry \d+ of \d+ in ([\d.]+) s", caplog.text)]
    assert delays[:3] == [0.2, 0.4, 0.8], f"no backoff: {caplog.text}"
    assert elapsed < 60, f"failing took {elapsed:.0f} s"

    server.start()  # returns once every object is readable again
    steps = np.asarray(target.open().dataset.chain_steps_done.values)
    assert (steps < 300).any(), f"nothing was left to do after the outage: {steps}"
    assert "completed" not in target.open().dataset.attrs
    monkeypatch.undo()
    sample_into(target, **job)
    clean = Target(str(tmp_path / "clean.zarr"))
    sample_into(clean, **job)
    assert_same_objects(target.objects(), clean.objects())


def test_location_masks_passwords_and_storage_option_secrets(caplog: pytest.LogCaptureFixture) -> None:
    """A user:password@ URL is masked in messages; storage_options' secrets are masked in any log record."""
    secret = f"never-log-{uuid.uuid4().hex}"
    location = store.Location("https://user:hunter2-pass@example.org/run.zarr", {"secret": secret})
    assert str(location) == "https://user:***@example.org/run.zarr"
    assert secret not in repr(location)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("botocore.auth").debug("signing with %s", secret)
    assert caplog.records[-1].getMessage() == "signing with ***"
