"""CZI files for tests, read back through pylibCZIrw (libCZI) as the pipeline reads them.

`write_czi` is a minimal ZISRAW writer: file header segment, one uncompressed subblock per
(frame, tile), the subblock directory, and a metadata segment whose XML carries the pixel size
(Scaling/Distance, metres). Every segment is a 32-byte header (16-byte id, allocated size, used
size) then its data; a subblock's pixels follow its directory entry padded to 256 bytes. Being
hand-written it can also write what ZEN writes and libCZI's writer cannot: an H axis (Airyscan raw
detector elements) or several scenes.
`write_czi_zstd` writes through pylibCZIrw's writer with zstd-compressed subblocks, as current ZEN does.
"""
import struct
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

PIXEL_TYPES = {np.dtype(np.uint8): 0, np.dtype(np.uint16): 1, np.dtype(np.float32): 2}


def _segment(sid: str, data: bytes, min_size: int = 0) -> bytes:
    """Segment header plus data, padded to a multiple of 32 bytes (at least `min_size`)."""
    size = max(min_size, -(-len(data) // 32) * 32)
    return struct.pack("<16sqq", sid.encode(), size, len(data)) + data.ljust(size, b"\0")


def _entry(dtype: np.dtype, pos: int, dims) -> bytes:
    """DirectoryEntryDV; `dims` lists (axis, start, size) fastest-varying first (X, Y, ...)."""
    head = struct.pack("<2siqiiBB4si", b"DV", PIXEL_TYPES[np.dtype(dtype)], pos, 0, 0, 0, 0, b"", len(dims))
    return head + b"".join(struct.pack("<4siifi", a.encode(), s, n, float(s), n) for a, s, n in dims)


def _metadata_xml(pixel_size_um: Optional[float], shape: dict) -> bytes:
    sizes = "".join(f"<Size{a}>{n}</Size{a}>" for a, n in shape.items())
    scaling = ""
    if pixel_size_um:
        m = pixel_size_um * 1e-6
        scaling = ("<Scaling><Items>" + "".join(f'<Distance Id="{a}"><Value>{m!r}</Value></Distance>' for a in "XY")
                   + "</Items></Scaling>")
    return (f"<ImageDocument><Metadata><Information><Image>{sizes}</Image></Information>{scaling}"
            f"</Metadata></ImageDocument>").encode()


def write_czi(path: Path, data: np.ndarray, axes: str = "YX", pixel_size_um: Optional[float] = None,
              tile: Optional[int] = None) -> Path:
    """Write `data` (axes from C, Z, T, H, S, then YX) as a CZI; `tile` splits each frame into
    tile x tile subblocks (a mosaic), as microscopes write large scans."""
    assert axes.endswith("YX") and set(axes[:-2]) <= set("CZTHS"), axes
    data = np.asarray(data)
    lead = axes[:-2]
    ny, nx = data.shape[-2:]
    step = tile or max(ny, nx)
    header_size = 32 + 512
    blocks, entries, pos = [], [], header_size
    for idx in np.ndindex(*data.shape[:-2]):
        for y0 in range(0, ny, step):
            for x0 in range(0, nx, step):
                px = np.ascontiguousarray(data[idx][y0:y0 + step, x0:x0 + step])
                dims = [("X", x0, px.shape[1]), ("Y", y0, px.shape[0])]
                dims += [(a, int(i), 1) for a, i in zip(reversed(lead), reversed(idx))]
                entry = _entry(data.dtype, pos, dims)
                body = struct.pack("<iiq", 0, 0, px.nbytes) + entry
                seg = _segment("ZISRAWSUBBLOCK", body.ljust(256, b"\0") + px.tobytes())
                blocks.append(seg)
                entries.append(entry)
                pos += len(seg)
    directory_pos = pos
    directory = _segment("ZISRAWDIRECTORY", struct.pack("<i", len(entries)) + b"\0" * 124 + b"".join(entries))
    metadata_pos = directory_pos + len(directory)
    xml = _metadata_xml(pixel_size_um, dict(zip(axes, data.shape)))
    metadata = _segment("ZISRAWMETADATA", struct.pack("<ii", len(xml), 0) + b"\0" * 248 + xml)
    guid = uuid.UUID(int=0x5053_5352).bytes  # fixed, so files are reproducible
    head = struct.pack("<iiii16s16siqqiq", 1, 0, 0, 0, guid, guid, 0, directory_pos, metadata_pos, 0, 0)
    Path(path).write_bytes(_segment("ZISRAWFILE", head, 512) + b"".join(blocks) + directory + metadata)
    return Path(path)


def write_czi_zstd(path: Path, data: np.ndarray, axes: str = "YX", pixel_size_um: Optional[float] = None,
                   tile: Optional[int] = None) -> Path:
    """As `write_czi` (axes from C, Z, T), with zstd-compressed subblocks written by libCZI."""
    from pylibCZIrw import czi as pyczi
    assert axes.endswith("YX") and set(axes[:-2]) <= set("CZT"), axes
    data = np.asarray(data)
    ny, nx = data.shape[-2:]
    step = tile or max(ny, nx)
    Path(path).unlink(missing_ok=True)
    with pyczi.create_czi(str(path), compression_options="zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack") as czi:
        for idx in np.ndindex(*data.shape[:-2]):
            plane = {a: int(i) for a, i in zip(axes[:-2], idx)}
            for y0 in range(0, ny, step):
                for x0 in range(0, nx, step):
                    czi.write(np.ascontiguousarray(data[idx][y0:y0 + step, x0:x0 + step]), location=(x0, y0),
                              plane=plane)
        m = (pixel_size_um or 0.0) * 1e-6  # libCZI writes the value as given; CZI stores metres
        czi.write_metadata(scale_x=m, scale_y=m)
    return Path(path)
