"""Conversion between ROS image messages and OpenCV BGR arrays, with checked input.

The node receives whatever a camera driver or bag sends, so every message is checked
before its bytes are touched: an unknown encoding, a zero-size image, a row `step`
shorter than a row, data shorter than `step * height`, a frame larger than
`max_pixels`, compressed data that is no JPEG or PNG, or a JPEG/PNG that does not
decode raises `ImageConversionError` (a `ValueError`) whose message names the field
and the mismatch. The node counts and skips such frames.

Raw images (`sensor_msgs/Image`) are converted by `cv_bridge` when it is importable
(a full ROS install); otherwise, and always for the checks, by the converter here,
which understands the encodings cameras actually send:

| encoding                           | layout                                  |
| ---------------------------------- | --------------------------------------- |
| bgr8, rgb8 (8UC3 = bgr8)           | 3 x uint8 per pixel                     |
| bgra8, rgba8 (8UC4 = bgra8)        | 4 x uint8 per pixel                     |
| mono8 (8UC1)                       | 1 x uint8 per pixel                     |
| mono16 (16UC1)                     | 1 x uint16 per pixel, `is_bigendian`    |
|                                    | honoured; scaled to 8 bit by 1/256      |
| yuv422 / uyvy                      | UYVY, 2 bytes per pixel, even width     |
| yuv422_yuy2 / yuyv                 | YUYV, 2 bytes per pixel, even width     |

Compressed images (`sensor_msgs/CompressedImage`) must be JPEG or PNG, told by their
magic number (the `format` field is free text): other formats OpenCV could decode (BMP,
TIFF, WebP, ...) are refused unread. They are decoded with `cv2.imdecode` after their
header dimensions are checked against `max_pixels`; a JPEG must end with its
end-of-image marker, padding after it is ignored.

Only the message-handling functions touch ROS types (duck-typed on the message's
fields); `bgr_to_imgmsg` imports `sensor_msgs` when called.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

import cv2
import numpy as np

# 8K UHD (7680 x 4320): larger frames are rejected before their bytes are read.
DEFAULT_MAX_PIXELS = 7680 * 4320


class ImageConversionError(ValueError):
    """An image message that cannot be turned into a BGR array (the message says why).

    `kind` names the class of problem for counters: unknown_encoding, zero_size,
    too_large, step_mismatch, truncated, odd_width, corrupt, unsupported_format (compressed
    data that is no JPEG or PNG), unsupported_output.
    """

    def __init__(self, message: str, kind: str = 'invalid'):
        super().__init__(message)
        self.kind = kind


# encoding -> (channels, numpy dtype of one channel, how to get BGR)
_RAW_ENCODINGS = {
    'bgr8': (3, np.uint8, None),
    '8UC3': (3, np.uint8, None),
    'rgb8': (3, np.uint8, cv2.COLOR_RGB2BGR),
    'bgra8': (4, np.uint8, cv2.COLOR_BGRA2BGR),
    '8UC4': (4, np.uint8, cv2.COLOR_BGRA2BGR),
    'rgba8': (4, np.uint8, cv2.COLOR_RGBA2BGR),
    'mono8': (1, np.uint8, cv2.COLOR_GRAY2BGR),
    '8UC1': (1, np.uint8, cv2.COLOR_GRAY2BGR),
    'mono16': (1, np.uint16, cv2.COLOR_GRAY2BGR),
    '16UC1': (1, np.uint16, cv2.COLOR_GRAY2BGR),
    'yuv422': (2, np.uint8, cv2.COLOR_YUV2BGR_UYVY),
    'uyvy': (2, np.uint8, cv2.COLOR_YUV2BGR_UYVY),
    'yuv422_yuy2': (2, np.uint8, cv2.COLOR_YUV2BGR_YUY2),
    'yuyv': (2, np.uint8, cv2.COLOR_YUV2BGR_YUY2),
}

SUPPORTED_ENCODINGS: Tuple[str, ...] = tuple(_RAW_ENCODINGS)


def _cv_bridge():
    """Return a CvBridge instance when cv_bridge is installed, else None."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


_BRIDGE = None
_BRIDGE_CHECKED = False


def _bridge():
    global _BRIDGE, _BRIDGE_CHECKED
    if not _BRIDGE_CHECKED:
        _BRIDGE = _cv_bridge()
        _BRIDGE_CHECKED = True
    return _BRIDGE


def check_pixels(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 what: str = 'image') -> None:
    """Raise ImageConversionError for a zero-size frame or one above `max_pixels`."""
    if width <= 0 or height <= 0:
        raise ImageConversionError(
            f'zero-size {what}: width={width}, height={height}; both must be > 0',
            kind='zero_size')
    if max_pixels and width * height > max_pixels:
        raise ImageConversionError(
            f'{what} of {width}x{height} = {width * height} pixels exceeds the limit of '
            f'{max_pixels} pixels; refusing to convert it', kind='too_large')


def raw_to_bgr(data, width: int, height: int, encoding: str, step: int,
               is_bigendian: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert raw image bytes laid out as in sensor_msgs/Image to a contiguous BGR uint8 array.

    data: bytes-like (bytes, array.array('B'), memoryview, np.ndarray of uint8).
    Returns an array of shape (height, width, 3), dtype uint8, that owns its memory.
    """
    if encoding not in _RAW_ENCODINGS:
        raise ImageConversionError(
            f'unknown image encoding {encoding!r}; supported encodings are '
            f'{", ".join(SUPPORTED_ENCODINGS)}', kind='unknown_encoding')
    check_pixels(width, height, max_pixels)
    channels, dtype, conversion = _RAW_ENCODINGS[encoding]
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if channels == 2 and width % 2:
        raise ImageConversionError(
            f'{encoding} packs two pixels into 4 bytes, so width must be even, got {width}',
            kind='odd_width')
    if step < row_bytes:
        raise ImageConversionError(
            f'step mismatch: step={step} bytes is shorter than one {encoding} row of '
            f'width {width} ({row_bytes} bytes)', kind='step_mismatch')
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size < step * height:
        raise ImageConversionError(
            f'truncated image data: {buffer.size} bytes, but height={height} x step={step} '
            f'needs {step * height} bytes', kind='truncated')
    if itemsize > 1 and step % itemsize:
        # Rows start at odd byte offsets: copy each row out before viewing as uint16.
        rows = [buffer[r * step:r * step + row_bytes] for r in range(height)]
        buffer = np.concatenate(rows)
        step = row_bytes
    byte_order = '>' if is_bigendian else '<'
    element = np.dtype(dtype).newbyteorder(byte_order) if itemsize > 1 else np.dtype(dtype)
    image = np.ndarray(shape=(height, width, channels), dtype=element,
                       buffer=buffer[:step * height],
                       strides=(step, channels * itemsize, itemsize))
    if itemsize > 1:
        # 16 bit -> 8 bit: keep the high byte (what cv_bridge's 255/65535 scaling gives).
        image = (image.astype(np.uint16) >> 8).astype(np.uint8)
    image = np.ascontiguousarray(image)
    if conversion is None:
        return image.copy() if not image.flags.owndata else image
    if channels == 1:
        image = image[:, :, 0]
    return cv2.cvtColor(image, conversion)


def imgmsg_to_bgr(msg, max_pixels: int = DEFAULT_MAX_PIXELS,
                  use_cv_bridge: Optional[bool] = None) -> np.ndarray:
    """Convert a sensor_msgs/Image to a BGR uint8 array, checking it first.

    use_cv_bridge: None = use cv_bridge when importable; False = always the converter here.
    """
    encoding = str(msg.encoding)
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if encoding not in _RAW_ENCODINGS:
        raise ImageConversionError(
            f'unknown image encoding {encoding!r}; supported encodings are '
            f'{", ".join(SUPPORTED_ENCODINGS)}', kind='unknown_encoding')
    check_pixels(width, height, max_pixels)
    bridge = _bridge() if use_cv_bridge is not False else None
    if bridge is not None and encoding not in ('uyvy', 'yuyv', '8UC3', '8UC4', '8UC1', '16UC1'):
        # Run the checks of the converter here on the header and size only, then let
        # cv_bridge do the pixel work as a ROS user expects.
        _check_raw_layout(msg.data, width, height, encoding, step)
        try:
            return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding='bgr8'))
        except Exception as error:  # cv_bridge raises its own CvBridgeError types
            raise ImageConversionError(f'cv_bridge could not convert the image: {error}',
                                       kind='corrupt') from error
    return raw_to_bgr(msg.data, width, height, encoding, step, bool(msg.is_bigendian),
                      max_pixels)


def _check_raw_layout(data, width, height, encoding, step):
    channels, dtype, _ = _RAW_ENCODINGS[encoding]
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f'step mismatch: step={step} bytes is shorter than one {encoding} row of '
            f'width {width} ({row_bytes} bytes)', kind='step_mismatch')
    size = len(memoryview(data).cast('B'))
    if size < step * height:
        raise ImageConversionError(
            f'truncated image data: {size} bytes, but height={height} x step={step} '
            f'needs {step * height} bytes', kind='truncated')


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

# A JPEG header (SOI up to the start of scan) is a few dozen segments; a walk that
# takes more steps than this is garbage (e.g. megabytes of 0xFF fill bytes) and is
# given up at once instead of costing seconds of worker time.
_JPEG_MAX_HEADER_STEPS = 1024


def compressed_format(data: bytes) -> str:
    """Name the image format of `data` from its magic number: 'JPEG', 'PNG', 'BMP', ...

    Returns 'unknown' when no signature of a format OpenCV reads matches.
    """
    if data[:2] == b'\xff\xd8':
        return 'JPEG'
    if data[:8] == b'\x89PNG\r\n\x1a\n':
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


def _walk_jpeg(data: bytes) -> Tuple[str, Optional[Tuple[int, int]], Optional[int]]:
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


def compressed_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    """Return (width, height) read from a PNG or JPEG header, or None when not found."""
    if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) >= 24 and data[12:16] == b'IHDR':
        width, height = struct.unpack('>II', data[16:24])
        return width, height
    if data[:2] == b'\xff\xd8':
        return _walk_jpeg(data)[1]
    return None


def compressed_to_bgr(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) to a BGR uint8 array.

    The header is read first: data that is no JPEG or PNG (kind unsupported_format), a
    header that cannot be read (corrupt), a JPEG cut off before its end-of-image marker
    (truncated) or a frame above `max_pixels` (too_large) is refused before decoding.
    Bytes after a JPEG's end-of-image marker (the padding of UVC/MJPEG drivers, vendor
    trailers) are accepted, as libjpeg ignores them.
    """
    data = bytes(msg.data)
    fmt = str(getattr(msg, 'format', '') or '')
    if not data:
        raise ImageConversionError(f'zero-size compressed image: no data (format {fmt!r})',
                                   kind='zero_size')
    found = compressed_format(data)
    if found == 'JPEG':
        status, dims, sos = _walk_jpeg(data)
        if status == 'end':
            raise ImageConversionError(
                f'truncated JPEG ({len(data)} bytes, format {fmt!r}): the data ends inside '
                'its header', kind='truncated')
        if status == 'bad':
            raise ImageConversionError(
                f'corrupt compressed image: {len(data)} bytes (format {fmt!r}) start like a '
                'JPEG but hold no valid marker sequence up to a frame header and a scan',
                kind='corrupt')
        check_pixels(dims[0], dims[1], max_pixels, what='compressed image')
        # The end-of-image marker cannot occur inside the entropy-coded data (0xFF is
        # stuffed there), so one after the first scan means the image is complete; what
        # follows it is padding. libjpeg may hand back a half-grey frame for a cut-off
        # JPEG; refuse it.
        if data.rfind(b'\xff\xd9') < sos:
            raise ImageConversionError(
                f'truncated JPEG ({len(data)} bytes, format {fmt!r}): no end-of-image marker',
                kind='truncated')
    elif found == 'PNG':
        dims = compressed_dimensions(data)
        if dims is None:
            raise ImageConversionError(
                f'corrupt compressed image: {len(data)} bytes (format {fmt!r}) start like a '
                'PNG but have no IHDR header', kind='corrupt')
        check_pixels(dims[0], dims[1], max_pixels, what='compressed image')
    else:
        what = (f'data looks like {found}' if found != 'unknown'
                else f'no known image signature (starts with {data[:4].hex()})')
        raise ImageConversionError(
            f'unsupported compressed image format: {what} ({len(data)} bytes, format '
            f'{fmt!r}); only JPEG and PNG are accepted', kind='unsupported_format')
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageConversionError(
            f'corrupt compressed image: {len(data)} bytes (format {fmt!r}, starts with '
            f'{data[:4].hex()}) could not be decoded as {found}', kind='corrupt')
    check_pixels(image.shape[1], image.shape[0], max_pixels, what='compressed image')
    return image


def bgr_to_imgmsg(image: np.ndarray, header=None, encoding: str = 'bgr8'):
    """Build a sensor_msgs/Image from a BGR uint8 array (encoding 'bgr8' or 'rgb8')."""
    import array

    from sensor_msgs.msg import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageConversionError(
            f'bgr_to_imgmsg needs an (H, W, 3) uint8 array, got shape {image.shape} '
            f'dtype {image.dtype}', kind='unsupported_output')
    if encoding == 'rgb8':
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif encoding != 'bgr8':
        raise ImageConversionError(
            f'bgr_to_imgmsg writes bgr8 or rgb8, not {encoding!r}', kind='unsupported_output')
    image = np.ascontiguousarray(image)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(image.shape[1] * 3)
    # array.array from bytes is a memcpy; assigning bytes would be checked byte by byte.
    msg.data = array.array('B', image.tobytes())
    return msg


def bgr_to_compressed(image: np.ndarray, header=None, fmt: str = 'jpeg', quality: int = 90):
    """Build a sensor_msgs/CompressedImage (JPEG or PNG) from a BGR uint8 array."""
    import array

    from sensor_msgs.msg import CompressedImage

    if fmt not in ('jpeg', 'png'):
        raise ImageConversionError(f'compressed format must be jpeg or png, not {fmt!r}',
                                   kind='unsupported_output')
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == 'jpeg' else []
    ok, encoded = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', image, params)
    if not ok:
        raise ImageConversionError(f'OpenCV could not encode a {image.shape} image as {fmt}',
                                   kind='unsupported_output')
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = fmt
    msg.data = array.array('B', encoded.tobytes())
    return msg
