"""Remote stores that cannot be used, said in one line: a bucket that does not exist, an unreachable endpoint."""

from __future__ import annotations

from typing import Any

from distinterp.store import Location, StoreError, check_reachable


def check_bucket(fs: Any, location: Location, path: str) -> None:
    """On S3, a store path whose bucket does not exist: say so (writes would fail later, less clearly)."""
    if not location.url.startswith(("s3://", "s3a://")):
        return
    bucket = path.split("/", 1)[0]
    try:
        fs.info(bucket)
    except FileNotFoundError:
        endpoint = (
            location.fsspec_options().get("client_kwargs", {}).get("endpoint_url", "the default endpoint")
        )
        raise StoreError(
            f"{location}: bucket '{bucket}' does not exist at {endpoint}; create it or choose an output_path "
            "in an existing bucket"
        ) from None
    except Exception:  # noqa: BLE001 - no permission to look at the bucket itself: the store's own reads say more
        return


def require_store(location: Location) -> None:
    """One line, fast, when a store's endpoint or bucket cannot be reached (StoreError) or no store is
    there (FileNotFoundError 'no store at ...', local or remote alike). One request: a second S3
    client here leaves pages of aiohttp's 'attached to a different loop' tracebacks at exit."""
    if not check_reachable(location):  # one request, no retries
        raise FileNotFoundError(f"no store at {location}")


def require_reachable(url: str, storage_options: dict[str, Any]) -> None:
    """Fail in one line when a store's (or a sweep root's) endpoint or bucket cannot be reached."""
    check_reachable(Location(url, storage_options))
