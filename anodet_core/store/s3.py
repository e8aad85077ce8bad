"""S3 under the store: transient faults retried in one place, and errors that say what went wrong.

Retries. Two layers of the stack retry an S3 request by themselves, and stacked they multiply: botocore (legacy
mode by default: 5 attempts of 5xx answers, throttling and connection errors) and s3fs's loop
(``S3FileSystem.retries`` = 5 attempts of dropped connections and SlowDown, nested once more around body reads),
which made 25 or more attempts of one throttled or unreachable request. The store keeps botocore's: its
"standard" mode retries 500/502/503/504, throttling codes and connection errors with jittered exponential backoff
(at most 20 s a wait) and stops retrying while most calls of the client fail (its retry quota), so an outage
fails fast instead of waiting out every request. :func:`fs_options` sets ``config_kwargs={"retries": {"mode":
"standard", "total_max_attempts": DEFAULT_ATTEMPTS}}`` where neither the user's ``config_kwargs`` nor
``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` say otherwise, and :func:`configure` sets s3fs's loop to one attempt.
Timeouts stay s3fs's (connect 5 s, read 15 s; ``config_kwargs`` overrides them too).

The one fault botocore cannot retry is a body that breaks off after it has handed the response over;
:func:`read` fetches such a body again (:data:`BODY_ATTEMPTS`) for the store's object reads.

Errors (:func:`translate_errors`): a missing object raises FileNotFoundError "not found" naming the URL; a
missing bucket raises :class:`BucketNotFound`, not an OSError, so that no per-capture handler turns it into a
status and the run stops; a read still failing after the retries raises an OSError that is not
FileNotFoundError (botocore's and aiohttp's own exceptions are wrapped), which the night reports as the
capture's ``io_error``.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import fsspec

__all__ = ["BODY_ATTEMPTS", "DEFAULT_ATTEMPTS", "BucketNotFound", "check_bucket", "configure", "fs_options", "is_s3",
           "read", "translate_errors"]

T = TypeVar("T")
S3_PROTOCOLS = frozenset({"s3", "s3a"})
# attempts of one request, the first included: 6 wait ~15 s in all on average (31 s at most) before giving up,
# long enough for a throttled burst, short enough that an object that keeps failing costs seconds, not the night
DEFAULT_ATTEMPTS = 6
BODY_ATTEMPTS = 3  # fetches of a body that broke off (each fetch is a request botocore retries by itself)


class BucketNotFound(LookupError):
    """The store's bucket does not exist. Not an OSError: per-capture handlers must not turn it into a status."""


def is_s3(url: str) -> bool:
    """Whether a store root or object URL is on S3 (``s3://`` or ``s3a://``)."""
    return "://" in url and url.split("://", 1)[0].lower() in S3_PROTOCOLS


def fs_options(url: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Filesystem options for a store at ``url``: the user's ``options`` over the retry defaults (S3 only)."""
    merged = dict(options or {})
    if not is_s3(url):
        return merged
    defaults: dict[str, Any] = {}
    if not os.environ.get("AWS_RETRY_MODE"):
        defaults["mode"] = "standard"
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        defaults["total_max_attempts"] = DEFAULT_ATTEMPTS
    config = dict(merged.get("config_kwargs") or {})
    user = config.get("retries") or {}
    if "max_attempts" in user or "total_max_attempts" in user:
        defaults.pop("total_max_attempts", None)  # botocore would let it override the user's max_attempts
    merged["config_kwargs"] = {**config, "retries": {**defaults, **user}}
    return merged


def configure(fs: fsspec.AbstractFileSystem) -> None:
    """Make an S3 filesystem's own retry loop a single attempt (botocore retries); others are left as they are."""
    if set(_protocols(fs)) & S3_PROTOCOLS:
        fs.retries = 1  # not a constructor option of S3FileSystem: an attribute of the instance


def check_bucket(fs: fsspec.AbstractFileSystem, base: str, root: str) -> None:
    """Raise :class:`BucketNotFound` when the bucket of an S3 store ``root`` (``base`` on ``fs``) does not exist."""
    if not set(_protocols(fs)) & S3_PROTOCOLS:
        return
    bucket = base.strip("/").split("/", 1)[0]
    if not bucket:
        return
    try:
        with translate_errors(f"s3://{bucket}"):
            fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError as exc:
        raise BucketNotFound(f"bucket {bucket!r} of store {root} does not exist (create it first, e.g. with "
                             f"infra/bootstrap_storage.py)") from exc
    except PermissionError:
        pass  # a policy may grant the objects under the prefix but not HeadBucket; the store's own calls will tell


def read(url: str, fetch: Callable[[], T]) -> T:
    """``fetch()`` (a read of the object at ``url``) with errors translated; a broken-off body is fetched again."""
    breaks = _s3_exceptions(url)[1]
    with translate_errors(url):
        for attempt in range(BODY_ATTEMPTS - 1):
            try:
                return fetch()
            except breaks:
                time.sleep(0.2 * 2**attempt)
        return fetch()


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Re-raise a storage error of an operation on ``url`` as described in the module docstring."""
    try:
        yield
    except FileNotFoundError as exc:
        if _error_code(exc.__cause__) == "NoSuchBucket":
            bucket = fsspec.core.strip_protocol(url).split("/", 1)[0]
            raise BucketNotFound(f"bucket {bucket!r} does not exist (reading {url})") from exc
        raise FileNotFoundError(errno.ENOENT, "not found", url) from exc
    except _s3_exceptions(url)[0] as exc:  # still failing after the retries, outside the OSError family
        raise OSError(errno.EIO, f"{type(exc).__name__}: {exc}", url) from exc


def _s3_exceptions(url: str) -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """Off S3 none; on S3 botocore's and aiohttp's exceptions, which s3fs lets through untranslated, and those of a
    body that broke off after botocore had returned the response."""
    if not is_s3(url):
        return (), ()
    import aiohttp
    from botocore.exceptions import BotoCoreError, IncompleteReadError, ResponseStreamingError  # type: ignore[import-untyped]
    from urllib3.exceptions import IncompleteRead

    return (BotoCoreError, aiohttp.ClientError), (aiohttp.ClientPayloadError, ResponseStreamingError, IncompleteReadError,
                                                  IncompleteRead)


def _error_code(exc: BaseException | None) -> str | None:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (str(fs.protocol),)
