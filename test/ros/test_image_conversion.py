"""Image conversion: every raw encoding, padded rows, big-endian mono16, JPEG/PNG, bad input."""

import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from soft_biometrics_ros.runtime import image_decode
from soft_biometrics_ros.ros.image_conversion import (
    ImageConversionError, SUPPORTED_ENCODINGS, bgr_to_compressed, bgr_to_imgmsg,
    compressed_dimensions, compressed_to_bgr, imgmsg_to_bgr, raw_to_bgr)

RNG = np.random.default_rng(0)
BGR = RNG.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)


def make_msg(pixels: np.ndarray, encoding: str, padding: int = 0, bigendian: bool = False,
             ) -> Image:
    """Lay `pixels` (H, W, C) out as a sensor_msgs/Image with `padding` bytes per row."""
    height, width = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype('>u2' if bigendian else '<u2')
    rows = pixels.reshape(height, -1).view(np.uint8)
    padded = np.zeros((height, rows.shape[1] + padding), np.uint8)
    padded[:, :rows.shape[1]] = rows
    padded[:, rows.shape[1]:] = 0xAB  # garbage the converter must skip
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
                step=padded.shape[1])
    msg.data = array.array('B', padded.tobytes())
    return msg


def bt601(y, u, v):
    """Video-range BT.601 YUV -> BGR, written out independently of OpenCV."""
    y, u, v = (np.asarray(c, np.float64) for c in (y, u, v))
    r = 1.164 * (y - 16) + 1.596 * (v - 128)
    g = 1.164 * (y - 16) - 0.813 * (v - 128) - 0.391 * (u - 128)
    b = 1.164 * (y - 16) + 2.018 * (u - 128)
    return np.clip(np.round(np.stack([b, g, r], -1)), 0, 255)


@pytest.mark.parametrize('padding', [0, 5])
@pytest.mark.parametrize('encoding', ['bgr8', 'rgb8', 'bgra8', 'rgba8', '8UC3'])
def test_colour_encodings_give_the_same_bgr(encoding, padding):
    if encoding in ('rgb8',):
        pixels = BGR[:, :, ::-1]
    elif encoding == 'bgra8':
        pixels = np.dstack([BGR, np.full(BGR.shape[:2], 7, np.uint8)])
    elif encoding == 'rgba8':
        pixels = np.dstack([BGR[:, :, ::-1], np.full(BGR.shape[:2], 7, np.uint8)])
    else:
        pixels = BGR
    msg = make_msg(np.ascontiguousarray(pixels), encoding, padding)
    out = imgmsg_to_bgr(msg)
    assert out.shape == BGR.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, BGR)
    assert out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize('padding', [0, 3])
def test_mono8(padding):
    gray = BGR[:, :, 1].copy()
    out = imgmsg_to_bgr(make_msg(gray[:, :, None], 'mono8', padding))
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('padding', [0, 3])  # 3: rows start at odd byte offsets
def test_mono16_honours_endianness_and_padding(bigendian, padding):
    values = RNG.integers(0, 65536, size=(5, 7), dtype=np.uint16)
    values[0, 0], values[0, 1] = 0x12FF, 0xFF12  # byte-order swap would swap these
    msg = make_msg(values[:, :, None], 'mono16', padding, bigendian)
    out = imgmsg_to_bgr(msg)
    np.testing.assert_array_equal(out[:, :, 0], (values >> 8).astype(np.uint8))
    assert out[0, 0, 0] == 0x12 and out[0, 1, 0] == 0xFF


def test_mono16_little_vs_big_endian_differ():
    values = np.array([[0x0102, 0x0304]], np.uint16)
    little = make_msg(values[:, :, None], 'mono16', bigendian=False)
    little.is_bigendian = 1  # the same bytes read as big-endian are different values
    assert imgmsg_to_bgr(little)[0, 0, 0] == 0x02


@pytest.mark.parametrize('padding', [0, 4])
@pytest.mark.parametrize('encoding,order', [('yuv422', 'UYVY'), ('uyvy', 'UYVY'),
                                            ('yuv422_yuy2', 'YUYV'), ('yuyv', 'YUYV')])
def test_packed_yuv422(encoding, order, padding):
    height, width = 3, 6
    y = RNG.integers(16, 236, size=(height, width))
    u = RNG.integers(16, 241, size=(height, width // 2))
    v = RNG.integers(16, 241, size=(height, width // 2))
    packed = np.zeros((height, width // 2, 4), np.uint8)
    planes = {'U': u, 'V': v, 'Y0': y[:, 0::2], 'Y1': y[:, 1::2]}
    layout = ('U', 'Y0', 'V', 'Y1') if order == 'UYVY' else ('Y0', 'U', 'Y1', 'V')
    for byte, name in enumerate(layout):
        packed[..., byte] = planes[name]
    pixels = packed.reshape(height, width, 2)
    out = imgmsg_to_bgr(make_msg(pixels, encoding, padding))
    expected = bt601(y, np.repeat(u, 2, axis=1), np.repeat(v, 2, axis=1))
    assert np.abs(out.astype(int) - expected).max() <= 2


def test_every_supported_encoding_is_covered_above():
    assert set(SUPPORTED_ENCODINGS) == {
        'bgr8', '8UC3', 'rgb8', 'bgra8', '8UC4', 'rgba8', 'mono8', '8UC1', 'mono16', '16UC1',
        'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'}
    for encoding in ('8UC4', '8UC1', '16UC1'):
        channels = {'8UC4': 4, '8UC1': 1, '16UC1': 1}[encoding]
        dtype = np.uint16 if encoding == '16UC1' else np.uint8
        pixels = np.full((2, 4, channels), 200, dtype)
        out = imgmsg_to_bgr(make_msg(pixels, encoding))
        assert out.shape == (2, 4, 3)


def test_raw_to_bgr_accepts_bytes_and_memoryview():
    data = BGR.tobytes()
    for buffer in (data, memoryview(data), bytearray(data)):
        np.testing.assert_array_equal(raw_to_bgr(buffer, 8, 6, 'bgr8', 24), BGR)


# ---- bad input: each raises ImageConversionError naming the problem ----

def test_unknown_encoding():
    msg = make_msg(BGR, 'bayer_rggb8')
    with pytest.raises(ImageConversionError, match="unknown image encoding 'bayer_rggb8'"):
        imgmsg_to_bgr(msg)


def test_zero_size():
    msg = Image(height=0, width=8, encoding='bgr8', step=24)
    with pytest.raises(ImageConversionError, match='zero-size'):
        imgmsg_to_bgr(msg)


def test_truncated_data():
    msg = make_msg(BGR, 'bgr8')
    msg.data = msg.data[:len(msg.data) - 10]
    with pytest.raises(ImageConversionError, match='truncated image data: 134 bytes'):
        imgmsg_to_bgr(msg)


def test_step_shorter_than_a_row():
    msg = make_msg(BGR, 'bgr8')
    msg.step = 20
    with pytest.raises(ImageConversionError, match='step mismatch: step=20'):
        imgmsg_to_bgr(msg)


def test_odd_width_yuv():
    msg = Image(height=2, width=3, encoding='yuv422', step=6)
    msg.data = array.array('B', bytes(12))
    with pytest.raises(ImageConversionError, match='width must be even'):
        imgmsg_to_bgr(msg)


def test_frame_above_max_pixels_is_refused_before_reading_data():
    msg = Image(height=100000, width=100000, encoding='bgr8', step=300000)
    msg.data = array.array('B', bytes(16))
    with pytest.raises(ImageConversionError, match='exceeds the limit'):
        imgmsg_to_bgr(msg)
    with pytest.raises(ImageConversionError, match='exceeds the limit of 10 pixels'):
        imgmsg_to_bgr(make_msg(BGR, 'bgr8'), max_pixels=10)


def test_error_is_a_value_error():
    assert issubclass(ImageConversionError, ValueError)


# ---- compressed ----

@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_compressed_round_trip(fmt):
    smooth = cv2.GaussianBlur(np.repeat(np.repeat(BGR, 8, 0), 8, 1), (5, 5), 0)
    msg = bgr_to_compressed(smooth, Header(frame_id='cam'), fmt=fmt, quality=95)
    assert isinstance(msg, CompressedImage) and msg.format == fmt
    assert compressed_dimensions(bytes(msg.data)) == (64, 48)
    out = compressed_to_bgr(msg)
    assert out.shape == smooth.shape
    tolerance = 0 if fmt == 'png' else 12
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() <= max(tolerance, 0.5)


def test_corrupt_jpeg():
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', b'\xff\xd8\xff\xe0' + bytes(range(256)) * 4 + b'\xff\xd9')
    with pytest.raises(ImageConversionError, match='corrupt compressed image'):
        compressed_to_bgr(msg)


def test_truncated_jpeg():
    good = bgr_to_compressed(np.full((32, 32, 3), 90, np.uint8), fmt='jpeg')
    msg = CompressedImage(format='jpeg')
    msg.data = good.data[:len(good.data) // 2]
    with pytest.raises(ImageConversionError, match='truncated JPEG'):
        compressed_to_bgr(msg)


def test_empty_compressed():
    with pytest.raises(ImageConversionError, match='zero-size compressed image'):
        compressed_to_bgr(CompressedImage(format='jpeg'))


def test_huge_compressed_is_refused_from_its_header():
    msg = bgr_to_compressed(np.zeros((40, 50, 3), np.uint8), fmt='png')
    with pytest.raises(ImageConversionError, match='compressed image of 50x40'):
        compressed_to_bgr(msg, max_pixels=1000)
    msg = bgr_to_compressed(np.zeros((40, 50, 3), np.uint8), fmt='jpeg')
    assert compressed_dimensions(bytes(msg.data)) == (50, 40)
    with pytest.raises(ImageConversionError, match='exceeds the limit'):
        compressed_to_bgr(msg, max_pixels=1000)


def astronaut_like(side=96):
    """A busy BGR frame (a JPEG of it has a long entropy-coded scan)."""
    yy, xx = np.mgrid[0:side, 0:side]
    image = np.dstack([(xx * 3) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256])
    noise = RNG.integers(0, 40, size=(side, side, 3))
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def jpeg_bytes(image, progressive=False):
    """Encode `image` as JPEG bytes (baseline or progressive)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    ok, encoded = cv2.imencode('.jpg', image, params)
    assert ok
    return encoded.tobytes()


class DecodeSpy:
    """Wraps the core's real JPEG and PNG pixel decoders and counts how often they ran."""

    def __init__(self):
        self.calls = 0

    def wrap(self, real):
        def counted(*args):
            self.calls += 1
            return real(*args)
        return counted


@pytest.fixture
def decode_spy(monkeypatch):
    spy = DecodeSpy()
    for name in ('_decode_jpeg', '_decode_png'):
        monkeypatch.setattr(image_decode, name, spy.wrap(getattr(image_decode, name)))
    monkeypatch.setattr(cv2, 'imdecode', spy.wrap(cv2.imdecode))
    return spy


@pytest.mark.parametrize('progressive', [False, True])
@pytest.mark.parametrize('tail', [b'\x00' * 63, b'\x00' * 4096, b'\xff' * 500,
                                  b'VENDOR-TRAILER' * 20 + b'\x00' * 7],
                         ids=['zeros63', 'zeros4096', 'ff500', 'trailer'])
def test_jpeg_padded_after_its_end_marker_is_decoded(progressive, tail):
    # UVC/MJPEG drivers hand over whole buffers: the JPEG, then padding up to the buffer
    # size. libjpeg ignores what follows the end-of-image marker, so must we.
    image = astronaut_like()
    data = jpeg_bytes(image, progressive)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', data + tail)
    np.testing.assert_array_equal(compressed_to_bgr(msg), expected)


@pytest.mark.parametrize('progressive', [False, True])
@pytest.mark.parametrize('padding', [b'', b'\x00' * 4096], ids=['bare', 'padded'])
def test_jpeg_cut_inside_its_scan_is_truncated_even_when_padded(progressive, padding):
    data = jpeg_bytes(astronaut_like(), progressive)
    sos = data.index(b'\xff\xda')
    cut = sos + (len(data) - sos) // 2  # in the entropy-coded data
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', data[:cut] + padding)
    with pytest.raises(ImageConversionError, match='truncated JPEG') as info:
        compressed_to_bgr(msg)
    assert info.value.kind == 'truncated'


def test_jpeg_with_a_thumbnail_is_truncated_when_the_main_image_is_cut():
    # An EXIF-style APP1 segment carrying a whole thumbnail JPEG (with its own end
    # marker) precedes the frame: a cut-off main image must still count as truncated.
    thumbnail = jpeg_bytes(np.full((8, 8, 3), 128, np.uint8))
    app1 = b'\xff\xe1' + (2 + 6 + len(thumbnail)).to_bytes(2, 'big') + b'Exif\x00\x00' \
        + thumbnail
    main = jpeg_bytes(astronaut_like())
    whole = main[:2] + app1 + main[2:]
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', whole)
    assert compressed_to_bgr(msg).shape == (96, 96, 3)
    assert compressed_dimensions(whole) == (96, 96)  # the frame's, not the thumbnail's
    msg.data = array.array('B', whole[:len(whole) - 200])
    with pytest.raises(ImageConversionError, match='truncated JPEG'):
        compressed_to_bgr(msg)


@pytest.mark.parametrize('ext,name', [('.bmp', 'BMP'), ('.tiff', 'TIFF'), ('.webp', 'WebP'),
                                      ('.ppm', 'PNM')])
def test_formats_other_than_jpeg_and_png_are_refused_unread(ext, name, decode_spy):
    ok, encoded = cv2.imencode(ext, BGR)
    assert ok and cv2.imdecode(encoded, cv2.IMREAD_COLOR) is not None  # OpenCV reads it
    decode_spy.calls = 0
    msg = CompressedImage(format=ext[1:])
    msg.data = array.array('B', encoded.tobytes())
    with pytest.raises(ImageConversionError,
                       match=f'unsupported compressed image format: data looks like {name} '
                             '.*only JPEG and PNG are accepted') as info:
        compressed_to_bgr(msg)
    assert info.value.kind == 'unsupported_format'
    assert decode_spy.calls == 0


def test_huge_bmp_is_refused_before_decoding(decode_spy):
    # 8000 x 4400 = 35.2 Mpx, above the 8K limit; decoding it first would cost ~200 MiB.
    ok, encoded = cv2.imencode('.bmp', np.zeros((4400, 8000, 3), np.uint8))
    msg = CompressedImage(format='bmp')
    msg.data = array.array('B', encoded.tobytes())
    decode_spy.calls = 0
    with pytest.raises(ImageConversionError, match='looks like BMP') as info:
        compressed_to_bgr(msg)
    assert info.value.kind == 'unsupported_format' and decode_spy.calls == 0


def test_data_without_any_image_signature_is_refused_unread(decode_spy):
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', b'GARBAGE!' * 100)
    with pytest.raises(ImageConversionError, match='no known image signature') as info:
        compressed_to_bgr(msg)
    assert info.value.kind == 'unsupported_format' and decode_spy.calls == 0


@pytest.mark.parametrize('body', [b'\xff' * 2_000_000,  # fill bytes without end
                                  b'\xff\xfe\x00\x02' * 500_000],  # empty comments
                         ids=['fill', 'comments'])
def test_endless_jpeg_header_is_given_up_as_corrupt(body, decode_spy):
    # Walking megabytes of markers byte by byte cost the worker seconds: the walk gives
    # up after a bounded number of markers and the frame is refused undecoded.
    data = b'\xff\xd8' + body
    assert compressed_dimensions(data) is None
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', data)
    with pytest.raises(ImageConversionError, match='corrupt compressed image') as info:
        compressed_to_bgr(msg)
    assert info.value.kind == 'corrupt' and decode_spy.calls == 0


def test_jpeg_without_a_readable_header_is_not_decoded(decode_spy):
    data = jpeg_bytes(astronaut_like())
    sof = data.index(b'\xff\xc0')
    broken = data[:sof] + b'\x00' + data[sof + 1:]  # the frame header's marker destroyed
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', broken)
    with pytest.raises(ImageConversionError, match='corrupt compressed image') as info:
        compressed_to_bgr(msg)
    assert info.value.kind == 'corrupt' and decode_spy.calls == 0


# ---- debug image out ----

def test_bgr_to_imgmsg_round_trip():
    header = Header(frame_id='camera')
    header.stamp.sec, header.stamp.nanosec = 12, 34
    msg = bgr_to_imgmsg(BGR, header)
    assert (msg.width, msg.height, msg.step, msg.encoding) == (8, 6, 24, 'bgr8')
    assert msg.header.frame_id == 'camera' and msg.header.stamp.sec == 12
    np.testing.assert_array_equal(imgmsg_to_bgr(msg), BGR)
    np.testing.assert_array_equal(imgmsg_to_bgr(bgr_to_imgmsg(BGR, encoding='rgb8')), BGR)
    with pytest.raises(ImageConversionError, match='needs an \\(H, W, 3\\) uint8 array'):
        bgr_to_imgmsg(BGR[:, :, 0])


def test_errors_carry_a_kind_for_the_counters():
    cases = []
    unknown = make_msg(BGR, 'bayer_rggb8')
    cases.append((lambda: imgmsg_to_bgr(unknown), 'unknown_encoding'))
    cases.append((lambda: imgmsg_to_bgr(Image(height=0, width=8, encoding='bgr8', step=24)),
                  'zero_size'))
    truncated = make_msg(BGR, 'bgr8')
    truncated.data = truncated.data[:10]
    cases.append((lambda: imgmsg_to_bgr(truncated), 'truncated'))
    short_step = make_msg(BGR, 'bgr8')
    short_step.step = 3
    cases.append((lambda: imgmsg_to_bgr(short_step), 'step_mismatch'))
    cases.append((lambda: imgmsg_to_bgr(make_msg(BGR, 'bgr8'), max_pixels=4), 'too_large'))
    corrupt = CompressedImage(format='png')
    corrupt.data = array.array('B', b'\x89PNG\r\n\x1a\n' + bytes(40))
    cases.append((lambda: compressed_to_bgr(corrupt), 'corrupt'))
    bmp = CompressedImage(format='bmp')
    bmp.data = array.array('B', cv2.imencode('.bmp', BGR)[1].tobytes())
    cases.append((lambda: compressed_to_bgr(bmp), 'unsupported_format'))
    for call, kind in cases:
        with pytest.raises(ImageConversionError) as info:
            call()
        assert info.value.kind == kind, (kind, str(info.value))
