"""The local speech service's wire format: one request and one reply per Unix-socket connection.

A message is two big-endian uint32 lengths (JSON header, binary payload), the UTF-8 JSON header,
then the payload (PCM for audio). A connection per request keeps failure simple: if the service
dies mid-request the caller sees EOF at once and falls back, with no stream to resynchronise.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

_LENGTHS = struct.Struct(">II")
MAX_HEADER = 64 * 1024
MAX_PAYLOAD = 64 * 2**20  # 30 minutes of 16 kHz int16 audio


def send_message(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if len(encoded) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise ValueError(
            f"speech service message too large (header {len(encoded)} B, payload "
            f"{len(payload)} B; limits {MAX_HEADER} B and {MAX_PAYLOAD} B)"
        )
    sock.sendall(_LENGTHS.pack(len(encoded), len(payload)) + encoded + payload)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """One message; ``ConnectionError`` if the peer closed or sent something malformed."""
    header_len, payload_len = _LENGTHS.unpack(_recv_exact(sock, _LENGTHS.size))
    if header_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise ConnectionError(f"speech service peer sent an oversized message ({header_len} B)")
    try:
        header = json.loads(_recv_exact(sock, header_len))
    except ValueError as e:
        raise ConnectionError(f"speech service peer sent a malformed header: {e}") from e
    if not isinstance(header, dict):
        raise ConnectionError("speech service peer sent a header that is not an object")
    return header, _recv_exact(sock, payload_len)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("the speech service closed the connection")
        chunks.extend(chunk)
    return bytes(chunks)
