"""Where a store lives: `Location` (local path or fsspec URL, its storage_options), and the redaction
of credentials from every message and log line."""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import zarr
from zarr.abc.store import Store

from distinterp.paths import sibling

logger = logging.getLogger(__name__)


# storage_options keys whose values are secrets (s3fs, gcsfs, adlfs, botocore client_kwargs, http auth).
_SECRET_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "account_key",
        "sas_token",
        "client_secret",
        "connection_string",
    }
)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def _find_secrets(options: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(options, dict):
        for k, v in options.items():
            if isinstance(v, str) and str(k).lower() in _SECRET_KEYS and len(v) >= 8:
                found.add(v)
            else:
                found |= _find_secrets(v)
    elif isinstance(options, (list, tuple)):
        for v in options:
            found |= _find_secrets(v)
    return found


def redact(text: str) -> str:
    """text with every credential seen in a Location's storage_options replaced by '***'."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def _register_secrets(options: dict[str, Any]) -> None:
    """Remember storage_options' credentials, and redact them from every log record from now on.

    botocore logs signed requests (access key, session token) at DEBUG; a record factory is the one
    hook that sees the records of every logger, so those lines never carry the credentials we were given.
    """
    new = _find_secrets(options) - _secrets
    if not new:
        return
    with _secrets_lock:
        if not _secrets:
            make_record = logging.getLogRecordFactory()

            def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = make_record(*args, **kwargs)
                try:
                    message = record.getMessage()
                except (TypeError, ValueError):  # a malformed record: leave it to logging's own error path
                    return record
                if any(secret in message for secret in _secrets):
                    record.msg, record.args = redact(message), None
                return record

            logging.setLogRecordFactory(redacting_factory)
        _secrets.update(new)


_options_seen: dict[str, dict[str, Any]] = {}
"""storage_options by URL, in memory only (never persisted or printed): see Location.known."""


@dataclass(frozen=True)
class Location:
    """Where a store lives: a local path or any fsspec URL, with its storage_options (never persisted)."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _register_secrets(self.storage_options)
        if self.storage_options:
            _options_seen[self.url] = self.storage_options

    @classmethod
    def known(cls, url: str) -> Location:
        """`url` with the storage_options this process last used for it (an error naming damage in an
        opened store reads the store again, but an xarray object records only its URL)."""
        return cls(url, _options_seen.get(url, {}))

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> Path:
        return Path(self.url.removeprefix("file://"))

    def zarr_store(self, read_only: bool = False) -> Store:
        if self.is_local:
            return zarr.storage.LocalStore(self.local_path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self.fsspec_options(), read_only=read_only
        )

    def fsspec_options(self) -> dict[str, Any]:
        """storage_options, with botocore's standard retries on S3 unless the user chose their own, and
        s3fs's max_concurrency 1 unless chosen: above 1, s3fs sends a HEAD before every whole-object GET
        (to split objects over its block size into parallel ranged reads), doubling a store's small reads."""
        options = dict(self.storage_options)
        if self.url.startswith(("s3://", "s3a://")):
            config = dict(options.get("config_kwargs", {}))
            config.setdefault("retries", {"max_attempts": 10, "mode": "standard"})
            options["config_kwargs"] = config
            options.setdefault("max_concurrency", 1)
        return options

    def sibling(self, kind: str, name: str = "") -> Location:
        """The path of `kind` beside this store (distinterp.paths' one table), with the same options."""
        return Location(sibling(self.url, kind, name), self.storage_options)

    def exists(self) -> bool:
        """Whether anything is at this location (a file, or a directory / prefix)."""
        if self.is_local:
            return self.local_path.exists()
        fs, path = fsspec.core.url_to_fs(self.url, **self.fsspec_options())
        return bool(fs.exists(path))

    def write_atomic(self, data: bytes) -> None:
        """Write `data` as the file at this location atomically: a reader sees the old bytes or the new.
        Locally a synced temp file then os.replace; on an object store one PUT."""
        if self.is_local:
            path = self.local_path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            fs, path_ = fsspec.core.url_to_fs(self.url, **self.fsspec_options())
            fs.pipe_file(path_, data)

    def __str__(self) -> str:
        """The URL for messages: a password in it (scheme://user:password@host) is masked."""
        return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", self.url)
