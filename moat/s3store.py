"""The message store in S3-compatible object storage (``store.backend: s3``): one object per
message, ``<prefix><last two characters of the id>/<id>.eml``, in one bucket that every service
of the installation shares (Kubernetes pods share no disk).

boto3 is synchronous: each call runs in a worker thread of the store's own pool, one thread per
connection of the client's pool (``max_pool_connections``; the client is thread-safe). Not the
event loop's default executor: it has a handful of threads (CPU count + 4), and with a PUT
taking tens of milliseconds against real object storage it would cap a process at a few hundred
writes a second and queue the time to 250 behind other threads' work. A PUT is
answered only once the object is stored, so ``write`` returning is the same promise as the
directory store's fsync: ingress answers 250 after it. Objects appear whole or not at all, so an
interrupted write leaves nothing to sweep.

Credentials: ``store.s3.access_key_id`` / ``secret_access_key`` (set them through the
environment, ``MOAT_STORE__S3__SECRET_ACCESS_KEY``, never in a file in the repository), else
boto3's own chain (``AWS_*`` variables, a web identity token on Kubernetes, an instance role).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from moat.settings import S3Settings
from moat.spool import Copy, MessageStore, StoreUnavailable, check_id

log = logging.getLogger(__name__)

_SUFFIX = ".eml"
_MISSING = {"NoSuchKey", "404", "NotFound"}
# There is no disk to fill: object storage answers for its own capacity (a PUT that does not
# fit fails, and the sender gets 451 and tries again).
_UNLIMITED = 1 << 62

T = TypeVar("T")


class S3Store(MessageStore):
    def __init__(self, settings: S3Settings) -> None:
        if not settings.bucket:
            raise ValueError("store.backend is s3 but store.s3.bucket is not set")
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        secret = settings.secret_access_key
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                s3={"addressing_style": settings.addressing_style},
                retries={"mode": "standard", "max_attempts": settings.max_attempts},
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                max_pool_connections=settings.max_pool_connections,
                # Checksums only where the operation requires one: some S3-compatible stores
                # refuse the trailing CRC32 that boto3 now adds to every PUT by default.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._pool = ThreadPoolExecutor(settings.max_pool_connections, thread_name_prefix="s3")
        if settings.create_bucket:
            self.ensure_bucket()

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(function, *args, **kwargs))

    def key(self, message_id: str) -> str:
        check_id(message_id)
        return f"{self.prefix}{message_id[-2:].lower()}/{message_id}{_SUFFIX}"

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (for compose and tests; in production the
        bucket, its lifecycle and its access policy are the operator's)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call(self.client.create_bucket, Bucket=self.bucket)
            log.info("created bucket %s", self.bucket)

    async def write(self, message_id: str, data: bytes) -> None:
        key = self.key(message_id)
        await self._run(self._call, self.client.put_object, Bucket=self.bucket, Key=key, Body=data)

    async def read(self, message_id: str) -> bytes:
        return await self._get(message_id)

    async def head(self, message_id: str, size: int) -> bytes:
        return await self._get(message_id, Range=f"bytes=0-{size - 1}")

    async def _get(self, message_id: str, **options: str) -> bytes:
        key = self.key(message_id)

        def read() -> bytes:
            answer = self._call(self.client.get_object, Bucket=self.bucket, Key=key, **options)
            body = answer["Body"]
            try:
                return bytes(self._call(body.read))
            finally:
                body.close()

        return await self._run(read)

    async def open(self, message_id: str) -> Copy:
        key = self.key(message_id)
        answer = await self._run(self._call, self.client.get_object, Bucket=self.bucket, Key=key)
        return Copy(answer["Body"], int(answer["ContentLength"]))

    async def exists(self, message_id: str) -> bool:
        key = self.key(message_id)
        try:
            await self._run(self._call, self.client.head_object, Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    async def delete(self, message_id: str) -> None:
        key = self.key(message_id)
        # S3 answers 204 for a key that is not there: removing twice is no error.
        await self._run(self._call, self.client.delete_object, Bucket=self.bucket, Key=key)

    def free_bytes(self) -> int:
        return _UNLIMITED

    def stored(self) -> Iterator[tuple[str, float]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"].rpartition("/")[2]
                    if not name.endswith(_SUFFIX):
                        continue
                    message_id = name.removesuffix(_SUFFIX)
                    if message_id.isalnum():
                        yield message_id, item["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"cannot list s3://{self.bucket}/{self.prefix}: {exc}") from exc

    def sweep_temporary(self, older_than: float) -> int:
        # A single PUT (all we make; messages are far below its 5 GB) is atomic: an interrupted
        # one leaves no object and no upload part behind.
        return 0

    def _call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``operation``, its errors told apart: the copy missing (``FileNotFoundError``) and
        the store unreachable or refusing (``StoreUnavailable``, an ``OSError``)."""
        try:
            return operation(*args, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise FileNotFoundError(f"s3://{self.bucket}: {kwargs.get('Key')}") from None
            raise StoreUnavailable(f"s3://{self.bucket}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"s3://{self.bucket}: {exc}") from exc
