"""Per-member gzip: `key.txt.gz`, `key.json.gz`, `key.seg.png.gz` read as `txt`, `json`, `seg.png`.

webdataset decompresses a member whose extension ends in `.gz` and drops
the suffix; so do we, when a sample is decoded. The decompressed size is
capped (a small gzip can expand to gigabytes), and a member that is not
valid gzip or expands past the cap makes its sample undecodable: it is
skipped with a reason, like a corrupt image.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

# Decompressed bytes one member may take; far above any caption, image or map a CLIP sample has.
MAX_GUNZIP_BYTES = 64 << 20

BAD_GZIP = "undecodable gzip member"
GZIP_TOO_LARGE = "gzip member too large"


class MemberError(Exception):
    """A member that cannot be read; `reason` is the sample's skip reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def gz_stripped(ext: str) -> str:
    """The extension a member is read as: `txt.gz` -> `txt`; others unchanged."""
    return ext[: -len(".gz")] if ext.endswith(".gz") else ext


def gunzip(data: bytes, cap: int = MAX_GUNZIP_BYTES) -> bytes:
    """The decompressed bytes of a gzip stream (concatenated members too), at most `cap` of them."""
    out = bytearray()
    rest = data
    while True:
        d = zlib.decompressobj(wbits=31)
        try:
            out += d.decompress(rest, cap + 1 - len(out))
        except zlib.error:
            raise MemberError(BAD_GZIP) from None
        if len(out) > cap:
            raise MemberError(GZIP_TOO_LARGE)
        if not d.eof:
            # Either the stream is cut short, or output was held back at the cap: one more byte tells.
            if d.unconsumed_tail or d.decompress(b"", 1):
                raise MemberError(GZIP_TOO_LARGE)
            raise MemberError(BAD_GZIP)
        rest = d.unused_data
        if not rest:
            return bytes(out)


def decoded_members(members: Mapping[str, bytes], cap: int = MAX_GUNZIP_BYTES) -> dict[str, bytes]:
    """A sample's members with every `.gz` one decompressed under its stripped extension.

    MemberError when one is not valid gzip or expands past `cap` bytes.
    """
    if not any(ext.endswith(".gz") for ext in members):
        return dict(members)
    return {gz_stripped(ext): (gunzip(data, cap) if ext.endswith(".gz") else data) for ext, data in members.items()}
