"""The .lic container and the Python API: round trips, the header, fingerprints, input conversions, bad bytes."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from lic import codec
from lic.checkpoint import load_checkpoint, save_checkpoint
from lic.codec.container import MAX_PIXELS, Header, pack, unpack
from lic.codec.images import from_tensor, to_tensor
from lic.errors import BitstreamError, LicError
from lic.models import build
from tests.codec_support import forge, forward_reconstruction
from tests.data_support import SKIMAGE_DATA, bilevel_png, photo, png16
from tests.eval_support import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    model = tiny_model()
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.asarray(photo("astronaut.png").crop((100, 40, 230, 136)))  # 96 x 130: padded on both sides


def reconstruction(model, pixels: np.ndarray, mode: str) -> np.ndarray:
    """What the model reconstructs, computed by the eval-mode forward pass instead of the codec."""
    x = to_tensor(pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2))
    return np.asarray(from_tensor(forward_reconstruction(model, x), mode))


def test_round_trip_gives_the_models_reconstruction(model, rgb) -> None:
    data = codec.encode(rgb, model)
    assert codec.encode(Image.fromarray(rgb), model) == data  # arrays and PIL images code the same
    header = codec.read_header(data)
    assert (header.model, header.fingerprint) == ("loclic", codec.fingerprint(model))
    assert (header.height, header.width, header.mode, header.pad_multiple) == (96, 130, "RGB", 64)
    assert header.header_bytes + sum(header.stream_lengths) == len(data) == header.total_bytes
    assert header.stream_lengths[0] > 1000  # a real y stream
    assert header.bpp == len(data) * 8 / (96 * 130)
    decoded = codec.decode(data, model)
    assert (decoded.mode, decoded.size) == ("RGB", (130, 96))
    assert np.array_equal(np.asarray(decoded), reconstruction(model, rgb, "RGB"))


def test_grayscale_is_coded_and_decoded_as_grayscale(model) -> None:
    gray = Image.open(SKIMAGE_DATA / "camera.png").crop((200, 100, 270, 190))
    assert gray.mode == "L"
    data = codec.encode(gray, model)
    assert codec.read_header(data).mode == "L"
    decoded = codec.decode(data, model)
    assert (decoded.mode, decoded.size) == ("L", gray.size)
    assert np.array_equal(np.asarray(decoded), reconstruction(model, np.asarray(gray), "L"))
    assert codec.encode(np.asarray(gray), model) == data


def test_header_costs_28_bytes_for_a_small_loclic_file(model, rgb) -> None:
    """3 magic + 1 version + 4 fingerprint + 1 + 6 name ("loclic") + 1 height (96) + 2 width (130)
    + 3 mode/padding/count + 2 + 1 stream lengths + 4 CRC32."""
    assert codec.read_header(codec.encode(rgb, model)).header_bytes == 28


def test_fingerprint_is_stable_across_checkpoints_and_names_a_foreign_model(model, rgb, tmp_path) -> None:
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "model.pt", model))
    assert codec.fingerprint(loaded) == codec.fingerprint(model)
    data = codec.encode(rgb, model)
    assert codec.decode(data, loaded) == codec.decode(data, model)
    other = tiny_model(seed=1)
    other.update(force=True)
    assert codec.fingerprint(other) != codec.fingerprint(model)
    with pytest.raises(BitstreamError) as caught:
        codec.decode(data, other)
    assert codec.fingerprint(model) in str(caught.value) and codec.fingerprint(other) in str(caught.value)


def test_compressai_baselines_use_the_same_container() -> None:
    image = np.asarray(photo("chelsea.png").crop((0, 0, 100, 70)))
    for name in ("bmshj2018-factorized", "mbt2018-mean"):  # one stream at H/16, two streams with z at H/64
        baseline = build(name, quality=1).eval()
        baseline.update(force=True)
        data = codec.encode(image, baseline)
        assert codec.read_header(data).model == name
        assert codec.decode(data, baseline).size == (100, 70)


# --- input conversions -------------------------------------------------------------------------------------


def _saved(image: Image.Image, tmp_path, name: str, **options) -> Image.Image:
    path = tmp_path / name
    image.save(path, **options)
    return codec.open_image(path)


def test_formats_and_modes_become_rgb_or_gray(tmp_path) -> None:
    rgb = photo("chelsea.png").crop((0, 0, 40, 30))
    for name in ("a.png", "a.jpg", "a.webp", "a.tif", "a.ppm"):
        assert _saved(rgb, tmp_path, name).mode == "RGB", name
    assert _saved(rgb.convert("L"), tmp_path, "g.pgm").mode == "L"
    assert _saved(rgb.convert("P"), tmp_path, "p.png").mode == "RGB"
    assert _saved(rgb.convert("1"), tmp_path, "b.png").mode == "L"
    assert _saved(rgb.convert("CMYK"), tmp_path, "c.jpg").mode == "RGB"


def test_alpha_and_16_bits_are_dropped_with_a_warning(tmp_path) -> None:
    rgba = photo("chelsea.png").crop((0, 0, 40, 30)).convert("RGBA")
    with pytest.warns(codec.ImageWarning, match="alpha"):
        assert _saved(rgba, tmp_path, "a.png").mode == "RGB"
    with pytest.warns(codec.ImageWarning, match="alpha"):
        assert _saved(rgba.convert("LA"), tmp_path, "la.png").mode == "L"
    palette = rgba.convert("P")
    palette.info["transparency"] = 0
    with pytest.warns(codec.ImageWarning, match="alpha"):
        assert _saved(palette, tmp_path, "pt.png", transparency=0).mode == "RGB"
    values = np.arange(30 * 40 * 3, dtype=np.uint16).reshape(30, 40, 3) * 7
    expected = {"g16.png": np.rint(values[..., 0] / 257), "rgb16.png": values >> 8}  # gray rounded, RGB truncated
    for name, array in (("g16.png", values[..., 0]), ("rgb16.png", values)):
        (tmp_path / name).write_bytes(png16(array))
        with pytest.warns(codec.ImageWarning, match="16-bit"):
            image = codec.open_image(tmp_path / name)
        assert np.array_equal(np.asarray(image), expected[name].astype(np.uint8)), name


def test_exif_orientation_is_applied(tmp_path) -> None:
    image = photo("chelsea.png").crop((0, 0, 40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright = _saved(image, tmp_path, "rotated.jpg", exif=exif)
    assert upright.size == (30, 40)


def test_unreadable_inputs_are_clear_errors(tmp_path) -> None:
    with pytest.raises(LicError, match="no such file"):
        codec.open_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(LicError, match="not an image"):
        codec.open_image(tmp_path / "text.png")
    full = io.BytesIO()
    photo("chelsea.png").save(full, "PNG")
    (tmp_path / "cut.png").write_bytes(full.getvalue()[:5000])
    with pytest.raises(LicError, match="damaged"):
        codec.open_image(tmp_path / "cut.png")
    with pytest.raises(LicError, match="unsupported colour mode"):
        codec.encode(Image.new("F", (8, 8)), None)
    with pytest.raises(LicError, match="uint8"):
        codec.encode(np.zeros((8, 8, 3), np.float32), None)
    with pytest.raises(LicError, match="H x W x 3"):
        codec.encode(np.zeros((8, 8, 4), np.uint8), None)
    with pytest.raises(LicError, match="outside"):
        codec.encode(np.zeros((1, 1 << 16), np.uint8), None)


# --- parsing untrusted bytes ---------------------------------------------------------------------------------


def _header(**fields) -> Header:
    values = {
        "model": "loclic",
        "fingerprint": "0123abcd",
        "height": 10,
        "width": 20,
        "mode": "RGB",
        "pad_multiple": 64,
        "stream_lengths": (8, 8),
    }
    return Header(**{**values, **fields})


def test_pack_and_unpack_are_inverse() -> None:
    streams = [bytes(range(8)), bytes(range(8, 16))]
    header, parsed = unpack(pack(_header(), streams))
    assert parsed == streams
    assert header == _header(header_bytes=header.header_bytes)


def test_malformed_containers_are_bitstream_errors() -> None:
    good = pack(_header(), [bytes(8), bytes(8)])
    cases = {
        "empty": b"",
        "magic": b"PNG" + good[3:],
        "version": good[:3] + b"\x02" + good[4:],
        "truncated": good[:-1],
        "trailing": good + b"\x00",
        "flipped": good[:-3] + bytes([good[-3] ^ 0x10]) + good[-2:],
        "header cut": good[:12],
    }
    messages = {}
    for case, data in cases.items():
        with pytest.raises(BitstreamError) as caught:
            unpack(data)
        messages[case] = str(caught.value)
    assert "empty" in messages["empty"] and "magic" in messages["magic"] and "version 2" in messages["version"]
    assert "checksum" in messages["flipped"] and "truncated" in messages["header cut"]


def test_forged_sizes_are_refused_before_decoding() -> None:
    """A header with a valid CRC that declares a huge image must not make the decoder allocate it."""
    assert MAX_PIXELS < 8193 * 8193
    head = b"LIC\x01" + bytes.fromhex("0123abcd") + b"\x06loclic"
    head += b"\x81\x40" * 2  # height and width 8193 as LEB128 varints
    head += b"\x00\x06\x01\x08"  # RGB, padding 2^6, one stream of 8 bytes
    data = head + struct.pack(">I", zlib.crc32(bytes(8), zlib.crc32(head))) + bytes(8)
    with pytest.raises(BitstreamError, match="larger than the limit"):
        unpack(data)


def test_streams_no_rans_encoder_writes_never_reach_the_decoder(model, rgb) -> None:
    header, streams = unpack(codec.encode(rgb, model))
    for cut in (streams[0][:6], streams[0][:13]):  # shorter than the 8-byte state; not whole 32-bit words
        forged = pack(replace(header, stream_lengths=(len(cut), len(streams[1]))), [cut, streams[1]])
        with pytest.raises(BitstreamError, match="no rANS encoder writes"):
            codec.decode(forged, model)


# --- budgets and strictness on untrusted bytes (issue 17) ----------------------------------------------------


class _NoModel:
    """Stands in for a model that must not be touched: any use of it fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"decode used the model ({name}) before refusing the file")


def test_forge_writes_what_pack_writes(model, rgb) -> None:
    data = codec.encode(rgb, model)
    assert forge(*unpack(data)) == data


def test_decode_refuses_images_over_the_pixel_budget_before_touching_the_model(model, rgb) -> None:
    data = codec.encode(rgb, model)
    header, streams = unpack(data)
    assert codec.decode(data, model, max_pixels=96 * 130).size == (130, 96)
    with pytest.raises(BitstreamError, match=r"96 x 130 .*budget of 12,479 pixels"):
        codec.decode(data, _NoModel(), max_pixels=96 * 130 - 1)
    forged = forge(replace(header, height=4096, width=2560), streams)  # 10.5 Mpx: over the default 8 Mpx budget
    with pytest.raises(BitstreamError, match=r"4096 x 2560 .*budget of 8,388,608 pixels.*max-pixels"):
        codec.decode(forged, _NoModel())


def test_stream_lengths_must_fit_the_symbols_of_the_declared_size(model, rgb) -> None:
    """A stream longer than its symbols can take at 53 bits each (in-table symbol, escape count and 32 raw bits),
    or shorter than the most probable symbol of each table allows, cannot come from this model's encoder."""
    header, (y, z) = unpack(codec.encode(rgb, model))
    padded = forge(replace(header, stream_lengths=(len(y) + (1 << 16), len(z))), [y + bytes(1 << 16), z])
    with pytest.raises(BitstreamError, match=r"stream 0 .* at most"):
        codec.decode(padded, model)
    small = codec.encode(np.asarray(photo("astronaut.png").crop((0, 0, 64, 64))), model)
    small_header, small_streams = unpack(small)
    reheaded = forge(replace(small_header, height=2048, width=2048), small_streams)
    with pytest.raises(BitstreamError, match=r"stream 1 .* at least"):
        codec.decode(reheaded, model)


def test_varints_must_be_canonical() -> None:
    """One number, one encoding: `c0 80 80 80 00` is 64 written in five bytes instead of one."""
    header, streams = _header(height=64, stream_lengths=(8, 8)), [bytes(8), bytes(8)]
    assert unpack(forge(header, streams))[0].height == 64
    for height in (b"\xc0\x80\x80\x80\x00", b"\xc0\x00", b"\x80\x00"):
        with pytest.raises(BitstreamError, match="height is not a canonical"):
            unpack(forge(header, streams, height=height))
    with pytest.raises(BitstreamError, match="length of stream 1 is not a canonical"):
        unpack(forge(header, streams, lengths=[b"\x08", b"\x88\x00"]))
    with pytest.raises(BitstreamError, match="width is not a canonical"):
        unpack(forge(header, streams, width=b"\xff\xff\xff\xff\x7f"))  # above 32 bits


def test_decode_wants_exactly_the_streams_the_model_codes(model, rgb) -> None:
    header, streams = unpack(codec.encode(rgb, model))
    extra = [*streams, bytes(8)]
    forged = forge(replace(header, stream_lengths=tuple(map(len, extra))), extra)
    with pytest.raises(BitstreamError, match="3 streams, but model loclic codes 2"):
        codec.decode(forged, model)


def test_decode_compares_the_model_name_too(model, rgb) -> None:
    header, streams = unpack(codec.encode(rgb, model))
    forged = forge(replace(header, model="mbt2018"), streams)  # the fingerprint is still this model's
    with pytest.raises(BitstreamError, match=r"encoded by model mbt2018 .* not by the model given \(loclic"):
        codec.decode(forged, model)


def test_image_bombs_are_refused_before_they_are_decoded(tmp_path) -> None:
    """6000 x 6000 is over the codec's limit; 13300 x 13300 is over Pillow's bomb threshold too (its warning is
    an error here). Either is one LicError, raised from the declared size before load()."""
    for side in (6000, 13300):
        path = tmp_path / f"bomb-{side}.png"
        path.write_bytes(bilevel_png(side, side))
        assert path.stat().st_size < 1_000_000
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning on the side
            with pytest.raises(LicError, match=f"{path.name}: .*larger than the limit of 33,554,432 pixels"):
                codec.open_image(path)


def test_multi_frame_inputs_are_coded_as_their_first_frame_with_a_warning(tmp_path) -> None:
    frames = [Image.new("RGB", (32, 24), colour) for colour in ("red", "green", "blue")]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:2])
    for name, count in (("animated.gif", 3), ("pages.tif", 2)):
        with pytest.warns(codec.ImageWarning, match=f"{name}: {count} frames; only the first is coded"):
            image = codec.open_image(tmp_path / name)
        assert image.size == (32, 24) and image.getpixel((0, 0)) == (255, 0, 0)
    frames[0].save(tmp_path / "still.gif")
    with warnings.catch_warnings():
        warnings.simplefilter("error", codec.ImageWarning)
        codec.open_image(tmp_path / "still.gif")  # one frame: nothing to say
