"""The strict decoder: damaged JPEG/PNG refused, disproportionate headers refused undecoded.

Real encoded frames (the shipped photos, flat-colour frames at high and low quality,
baseline, optimised and progressive JPEGs, PNG) must pass; damaged ones OpenCV answers
as good pictures must not.
"""

import struct
import zlib

import cv2
import numpy as np
import pytest

from soft_biometrics_ros.runtime import image_decode
from soft_biometrics_ros.runtime.image_decode import (ImageDecodeError, decode_image,
                                                      read_image_file)
from soft_biometrics_ros.sample_data import astronaut_bgr


def jpeg(image, quality=90, *flags):
    """JPEG bytes of a BGR array (OpenCV's encoder, the one cameras' drivers resemble)."""
    ok, encoded = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, quality, *flags])
    assert ok
    return encoded.tobytes()


def png(image):
    """PNG bytes of a BGR array."""
    ok, encoded = cv2.imencode('.png', image)
    assert ok
    return encoded.tobytes()


@pytest.fixture
def decodes(monkeypatch):
    """Count the calls of the pixel decoders (a refusal must come before them)."""
    calls = []
    for name in ('_decode_jpeg', '_decode_png'):
        real = getattr(image_decode, name)
        monkeypatch.setattr(image_decode, name,
                            lambda data, real=real: calls.append(1) or real(data))
    return calls


def test_jpeg_cut_short_but_closed_with_an_end_marker_is_corrupt(decodes):
    # The first quarter of a real JPEG + FF D9: libjpeg fills the rest with grey and
    # only warns on stderr; OpenCV returns that picture as good.
    data = jpeg(astronaut_bgr())
    damaged = data[:len(data) // 4] + b'\xff\xd9'
    grey = cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_COLOR)
    assert grey is not None and grey.shape == (512, 512, 3)  # what the node used to answer
    with pytest.raises(ImageDecodeError, match='do not decode cleanly: Corrupt JPEG data') \
            as info:
        decode_image(damaged)
    assert info.value.kind == 'corrupt'


def test_jpeg_with_a_flipped_byte_in_its_scan_is_corrupt():
    data = bytearray(jpeg(astronaut_bgr()))
    sos = data.index(b'\xff\xda')
    for offset in range(sos + 400, len(data) - 2, 997):
        if data[offset] not in (0xFF, 0x00) and data[offset - 1] != 0xFF:
            data[offset] = 0xFF  # an invalid marker inside the entropy-coded data
            data.insert(offset + 1, 0x99)
            break
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bytes(data))
    assert info.value.kind == 'corrupt'


@pytest.mark.parametrize('size', [(640, 480), (1920, 1080), (3840, 2160)])
@pytest.mark.parametrize('quality', [5, 95])
@pytest.mark.parametrize('flags', [(), (cv2.IMWRITE_JPEG_OPTIMIZE, 1),
                                   (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)],
                         ids=['baseline', 'optimised', 'progressive'])
def test_flat_colour_jpegs_pass_the_size_floor(size, quality, flags):
    # A flat frame is the smallest real JPEG of its size (about 1 byte per 170 pixels
    # with optimised tables); the floor is 1 byte per 512.
    width, height = size
    for colour in ((128, 128, 128), (0, 0, 0), (30, 200, 90)):
        frame = np.empty((height, width, 3), np.uint8)
        frame[:] = colour
        data = jpeg(frame, quality, *flags)
        assert len(data) * 50 < width * height  # far smaller than a photo
        out = decode_image(data)
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert out.shape == (height, width, 3)
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2


def test_real_photos_decode_like_opencv_in_every_form():
    from soft_biometrics_ros.sample_data import DATA_DIR
    for path in sorted(DATA_DIR.glob('*.jpg')):
        data = path.read_bytes()
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        out = read_image_file(path)
        assert out.shape == expected.shape
        assert np.abs(out.astype(int) - expected.astype(int)).mean() < 1.0
        grey = cv2.cvtColor(expected, cv2.COLOR_BGR2GRAY)
        for encoded in (jpeg(expected, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
                        jpeg(grey, 30), png(expected)):
            assert decode_image(encoded).shape == expected.shape


def test_tiny_jpeg_claiming_8k_is_refused_before_decoding(decodes):
    # A few hundred bytes whose frame header says 7680 x 4320: decoding it cost ~10 s
    # and ~100 MiB before it was found empty.
    data = bytearray(jpeg(np.full((16, 16, 3), 128, np.uint8)))
    sof = data.index(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', 4320, 7680)
    assert len(data) < 1000
    with pytest.raises(ImageDecodeError, match='cannot hold the 7680x4320 picture its header '
                                               'claims') as info:
        decode_image(bytes(data))
    assert info.value.kind == 'corrupt' and decodes == []


def test_jpeg_above_the_pixel_limit_is_refused_before_decoding(decodes):
    data = jpeg(np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(ImageDecodeError, match='50x40 = 2000 pixels exceeds the limit') as info:
        decode_image(data, max_pixels=1000)
    assert info.value.kind == 'too_large' and decodes == []


def test_jpeg_with_too_many_scans_is_refused_before_decoding(decodes):
    data = jpeg(astronaut_bgr(), 90, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    first, end = data.index(b'\xff\xda'), data.rindex(b'\xff\xd9')
    scans = data[first:end]
    many = data[:first] + scans * 12 + data[end:]  # ~120 scans
    with pytest.raises(ImageDecodeError, match='scans') as info:
        decode_image(many)
    assert info.value.kind == 'corrupt' and decodes == []


def png_chunks(data):
    """The (type, body) chunks of PNG bytes."""
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_of(chunks):
    """PNG bytes of (type, body) chunks with correct CRCs."""
    return image_decode.PNG_SIGNATURE + b''.join(
        struct.pack('>I', len(body)) + kind + body
        + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF) for kind, body in chunks)


def test_damaged_pngs_are_corrupt_or_truncated():
    data = png(astronaut_bgr())
    chunks = png_chunks(data)
    idat = b''.join(body for kind, body in chunks if kind == b'IDAT')
    # An IDAT stream cut to a quarter, then IEND, every CRC valid (the PNG twin of the
    # JPEG above).
    cut = png_of([chunks[0], (b'IDAT', idat[:len(idat) // 4]), (b'IEND', b'')])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # the chunk's CRC no longer matches
    for damaged in (cut, bytes(flipped), data[:len(data) // 2]):
        with pytest.raises(ImageDecodeError, match='could not be decoded as PNG') as info:
            decode_image(damaged)
        assert info.value.kind == 'corrupt'


def test_png_too_small_for_its_header_is_refused_before_decoding(decodes):
    chunks = png_chunks(png(np.zeros((8, 8, 3), np.uint8)))
    ihdr = bytearray(chunks[0][1])
    ihdr[0:8] = struct.pack('>II', 7680, 4320)
    data = png_of([(b'IHDR', bytes(ihdr)), *chunks[1:]])
    with pytest.raises(ImageDecodeError, match='cannot hold the 7680x4320 picture') as info:
        decode_image(data)
    assert info.value.kind == 'corrupt' and decodes == []
    flat = png(np.full((1080, 1920, 3), 77, np.uint8))  # the most compressible real PNG
    assert decode_image(flat).shape == (1080, 1920, 3)


def test_other_formats_only_where_asked(tmp_path):
    ok, bmp = cv2.imencode('.bmp', astronaut_bgr())
    with pytest.raises(ImageDecodeError, match='data looks like BMP') as info:
        decode_image(bmp.tobytes())
    assert info.value.kind == 'unsupported_format'
    path = tmp_path / 'a.bmp'
    path.write_bytes(bmp.tobytes())
    assert read_image_file(path).shape == (512, 512, 3)
    with pytest.raises(ImageDecodeError, match='zero-size'):
        decode_image(b'')
