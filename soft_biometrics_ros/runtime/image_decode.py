"""Strict JPEG and PNG decoding: a damaged or disproportionate picture is refused, never guessed.

Every reader of compressed pictures (the node's `image/compressed`, `soft_biometrics_eval`
on bags, `soft_biometrics_predict` and `soft_biometrics_record_sample` on files, the
training data loader) decodes through `decode_image`, so they all agree on what is
damaged. Plain Python + numpy, OpenCV and simplejpeg; no ROS.

Why not `cv2.imdecode` alone: libjpeg *recovers* from damaged entropy-coded data (a JPEG
whose scan ends early, then an end-of-image marker) by filling the rest with grey and
only printing "Corrupt JPEG data: premature end of data segment" on stderr; OpenCV
returns that picture as good. JPEGs are therefore decoded with simplejpeg
(libjpeg-turbo) with `strict=True`, which turns every libjpeg warning into an error.
PNGs are decoded by OpenCV's libpng, which already fails on a chunk CRC error, on data
cut short and on a zlib stream that ends before the picture (checked in the tests).

Cost bound (what one message or file can cost before it is refused), checked from the
header alone, before any pixel is decoded:

- the picture the header claims must have at most `max_pixels` pixels (the node's
  limit: 8K UHD, 7680 x 4320 = 33.2 Mpx);
- the data must be large enough to hold such a picture: a Huffman-coded JPEG spends at
  least one bit on every 8 x 8 block of its full-resolution component (the DC
  coefficient), so it has at least width x height / 512 bytes
  (`JPEG_MIN_PIXELS_PER_BYTE`); real frames have far more (a flat grey 1080p frame at
  quality 5, optimised Huffman tables: 1 byte per 166 pixels). deflate cannot compress
  more than 1032 : 1, so a PNG has at least its raw pixel bytes / 1032
  (`PNG_MAX_DEFLATE_RATIO`). A few hundred bytes that claim 8K are refused at once;
  an arithmetic-coded JPEG of a nearly flat scene can fall under the JPEG floor and is
  refused too (cameras do not send them);
- a JPEG may have at most `MAX_JPEG_SCANS` scans: every scan of a progressive JPEG
  passes over the whole picture, so many tiny scans would multiply the decode time
  (libjpeg-turbo's own advice for untrusted input; encoders write 10 or fewer).

So the worst one message can cost is a full decode of a legitimate 8K picture (README,
"Bad input").
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np

# 8K UHD (7680 x 4320): larger pictures are refused from their header.
DEFAULT_MAX_PIXELS = 7680 * 4320
# One bit per 8x8 block of the full-resolution component: 64 px per bit.
JPEG_MIN_PIXELS_PER_BYTE = 512
# deflate's best case: 258-byte matches coded in 2 bits (about 1032 : 1).
PNG_MAX_DEFLATE_RATIO = 1032
# libjpeg-turbo suggests limiting scans of untrusted progressive JPEGs; encoders write
# 1 (baseline) to about 10 (libjpeg's progressive script).
MAX_JPEG_SCANS = 100
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

# A JPEG header (SOI up to the start of scan) is a few dozen segments; a walk that
# takes more steps than this is garbage (e.g. megabytes of 0xFF fill bytes) and is
# given up at once instead of costing seconds.
_JPEG_MAX_HEADER_STEPS = 1024


class ImageDecodeError(ValueError):
    """Compressed picture data that is refused (the message says why).

    `kind` names the class of problem for counters: zero_size, too_large, truncated,
    corrupt, unsupported_format.
    """

    def __init__(self, message: str, kind: str = 'corrupt'):
        super().__init__(message)
        self.kind = kind


def check_pixels(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 what: str = 'image') -> None:
    """Raise ImageDecodeError for a zero-size picture or one above `max_pixels`."""
    if width <= 0 or height <= 0:
        raise ImageDecodeError(
            f'zero-size {what}: width={width}, height={height}; both must be > 0',
            kind='zero_size')
    if max_pixels and width * height > max_pixels:
        raise ImageDecodeError(
            f'{what} of {width}x{height} = {width * height} pixels exceeds the limit of '
            f'{max_pixels} pixels; refusing to convert it', kind='too_large')


# Magic numbers of the image formats cv2.imdecode also reads, to name what was sent.
_OTHER_SIGNATURES = (
    (b'BM', 'BMP'),
    (b'II*\x00', 'TIFF'),
    (b'MM\x00*', 'TIFF'),
    (b'GIF87a', 'GIF'),
    (b'GIF89a', 'GIF'),
    (b'\x00\x00\x00\x0cjP  \r\n\x87\n', 'JPEG 2000'),
    (b'\xff\x4f\xff\x51', 'JPEG 2000'),
    (b'\x76\x2f\x31\x01', 'OpenEXR'),
    (b'#?RADIANCE', 'Radiance HDR'),
    (b'#?RGBE', 'Radiance HDR'),
    (b'\x59\xa6\x6a\x95', 'Sun raster'),
    (b'\xff\x0a', 'JPEG XL'),
    (b'\x00\x00\x00\x0cJXL \r\n\x87\n', 'JPEG XL'),
)


def image_format(data: bytes) -> str:
    """Name the image format of `data` from its magic number: 'JPEG', 'PNG', 'BMP', ...

    Returns 'unknown' when no signature of a format OpenCV reads matches.
    """
    if data[:2] == b'\xff\xd8':
        return 'JPEG'
    if data[:8] == PNG_SIGNATURE:
        return 'PNG'
    if data[:4] == b'RIFF' and data[8:12] == b'WEBP':
        return 'WebP'
    if data[4:8] == b'ftyp' and data[8:12] in (b'avif', b'avis', b'heic', b'heix', b'mif1'):
        return 'AVIF/HEIF'
    if len(data) >= 3 and data[:1] == b'P' and data[1:2] in b'1234567' \
            and data[2:3] in b' \t\r\n':
        return 'PNM'
    if data[:2] in (b'PF', b'Pf') and data[2:3] in b' \t\r\n':
        return 'PFM'
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return name
    return 'unknown'


def walk_jpeg(data: bytes) -> Tuple[str, Optional[Tuple[int, int]], Optional[int]]:
    """Walk the marker segments of a JPEG from SOI to the first start-of-scan (SOS).

    Returns (status, (width, height) or None, offset of the SOS marker or None), where
    status is 'ok' (a frame header and then an SOS were found), 'end' (the data ends
    inside the header: truncated) or 'bad' (not a valid marker sequence).
    """
    dims = None
    pos = 2
    for _ in range(_JPEG_MAX_HEADER_STEPS):
        if pos + 2 > len(data):
            return 'end', dims, None
        if data[pos] != 0xFF:
            return 'bad', dims, None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0x00, 0xD9):  # stuffed zero or end of image before any scan
            return 'bad', dims, None
        if marker == 0xDA:
            return ('ok' if dims is not None else 'bad'), dims, pos
        if pos + 4 > len(data):
            return 'end', dims, None
        length = struct.unpack('>H', data[pos + 2:pos + 4])[0]
        if length < 2:
            return 'bad', dims, None
        # SOF0..SOF15 except DHT C4, JPG C8, DAC CC carry height and width.
        if dims is None and 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                return 'end', dims, None
            height, width = struct.unpack('>HH', data[pos + 5:pos + 9])
            dims = (width, height)
        pos += 2 + length
    return 'bad', dims, None


def _png_header(data: bytes) -> Optional[Tuple[int, int, int]]:
    """Return (width, height, raw bytes of the pixels) from a PNG's IHDR, or None."""
    if data[:8] != PNG_SIGNATURE or len(data) < 33 or data[12:16] != b'IHDR':
        return None
    width, height, depth, colour = struct.unpack('>IIBB', data[16:26])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None or depth not in (1, 2, 4, 8, 16):
        return None
    row = (width * channels * depth + 7) // 8
    return width, height, row * height


def image_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    """Return (width, height) read from a PNG or JPEG header, or None when not found."""
    png = _png_header(data)
    if png is not None:
        return png[0], png[1]
    if data[:2] == b'\xff\xd8':
        return walk_jpeg(data)[1]
    return None


def _decode_jpeg(data: bytes) -> np.ndarray:
    """Decode JPEG bytes to BGR with libjpeg-turbo, every libjpeg warning an error."""
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace='BGR', strict=True)


def _decode_png(data: bytes) -> Optional[np.ndarray]:
    """Decode PNG bytes to BGR with OpenCV's libpng (None when libpng fails)."""
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)


def check_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
               what: str = 'compressed image') -> Tuple[int, int]:
    """Check a JPEG's header, size and completeness; return its (width, height).

    Raises ImageDecodeError (truncated, corrupt, zero_size, too_large) before any pixel
    is decoded; see the module docstring for the bounds.
    """
    status, dims, sos = walk_jpeg(data)
    if status == 'end':
        raise ImageDecodeError(
            f'truncated JPEG ({len(data)} bytes): the data ends inside its header',
            kind='truncated')
    if status == 'bad':
        raise ImageDecodeError(
            f'corrupt {what}: {len(data)} bytes start like a JPEG but hold no valid marker '
            'sequence up to a frame header and a scan', kind='corrupt')
    width, height = dims
    check_pixels(width, height, max_pixels, what=what)
    # The end-of-image marker cannot occur inside the entropy-coded data (0xFF is
    # stuffed there), so one after the first scan means the data is complete; what
    # follows it is padding (UVC/MJPEG drivers, vendor trailers), ignored as libjpeg does.
    end = data.rfind(b'\xff\xd9')
    if end < sos:
        raise ImageDecodeError(f'truncated JPEG ({len(data)} bytes): no end-of-image marker',
                               kind='truncated')
    needed = width * height // JPEG_MIN_PIXELS_PER_BYTE
    if end + 2 < needed:
        raise ImageDecodeError(
            f'corrupt {what}: {end + 2} bytes of JPEG cannot hold the {width}x{height} '
            f'picture its header claims (at least {needed} bytes: one bit per 8x8 block); '
            'refused before decoding', kind='corrupt')
    scans = data.count(b'\xff\xda', sos, end)
    if scans > MAX_JPEG_SCANS:
        raise ImageDecodeError(
            f'corrupt {what}: a JPEG with {scans} scans (at most {MAX_JPEG_SCANS} are '
            'decoded; encoders write 10 or fewer)', kind='corrupt')
    return width, height


def check_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
              what: str = 'compressed image') -> Tuple[int, int]:
    """Check a PNG's header and size against the picture it claims; return (width, height)."""
    header = _png_header(data)
    if header is None:
        raise ImageDecodeError(
            f'corrupt {what}: {len(data)} bytes start like a PNG but have no valid IHDR '
            'header', kind='corrupt')
    width, height, raw = header
    check_pixels(width, height, max_pixels, what=what)
    needed = raw // PNG_MAX_DEFLATE_RATIO
    if len(data) < needed:
        raise ImageDecodeError(
            f'corrupt {what}: {len(data)} bytes of PNG cannot hold the {width}x{height} '
            f'picture its header claims (at least {needed} bytes: deflate compresses at most '
            f'{PNG_MAX_DEFLATE_RATIO}:1); refused before decoding', kind='corrupt')
    return width, height


def decode_image(data, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = 'compressed image',
                 other_formats: bool = False) -> np.ndarray:
    """Decode JPEG or PNG bytes to a BGR uint8 array (H, W, 3), strictly.

    Raises ImageDecodeError whose `kind` says why: zero_size (no data), unsupported_format
    (no JPEG/PNG signature; with `other_formats` such data, e.g. a BMP file, is decoded by
    OpenCV instead, its size still checked against `max_pixels`), truncated, corrupt
    (damaged data, or data too small for the picture it claims), too_large.
    """
    data = bytes(data)
    if not data:
        raise ImageDecodeError(f'zero-size {what}: no data', kind='zero_size')
    found = image_format(data)
    if found == 'JPEG':
        width, height = check_jpeg(data, max_pixels, what)
        try:
            image = _decode_jpeg(data)
        except ValueError as error:
            raise ImageDecodeError(
                f'corrupt {what}: {len(data)} bytes of {width}x{height} JPEG do not decode '
                f'cleanly: {error}', kind='corrupt') from None
    elif found == 'PNG':
        width, height = check_png(data, max_pixels, what)
        image = _decode_png(data)
    elif other_formats:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    else:
        shown = (f'data looks like {found}' if found != 'unknown'
                 else f'no known image signature (starts with {data[:4].hex()})')
        raise ImageDecodeError(
            f'unsupported {what} format: {shown} ({len(data)} bytes); only JPEG and PNG are '
            'accepted', kind='unsupported_format')
    if image is None or image.size == 0:
        raise ImageDecodeError(
            f'corrupt {what}: {len(data)} bytes (starts with {data[:4].hex()}) could not be '
            f'decoded as {found}', kind='corrupt')
    check_pixels(image.shape[1], image.shape[0], max_pixels, what=what)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image)


def read_image_file(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS
                    ) -> np.ndarray:
    """Read and decode the picture file at `path` (JPEG/PNG strictly, others by OpenCV).

    Raises ImageDecodeError naming the file (an OSError when it cannot be read).
    """
    data = Path(path).read_bytes()
    return decode_image(data, max_pixels, what=f'image file {path}', other_formats=True)
