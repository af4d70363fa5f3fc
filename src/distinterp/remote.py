"""Remote stores that cannot be used, said in one line: a bucket that does not exist, an unreachable endpoint."""

from __future__ import annotations

from typing import Any

from distinterp.store import Location, check_reachable


def require_store(location: Location) -> None:
    """One line, fast, when a store's endpoint or bucket cannot be reached (StoreError) or no store is
    there (FileNotFoundError 'no store at ...', local or remote alike). One request: a second S3
    client here leaves pages of aiohttp's 'attached to a different loop' tracebacks at exit."""
    if not check_reachable(location):  # one request, no retries
        raise FileNotFoundError(f"no store at {location}")


def require_reachable(url: str, storage_options: dict[str, Any]) -> None:
    """Fail in one line when a store's (or a sweep root's) endpoint or bucket cannot be reached."""
    check_reachable(Location(url, storage_options))
