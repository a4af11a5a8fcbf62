"""Check that a Kafka broker responds to a Metadata request and lists itself.

scripts/services runs this with any Python 3, before scripts/bootstrap has
created the virtual environment, so it speaks the Kafka wire protocol with the
standard library only. It sends one Metadata request, version 4 (Kafka 4.1.1
accepts it), for no topics. The response lists the broker only once it
serves requests and its metadata counts it as a live broker.

Usage: probe.py HOST PORT [TIMEOUT_SECONDS]
Exit status 0 when the broker is healthy; 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import socket
import struct
import sys

METADATA_API_KEY = 3
METADATA_VERSION = 4
CORRELATION_ID = 7
CLIENT_ID = b"sentinel-services-probe"


def build_metadata_request() -> bytes:
    header = struct.pack(">hhih", METADATA_API_KEY, METADATA_VERSION, CORRELATION_ID, len(CLIENT_ID)) + CLIENT_ID
    # An empty topic array requests no topics (-1 would request all of them),
    # and allow_auto_topic_creation is false.
    body = struct.pack(">ib", 0, 0)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = connection.recv(remaining)
        if not chunk:
            raise ConnectionError(f"broker closed the connection with {remaining} of {size} bytes unread")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class Reader:
    """Cursor over a response body in Kafka's big-endian encoding."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return int(value)

    def nullable_string(self) -> str | None:
        length = self.unpack(">h")
        if length < 0:
            return None
        text = self.data[self.offset : self.offset + length].decode("utf-8")
        self.offset += length
        return text


def read_brokers(response: bytes) -> tuple[list[str], str | None]:
    """Parse a Metadata v4 response into broker addresses and the cluster id."""
    reader = Reader(response)
    correlation_id = reader.unpack(">i")
    if correlation_id != CORRELATION_ID:
        raise ValueError(f"response correlation id {correlation_id} does not match request id {CORRELATION_ID}")
    reader.unpack(">i")  # throttle_time_ms
    brokers = []
    for _ in range(reader.unpack(">i")):
        node_id = reader.unpack(">i")
        host = reader.nullable_string()
        port = reader.unpack(">i")
        reader.nullable_string()  # rack
        brokers.append(f"{node_id}@{host}:{port}")
    cluster_id = reader.nullable_string()
    return brokers, cluster_id


def probe(host: str, port: int, timeout_s: float) -> tuple[list[str], str | None]:
    with socket.create_connection((host, port), timeout=timeout_s) as connection:
        connection.sendall(build_metadata_request())
        (size,) = struct.unpack(">i", receive_exactly(connection, 4))
        return read_brokers(receive_exactly(connection, size))


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    host, port = argv[1], int(argv[2])
    timeout_s = float(argv[3]) if len(argv) == 4 else 3.0
    try:
        brokers, cluster_id = probe(host, port, timeout_s)
    except (OSError, ValueError, struct.error) as exc:
        print(f"Kafka Metadata request to {host}:{port} failed: {exc}", file=sys.stderr)
        return 1
    if not brokers:
        print(f"Kafka at {host}:{port} responded but listed no live broker yet", file=sys.stderr)
        return 1
    print(f"cluster {cluster_id}, brokers {', '.join(brokers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
