"""Damage in a JPEG's compressed data, which Pillow decodes silently into wrong pixels.

libjpeg reports a damaged entropy-coded segment only as a warning ("Corrupt JPEG data:
bad Huffman code", "premature end of data segment", "extraneous bytes before marker")
and Pillow discards warnings. :func:`jpeg_damage` finds the same faults: it walks the
markers and, for sequential Huffman-coded scans (what nearly every JPEG is), decodes
the Huffman codes of every block, which must consume each restart interval exactly.
"""

from __future__ import annotations

import math

_SOF_HUFFMAN_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended: decoded here
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_RST = range(0xD0, 0xD8)
_SOI, _EOI, _SOS, _DHT, _DRI, _TEM = 0xD8, 0xD9, 0xDA, 0xC4, 0xDD, 0x01


class _Damaged(Exception):
    pass


def jpeg_damage(data: bytes) -> str | None:
    """Why the JPEG ``data`` is damaged, or None when it is sound (as far as can be told
    without the pixels: a damaged progressive or arithmetic-coded scan goes unnoticed)."""
    try:
        _walk(data)
    except _Damaged as exc:
        return str(exc)
    except (IndexError, ValueError) as exc:  # a segment shorter than its fields
        return f"malformed marker segment ({exc})"
    return None


def _walk(data: bytes) -> None:
    if data[:2] != b"\xff\xd8":
        raise _Damaged("no JPEG start marker")
    pos, frame, tables, interval = 2, None, {}, 0
    while True:
        if pos >= len(data):
            raise _Damaged("premature end of file (no end-of-image marker)")
        if data[pos] != 0xFF:
            raise _Damaged(f"extraneous bytes before a marker at byte {pos}")
        while pos + 1 < len(data) and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos + 1]
        if marker == _EOI:
            return
        if marker in _RST or marker in (_SOI, _TEM):
            raise _Damaged(f"unexpected marker 0x{marker:02x} at byte {pos}")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            raise _Damaged(f"marker 0x{marker:02x} at byte {pos} runs past the end of file")
        pos += 2 + length
        if marker in _SOF:
            frame = _frame(marker, body)
        elif marker == _DHT:
            tables.update(_huffman_tables(body))
        elif marker == _DRI:
            interval = int.from_bytes(body[:2], "big")
        elif marker == _SOS:
            if frame is None:
                raise _Damaged("scan before the frame header")
            segments, pos = _entropy_segments(data, pos)
            if frame["kind"] in _SOF_HUFFMAN_SEQUENTIAL and frame["height"] > 0:
                _check_scan(frame, _scan(body), tables, interval, segments)


def _frame(kind: int, body: bytes) -> dict:
    height, width, n = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
    comps = {}
    for i in range(n):
        cid, hv = body[6 + 3 * i], body[7 + 3 * i]
        comps[cid] = (hv >> 4, hv & 15)
    if not comps or any(h not in (1, 2, 3, 4) or v not in (1, 2, 3, 4) for h, v in comps.values()):
        raise _Damaged("frame header with bad sampling factors")
    return {"kind": kind, "height": height, "width": width, "comps": comps}


def _scan(body: bytes) -> list[tuple[int, int, int]]:
    """``(component id, DC table, AC table)`` of each component of a scan."""
    return [(body[1 + 2 * i], body[2 + 2 * i] >> 4, body[2 + 2 * i] & 15) for i in range(body[0])]


def _huffman_tables(body: bytes) -> dict[tuple[int, int], list[int]]:
    """``{(class, id): lookup}``: entry ``length << 8 | symbol`` for every 16-bit prefix,
    0 where no code starts (a bad Huffman code)."""
    out, pos = {}, 0
    while pos < len(body):
        cls_id, counts = body[pos], body[pos + 1 : pos + 17]
        symbols = body[pos + 17 : pos + 17 + sum(counts)]
        if len(counts) != 16 or len(symbols) != sum(counts):
            raise _Damaged("truncated Huffman table")
        lookup, code, k = [0] * 65536, 0, 0
        for length, count in enumerate(counts, start=1):
            for _ in range(count):
                if code >= 1 << length:
                    raise _Damaged("bogus Huffman table")
                shift = 16 - length
                lookup[code << shift : (code + 1) << shift] = [length << 8 | symbols[k]] * (
                    1 << shift
                )
                code, k = code + 1, k + 1
            code <<= 1
        out[(cls_id >> 4, cls_id & 15)] = lookup
        pos += 17 + sum(counts)
    return out


def _entropy_segments(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """The restart intervals of the entropy-coded data at ``pos`` (byte stuffing undone,
    restart markers checked to run 0..7), and where the next marker starts."""
    segments, start, expect = [], pos, 0
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise _Damaged("premature end of file inside a scan")
        follower = data[pos + 1]
        if follower == 0x00:
            pos += 2
            continue
        if follower == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        segments.append(data[start:pos].replace(b"\xff\x00", b"\xff"))
        if follower not in _RST:
            return segments, pos
        if follower != 0xD0 + expect:
            raise _Damaged(f"restart marker {follower - 0xD0} where {expect} was due")
        expect, pos = (expect + 1) % 8, pos + 2
        start = pos


def _check_scan(
    frame: dict, scan: list[tuple[int, int, int]], tables: dict, interval: int, segments: list
) -> None:
    comps = frame["comps"]
    hmax = max(h for h, _ in comps.values())
    vmax = max(v for _, v in comps.values())
    if any(cid not in comps for cid, _, _ in scan):
        raise _Damaged("scan of a component the frame lacks")
    if len(scan) == 1:  # one component: its own blocks, one per MCU
        h, v = comps[scan[0][0]]
        cols = math.ceil(math.ceil(frame["width"] * h / hmax) / 8)
        rows = math.ceil(math.ceil(frame["height"] * v / vmax) / 8)
        mcu = [scan[0][1:]]
    else:  # interleaved: h x v blocks of each component per MCU
        cols = math.ceil(frame["width"] / (8 * hmax))
        rows = math.ceil(frame["height"] / (8 * vmax))
        mcu = [(dc, ac) for cid, dc, ac in scan for _ in range(comps[cid][0] * comps[cid][1])]
    try:
        blocks = [(tables[(0, dc)], tables[(1, ac)]) for dc, ac in mcu]
    except KeyError as exc:
        raise _Damaged(f"Huffman table {exc} used but not defined") from None
    total = cols * rows
    per = interval or total
    if len(segments) != math.ceil(total / per):
        raise _Damaged(f"{len(segments)} restart intervals where {math.ceil(total / per)} are due")
    for i, segment in enumerate(segments):
        _check_segment(segment, blocks, min(per, total - i * per))


def _check_segment(segment: bytes, blocks: list, mcus: int) -> None:
    """Decode the Huffman codes of ``mcus`` MCUs; they must end in the last byte."""
    buf, pos, end = segment + b"\0\0\0", 0, 8 * len(segment)
    for _ in range(mcus):
        for dc, ac in blocks:
            pos = _block(buf, pos, dc, ac)
        if pos > end:
            raise _Damaged("premature end of data segment")
    if (pos + 7) // 8 < len(segment):
        raise _Damaged(f"{len(segment) - (pos + 7) // 8} extraneous bytes in a data segment")


def _block(buf: bytes, pos: int, dc: list[int], ac: list[int]) -> int:
    entry = dc[_peek16(buf, pos)]
    if not entry:
        raise _Damaged("bad Huffman code")
    pos += (entry >> 8) + (entry & 0xFF)  # the code, then as many bits as its category
    k = 1
    while k < 64:
        entry = ac[_peek16(buf, pos)]
        if not entry:
            raise _Damaged("bad Huffman code")
        symbol = entry & 0xFF
        pos += (entry >> 8) + (symbol & 15)
        if symbol == 0:  # end of block
            break
        if symbol & 15 == 0 and symbol != 0xF0:  # no encoder writes these
            raise _Damaged(f"invalid AC symbol 0x{symbol:02x}")
        k += (symbol >> 4) + 1  # a run of zeros, then one coefficient (0xF0: 16 zeros)
    if k > 64:
        raise _Damaged("coefficients past the end of a block")
    return pos


def _peek16(buf: bytes, pos: int) -> int:
    byte = pos >> 3
    return (int.from_bytes(buf[byte : byte + 3], "big") >> (8 - (pos & 7))) & 0xFFFF
