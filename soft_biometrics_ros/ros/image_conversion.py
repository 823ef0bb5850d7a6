"""Conversion between ROS image messages and OpenCV BGR arrays, with checked input.

The node receives whatever a camera driver or bag sends, so every message is checked
before its bytes are touched: an unknown encoding, a zero-size image, a row `step`
shorter than a row, data shorter than `step * height`, a frame larger than
`max_pixels` (or a raw one larger than `MAX_RAW_FRAME_BYTES`, what the shipped Fast DDS
profile carries), compressed data that is no JPEG or PNG, or a JPEG/PNG that does not
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
TIFF, WebP, ...) are refused unread. They are decoded strictly by
`soft_biometrics_ros.runtime.image_decode` (the core's decoder, which every tool uses
too): the header's dimensions are checked against `max_pixels` and against the data's
size before decoding, a JPEG must end with its end-of-image marker (padding after it
is ignored), and a JPEG whose entropy-coded data is damaged is refused as corrupt.

Only the message-handling functions touch ROS types (duck-typed on the message's
fields); `bgr_to_imgmsg` imports `sensor_msgs` when called.
"""

from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np

from soft_biometrics_ros.runtime import image_decode
from soft_biometrics_ros.runtime.image_decode import (DEFAULT_MAX_PIXELS, ImageDecodeError,
                                                      decode_image, image_dimensions,
                                                      image_format, walk_jpeg)


class ImageConversionError(ImageDecodeError):
    """An image message that cannot be turned into a BGR array (the message says why).

    `kind` names the class of problem for counters: unknown_encoding, zero_size,
    too_large, step_mismatch, truncated, odd_width, corrupt, unsupported_format (compressed
    data that is no JPEG or PNG), unsupported_output.
    """

    def __init__(self, message: str, kind: str = 'invalid'):
        super().__init__(message, kind)


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

# The largest raw frame (step x height bytes) accepted: 32 MiB holds 3840x2160 (4K UHD)
# in every encoding above (bgra8: 31.6 MiB). fastdds/large_frames.xml's shared-memory
# segment (64 MiB) holds two such frames; test/ros/test_fastdds.py checks they agree.
MAX_RAW_FRAME_BYTES = 32 * 2 ** 20


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
    try:
        image_decode.check_pixels(width, height, max_pixels, what)
    except ImageDecodeError as error:
        raise ImageConversionError(str(error), kind=error.kind) from None


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
                  use_cv_bridge: Optional[bool] = None,
                  max_bytes: int = MAX_RAW_FRAME_BYTES) -> np.ndarray:
    """Convert a sensor_msgs/Image to a BGR uint8 array, checking it first.

    use_cv_bridge: None = use cv_bridge when importable; False = always the converter here.
    max_bytes: raw frames whose data (step x height) is larger are refused (too_large):
    the shipped Fast DDS profile carries frames up to this size (see MAX_RAW_FRAME_BYTES).
    """
    encoding = str(msg.encoding)
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if encoding not in _RAW_ENCODINGS:
        raise ImageConversionError(
            f'unknown image encoding {encoding!r}; supported encodings are '
            f'{", ".join(SUPPORTED_ENCODINGS)}', kind='unknown_encoding')
    check_pixels(width, height, max_pixels)
    if max_bytes and step * height > max_bytes:
        raise ImageConversionError(
            f'raw {encoding} frame of {width}x{height} ({step * height / 2 ** 20:.1f} MiB) is '
            f'larger than the {max_bytes / 2 ** 20:.0f} MiB a raw frame may have (what the '
            'shipped Fast DDS profile carries); send it compressed (compressed: true) or '
            'smaller', kind='too_large')
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


# The format checks and the strict decoder live in the core (runtime.image_decode); the
# names below are kept for the callers of this module.
compressed_format = image_format
compressed_dimensions = image_dimensions
_walk_jpeg = walk_jpeg


def compressed_to_bgr(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) to a BGR uint8 array, strictly.

    `runtime.image_decode.decode_image` does the work: data that is no JPEG or PNG
    (kind unsupported_format), a header that cannot be read or data too small for the
    picture it claims (corrupt), a JPEG cut off before its end-of-image marker
    (truncated) or a frame above `max_pixels` (too_large) is refused before decoding;
    a JPEG whose entropy-coded data is damaged (libjpeg warns) is refused as corrupt.
    Bytes after a JPEG's end-of-image marker (the padding of UVC/MJPEG drivers, vendor
    trailers) are accepted, as libjpeg ignores them.
    """
    fmt = str(getattr(msg, 'format', '') or '')
    try:
        return decode_image(msg.data, max_pixels)
    except ImageDecodeError as error:
        raise ImageConversionError(f'{error} (format field {fmt!r})', kind=error.kind) \
            from None


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
