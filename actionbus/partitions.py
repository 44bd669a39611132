"""Which partition an action of a partitioned service goes to.

A service declared with ``partitions=N`` (``CommonAppSettings.partitions``) has N action
streams (``QueueManager.get_partition_stream``). A sender picks:

* an action with an ``ordering_key``: partition ``crc32(utf-8 bytes of the key) mod N``
  (CRC-32 as in zlib, gzip and PNG: polynomial 0xEDB88320, initial value and final xor
  0xFFFFFFFF; ``crc32("order-42") = 1475806942``), so one key always lands in one partition;
* any other action: the next partition in turn (round robin per sender and target).

Any language can compute the same: Node ``zlib.crc32`` (>= 20.15), Go ``hash/crc32.ChecksumIEEE``,
Java ``java.util.zip.CRC32``.
"""

from __future__ import annotations

import zlib

from actionbus.exceptions import ConfigurationError

__all__ = ["MAX_PARTITIONS", "check_partitions", "partition_for_key"]

MAX_PARTITIONS = 64
"""The largest partition count a service may have."""


def partition_for_key(ordering_key: str, partitions: int) -> int:
    """The partition of ``ordering_key`` among ``partitions``: CRC-32 of its UTF-8 bytes
    modulo ``partitions``."""
    return zlib.crc32(ordering_key.encode("utf-8")) % partitions


def check_partitions(partitions: object, what: str = "partitions") -> int:
    """``partitions`` if it is an int from 1 to ``MAX_PARTITIONS``, else ``ConfigurationError``."""
    if isinstance(partitions, bool) or not isinstance(partitions, int) \
            or not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigurationError(
            f"{what} must be a whole number from 1 to {MAX_PARTITIONS}, got {partitions!r}")
    return partitions
