#!/usr/bin/env python3
"""Create the bucket of the anodet store (``ANODET_STORE``) if it is missing; write nothing else.

Object stores (``s3://bucket/prefix``): the bucket is created when it does not exist; the prefix needs no
creating (S3 "folders" exist as soon as the pipeline writes its first object under them), so no marker object
is written. Local stores (``./folder``, ``file:///...``): the folder and its parents are created.

S3 endpoint, credentials and region come from the standard AWS variables (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), exactly as
the pipeline itself reads them. Connection errors are retried until ``--wait`` seconds have passed (the object
store may still be starting).

Exit status: 0 the bucket (or folder) exists now, 1 the store could not be reached in time, 2 bad usage,
3 the bucket is there but not ours or access was denied. Standalone on purpose: fsspec/s3fs only, no Prefect,
no anodet import, so it runs from a bare checkout, the anodet image (``/opt/anodet/bootstrap_storage.py``) or
a compose one-shot service.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import fsspec

DEFAULT_STORE = "./anodet-data"  # anodet_core.config.Settings.store's default
OBJECT_STORE_PROTOCOLS = {"s3", "s3a", "gcs", "gs", "abfs", "az", "adl"}
S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # 3-63 chars, lower case


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _fs_options(url: str) -> dict[str, Any]:
    """Filesystem options: a fresh instance always; for S3, fail fast so the --wait loop does the retrying."""
    options: dict[str, Any] = {"skip_instance_cache": True}
    if url.split("://", 1)[0] in {"s3", "s3a"}:
        # botocore and s3fs otherwise retry a refused connection for ~20 s before raising
        options["config_kwargs"] = {"connect_timeout": 5, "retries": {"max_attempts": 2}}
    return options


def _retryable_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "not reachable yet": OSError (incl. ConnectionError) and botocore's own, when present."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError

        errors.append(BotoCoreError)
    except ImportError:  # no s3fs installed: local or other object stores only
        pass
    return tuple(errors)


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def ensure_store(url: str, wait_s: float = 0.0, log: Callable[[str], None] = print) -> str:
    """Make sure the store's bucket (object stores) or folder (local) exists. Returns ``created`` or ``exists``.

    Raises ``TimeoutError`` when the store stays unreachable for ``wait_s`` seconds, ``PermissionError`` when
    access is denied, ``FileExistsError`` when the bucket name is taken by someone else.
    """
    fs, path = fsspec.core.url_to_fs(url, **_fs_options(url))
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs: its own retry loop on top of botocore's; --wait does the waiting here
    protocols = _protocols(fs)
    if "file" in protocols or "local" in protocols:
        existed = fs.isdir(path)
        fs.makedirs(path, exist_ok=True)
        return "exists" if existed else "created"
    if not set(protocols) & OBJECT_STORE_PROTOCOLS:
        raise ValueError(f"unsupported store protocol {protocols[0]!r} in {url!r}")
    bucket = path.strip("/").split("/", 1)[0]
    if not bucket:
        raise ValueError(f"no bucket in store URL {url!r}")
    if "s3" in protocols and not S3_BUCKET_RE.match(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}: 3-63 characters, a-z 0-9 . -")
    deadline = time.monotonic() + max(0.0, wait_s)
    retryable = _retryable_errors()
    while True:
        try:
            return _ensure_bucket(fs, bucket)
        except (FileNotFoundError, FileExistsError, PermissionError):
            raise
        except retryable as exc:  # connection refused, DNS not ready yet, endpoint 5xx while starting ...
            if isinstance(exc, OSError) and exc.errno == errno.EINVAL:
                raise ValueError(f"store {url!r} rejected: {exc}") from exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"object store for {url!r} not reachable: {exc}") from exc
            log(f"waiting for the object store ({type(exc).__name__}: {exc})")
            fs.invalidate_cache()
            time.sleep(2.0)


def _ensure_bucket(fs: fsspec.AbstractFileSystem, bucket: str) -> str:
    try:
        fs.ls(bucket, refresh=True)  # raises on connection errors (exists() would just say False)
        return "exists"
    except FileNotFoundError:
        pass
    region = _region()
    kwargs = {"region_name": region} if region and region != "us-east-1" and "s3" in _protocols(fs) else {}
    try:
        fs.mkdir(bucket, **kwargs)
    except FileExistsError:
        # created by someone else meanwhile (ours: fine) or a bucket name taken by another account
        fs.invalidate_cache()
        fs.ls(bucket, refresh=True)
        return "exists"
    return "created"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bootstrap_storage.py",
        description="Create the bucket (object stores) or folder (local) of the anodet store if missing; writes no objects.",
        epilog="S3 settings come from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION. Exit status: 0 ok, 1 unreachable, 2 usage, 3 denied.",
    )
    p.add_argument(
        "--store",
        default=os.environ.get("ANODET_STORE", DEFAULT_STORE),
        help=f"store root, any fsspec URL such as s3://bucket/prefix (default: $ANODET_STORE, else {DEFAULT_STORE})",
    )
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="keep retrying connection errors this long (default: 0, one attempt)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        outcome = ensure_store(args.store, args.wait, log=lambda msg: print(msg, file=sys.stderr))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (PermissionError, FileExistsError) as exc:
        print(f"error: access to the bucket of {args.store!r} denied or name taken: {exc!r}", file=sys.stderr)
        return 3
    print(f"{args.store}: {'created' if outcome == 'created' else 'already there'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
