"""Read the declared sizes of variable-length string attributes from an object header.

A variable-length attribute keeps only a 16-byte reference in its object header; the text
lives in a global heap collection elsewhere in the file. libhdf5 reads that whole collection
and converts it before a caller sees a single byte (about five times the text's size in
memory), so a forged 400 MB ``provenance`` attribute cost gigabytes before any size check
could run. The reference starts with the text's length, so reading the object header's raw
bytes (a few hundred of them) tells the size first.

Only what libhdf5 writes for replaykit's files is understood: 8-byte addresses and lengths,
base address 0, object header versions 1 and 2, attribute messages versions 1-3 stored in
the header (compact storage), unshared. Anything else returns ``None`` and the caller
refuses the attribute: replaykit never writes another layout.

Layouts follow the HDF5 File Format Specification version 3.0 (sections II.A, IV.A.1,
IV.A.2.c, IV.A.2.d, IV.A.2.m, IV.A.2.q).
"""

from __future__ import annotations

import math
import os
import struct

__all__ = ["vlen_attribute_bytes"]

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# One header chunk holds a handful of messages; a larger one is not a replaykit header.
_MAX_CHUNK = 1 << 20
_MAX_CHUNKS = 64
_MSG_CONTINUATION = 0x10
_MSG_ATTRIBUTE = 0x0C
_CLASS_VLEN = 9
# Per element: sequence length (4), heap collection address (8), object index (4).
_VLEN_REF = 16
# Attribute message version 3 adds a name-encoding byte; dataspace message version 2 drops
# version 1's reserved bytes and says "null" (no elements) in its type byte.
_ATTR_V3 = 3
_SPACE_V1, _SPACE_V2, _SPACE_NULL = 1, 2, 2


def vlen_attribute_bytes(fd: int, header_addr: int, name: bytes) -> int | None:
    """Total declared bytes of the variable-length string attribute ``name``.

    Args:
        fd: An open descriptor of the HDF5 file (read with ``os.pread``; its offset is not
            moved).
        header_addr: The object header's address (``h5o.get_info(oid).addr``).
        name: The attribute's name.

    Returns:
        The sum of the lengths its elements declare, or ``None`` when the header is not laid
        out the way libhdf5 writes replaykit's files, or holds no such attribute.
    """
    try:
        if not _plain_superblock(fd):
            return None
        for body in _message_bodies(fd, header_addr):
            found = _attribute(body, name)
            if found is not None:
                return found
    except (OSError, struct.error, ValueError, IndexError):
        return None
    return None


def _pread(fd: int, n: int, at: int) -> bytes:
    data = os.pread(fd, n, at)
    if len(data) != n:
        raise ValueError("short read")
    return data


def _plain_superblock(fd: int) -> bool:
    """8-byte offsets and lengths and base address 0, as every file replaykit writes."""
    head = _pread(fd, 32, 0)
    if head[:8] != _SIGNATURE:
        return False
    version = head[8]
    if version in (0, 1):
        sizes = (head[13], head[14])
        base_at = 24 if version == 0 else 28
    elif version in (2, 3):
        sizes = (head[9], head[10])
        base_at = 12
    else:
        return False
    base = struct.unpack_from("<Q", _pread(fd, 8, base_at))[0]
    return sizes == (8, 8) and base == 0


def _message_bodies(fd: int, addr: int) -> list[tuple[int, bytes]]:
    """Every message in the object header at ``addr``, as (type, body), continuations read."""
    first = _pread(fd, 16, addr)
    if first[:4] == b"OHDR":
        return _v2_messages(fd, addr)
    if first[0] != 1:
        return []
    size = struct.unpack_from("<I", first, 8)[0]
    chunks = [(addr + 16, size)]
    out: list[tuple[int, bytes]] = []
    while chunks:
        if len(chunks) + len(out) > _MAX_CHUNKS * 64:
            raise ValueError("too many header messages")
        at, length = chunks.pop(0)
        if length > _MAX_CHUNK:
            raise ValueError("header chunk too large")
        data = _pread(fd, length, at)
        pos = 0
        while pos + 8 <= len(data):
            mtype, msize, mflags = struct.unpack_from("<HHB", data, pos)
            body = data[pos + 8 : pos + 8 + msize]
            pos += 8 + msize
            out.append((mtype | (mflags << 16), body))
            if mtype == _MSG_CONTINUATION:
                chunks.append(struct.unpack_from("<QQ", body))
    return out


def _v2_messages(fd: int, addr: int) -> list[tuple[int, bytes]]:
    prefix = _pread(fd, 32, addr)
    flags = prefix[5]
    pos = 6
    if flags & 0x20:
        pos += 16
    if flags & 0x10:
        pos += 4
    width = 1 << (flags & 0x03)
    size = int.from_bytes(prefix[pos : pos + width], "little")
    chunks = [(addr + pos + width, size)]
    order = 2 if flags & 0x04 else 0
    out: list[tuple[int, bytes]] = []
    first = True
    while chunks:
        if len(out) > _MAX_CHUNKS * 64:
            raise ValueError("too many header messages")
        at, length = chunks.pop(0)
        if not first:
            # A continuation chunk: "OCHK", messages, checksum (length counts all three).
            if _pread(fd, 4, at) != b"OCHK":
                raise ValueError("bad continuation chunk")
            at, length = at + 4, length - 8
        first = False
        if not 0 <= length <= _MAX_CHUNK:
            raise ValueError("header chunk too large")
        data = _pread(fd, length, at)
        pos = 0
        while pos + 4 + order <= len(data):
            mtype, msize, mflags = struct.unpack_from("<BHB", data, pos)
            body = data[pos + 4 + order : pos + 4 + order + msize]
            pos += 4 + order + msize
            out.append((mtype | (mflags << 16), body))
            if mtype == _MSG_CONTINUATION:
                chunks.append(struct.unpack_from("<QQ", body))
    return out


def _attribute(message: tuple[int, bytes], name: bytes) -> int | None:
    kind, body = message
    mtype, mflags = kind & 0xFFFF, kind >> 16
    if mtype != _MSG_ATTRIBUTE or mflags & 0x02:  # not an attribute, or a shared message
        return None
    version = body[0]
    if version not in (1, 2, 3):
        return None
    aflags = body[1] if version > 1 else 0
    name_size, dt_size, ds_size = struct.unpack_from("<HHH", body, 2)
    pos = 8 + (1 if version == _ATTR_V3 else 0)

    def field(n: int) -> int:
        return (n + 7) // 8 * 8 if version == 1 else n

    if body[pos : pos + name_size].rstrip(b"\0") != name or aflags & 0x03:
        return None
    pos += field(name_size)
    dtype = body[pos : pos + dt_size]
    pos += field(dt_size)
    space = body[pos : pos + ds_size]
    pos += field(ds_size)
    if (dtype[0] & 0x0F) != _CLASS_VLEN or (dtype[1] & 0x0F) != 1:
        return None  # not a variable-length string
    count = _elements(space)
    refs = body[pos : pos + count * _VLEN_REF]
    if count < 0 or len(refs) != count * _VLEN_REF:
        return None
    return sum(int(struct.unpack_from("<I", refs, i * _VLEN_REF)[0]) for i in range(count))


def _elements(space: bytes) -> int:
    version, rank = space[0], space[1]
    if version == _SPACE_V1:
        dims_at = 8
    elif version == _SPACE_V2:
        if space[3] == _SPACE_NULL:  # a null dataspace holds nothing
            return 0
        dims_at = 4
    else:
        return -1
    dims = struct.unpack_from(f"<{rank}Q", space, dims_at) if rank else ()
    return math.prod(dims)
