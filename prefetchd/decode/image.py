"""One encoded image → the CHW array `mx.io.ImageRecordIter` yields for it, written into a caller-given `out=` (pure).

This is MXNet 1.9.1's default augmenter (src/io/image_aug_default.cc) and its per-pixel normalisation
(ImageRecordIOParser2::ProcessImage, src/io/iter_image_recordio_2.cc), reproduced with OpenCV, for the knobs
in `ImageOptions`. Compared with MXNet on real .rec files, the deterministic path is bit-identical, except
bicubic resizing (`inter_method=2`, or 9/10 when they pick it), whose rounding differs from MXNet's OpenCV 3.4.2
by 1 on a few pixels (on thousands of pixels unless the worker calls `cv2.ipp.setUseIPP(False)`).
Random crops and mirrors use the caller's numpy Generator: deterministic given it, not MXNet's draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import InvalidRequest, UndecodableImage

# inter_method → OpenCV flag; 9 and 10 choose among these per resize (image_aug_default.cc, GetInterMethod)
INTERPOLATIONS = {
    0: cv2.INTER_NEAREST,
    1: cv2.INTER_LINEAR,
    2: cv2.INTER_CUBIC,
    3: cv2.INTER_AREA,
    4: cv2.INTER_LANCZOS4,
}
INTER_AUTO = 9  # cubic to enlarge both sides, area to shrink both, else bilinear
INTER_RANDOM = 10  # one of 0-4, drawn per resize
OUTPUT_DTYPES = ("float32", "uint8", "int8")  # what ImageRecordIter(dtype=...) accepts

Image = NDArray[Any]  # uint8, HxW (grey) or HxWx3 (BGR, as OpenCV decodes)


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """ImageRecordIter's preprocessing knobs (its mean_r/g/b and std_r/g/b as triples); validated when built.

    `mean`, `std` and `scale` apply to float32 only: uint8 output is the raw pixels and int8 output is
    `saturate(pixel - round(mean))`, as MXNet does. A one-channel `data_shape` uses `mean[0]` and `std[0]`.
    """

    data_shape: tuple[int, int, int]  # (C, H, W), C in (1, 3)
    resize: int = -1  # shorter side to this many pixels first; -1: no resize
    rand_crop: bool = False
    rand_mirror: bool = False
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # r, g, b
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0
    dtype: str = "float32"
    inter_method: int = 1
    mirror: bool = False  # mirror every image
    pad: int = 0  # pixels of `fill_value` added on each side after the resize
    fill_value: int = 255
    _tables: NDArray[Any] = field(init=False, repr=False, compare=False)  # per channel: pixel value → output

    def __post_init__(self) -> None:
        _check(self)
        object.__setattr__(self, "_tables", _output_tables(self))

    @property
    def needs_rng(self) -> bool:
        """Whether `decode_image` draws from its Generator with these options."""
        return self.rand_crop or self.rand_mirror or self.inter_method == INTER_RANDOM


def options_from(decode: dict[str, Any]) -> ImageOptions:
    """The image options a stream's `decode` dict asks for; InvalidRequest names the first bad one."""
    known = {f.name for f in fields(ImageOptions) if f.init}
    unknown = sorted(set(decode) - known)
    if unknown:
        raise InvalidRequest(f"unknown image decode options {unknown} (known: {', '.join(sorted(known))})")
    if "data_shape" not in decode:
        raise InvalidRequest("image decode options need data_shape, as [channels, height, width]")
    values = dict(decode)
    values["data_shape"] = _int_tuple("data_shape", decode["data_shape"])
    for name in ("mean", "std"):
        if name in decode:
            values[name] = _float_triple(name, decode[name])
    return ImageOptions(**values)


def decode_image(
    encoded: bytes | memoryview,
    options: ImageOptions,
    out: NDArray[Any],
    rng: np.random.Generator | None,
    *,
    url: str,
    offset: int,
) -> None:
    """Decode `encoded` (JPEG, PNG, ... as OpenCV reads them) into `out`, shaped `data_shape`, of `options.dtype`.

    Raises UndecodableImage, naming `url` and `offset`, for bytes OpenCV cannot decode. An image smaller than
    `data_shape` is enlarged to cover it (as MXNet does), never refused. `rng` is needed when `options.needs_rng`.
    """
    if out.shape != options.data_shape or out.dtype != options.dtype:
        raise ValueError(
            f"out is {out.dtype}{list(out.shape)}, the options make {options.dtype}{list(options.data_shape)}"
        )
    if options.needs_rng and rng is None:
        raise ValueError("rand_crop, rand_mirror and inter_method=10 need a numpy Generator")
    image = _decode(encoded, options.data_shape[0], url=url, offset=offset)
    if options.resize != -1:
        image = _resize_shorter_side(image, options.resize, options.inter_method, rng)
    if options.pad:
        fill = (options.fill_value,) * 3
        image = cv2.copyMakeBorder(image, *(options.pad,) * 4, cv2.BORDER_CONSTANT, value=fill)
    image = _crop(image, options, rng)
    if options.mirror or (options.rand_mirror and rng is not None and rng.random() < 0.5):
        image = cv2.flip(image, 1)
    _write_planes(image, options, out)


def _decode(encoded: bytes | memoryview, channels: int, *, url: str, offset: int) -> Image:
    # MXNet's colour decode drops alpha and repeats grey; its grey decode of a colour JPEG is the Y plane.
    # Both follow EXIF orientation, as OpenCV 3.4 and 4 do by default.
    flags = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    image = None
    try:
        if len(encoded):
            image = cv2.imdecode(np.frombuffer(encoded, dtype=np.uint8), flags)
    except cv2.error as exc:
        raise _undecodable(encoded, url, offset) from exc
    if image is None:
        raise _undecodable(encoded, url, offset)
    return image


def _undecodable(encoded: bytes | memoryview, url: str, offset: int) -> UndecodableImage:
    return UndecodableImage(
        f"{url}: the image of the record at byte {offset} does not decode ({len(encoded)} bytes that OpenCV "
        "cannot read as JPEG, PNG or another image format; a truncated JPEG is refused too) — repack the record",
        url=url,
        offset=offset,
    )


def _resize_shorter_side(image: Image, resize: int, inter_method: int, rng: np.random.Generator | None) -> Image:
    rows, cols = image.shape[:2]
    # integer arithmetic, truncating, as image_aug_default.cc does; a square image takes the second branch
    if rows > cols:
        new_rows, new_cols = resize * rows // cols, resize
    else:
        new_rows, new_cols = resize, resize * cols // rows
    method = _interpolation(inter_method, (cols, rows), (new_cols, new_rows), rng)
    return _resized(image, new_cols, new_rows, method)


def _crop(image: Image, options: ImageOptions, rng: np.random.Generator | None) -> Image:
    _, height, width = options.data_shape
    rows, cols = image.shape[:2]
    if rows < height or cols < width:
        image = _enlarge_to_cover(image, height, width, options.inter_method, rng)
        rows, cols = image.shape[:2]
    if options.rand_crop and rng is not None:
        y = int(rng.integers(0, rows - height + 1))
        x = int(rng.integers(0, cols - width + 1))
    else:
        y, x = (rows - height) // 2, (cols - width) // 2
    return image[y : y + height, x : x + width]


def _enlarge_to_cover(
    image: Image, height: int, width: int, inter_method: int, rng: np.random.Generator | None
) -> Image:
    """MXNet's rescue of an image smaller than the crop: scale up to the crop's height, then to its width.

    The other side is computed in float32 and truncated, as MXNet does; one method (chosen from the image's
    size against the crop's) serves both steps.
    """
    rows, cols = image.shape[:2]
    method = _interpolation(inter_method, (cols, rows), (width, height), rng)
    if rows < height:
        new_cols = int(np.float32(height) / np.float32(rows) * np.float32(cols))
        image = _resized(image, new_cols, height, method)
        rows, cols = image.shape[:2]
    if cols < width:
        new_rows = int(np.float32(width) / np.float32(cols) * np.float32(rows))
        image = _resized(image, width, new_rows, method)
    return image


def _interpolation(
    inter_method: int, old_size: tuple[int, int], new_size: tuple[int, int], rng: np.random.Generator | None
) -> int:
    if inter_method == INTER_AUTO:
        if new_size[0] > old_size[0] and new_size[1] > old_size[1]:
            return cv2.INTER_CUBIC
        if new_size[0] < old_size[0] and new_size[1] < old_size[1]:
            return cv2.INTER_AREA
        return cv2.INTER_LINEAR
    if inter_method == INTER_RANDOM:
        assert rng is not None  # decode_image checked
        return INTERPOLATIONS[int(rng.integers(0, 5))]
    return INTERPOLATIONS[inter_method]


def _resized(image: Image, cols: int, rows: int, method: int) -> Image:
    if image.shape[:2] == (rows, cols):
        return image  # cv::resize to the same size is a copy
    return cv2.resize(image, (cols, rows), interpolation=method)


def _write_planes(image: Image, options: ImageOptions, out: NDArray[Any]) -> None:
    """Write the BGR (or grey) crop into `out`'s RGB (or grey) planes, each through its channel's table.

    A table lookup is exact by construction, and split-then-lookup per plane was the fastest variant measured
    for a 224x224 float32 crop: 50 µs, against 70 µs for one 3-channel lookup and 96 µs for numpy's
    subtract-and-multiply over the transposed view. uint8 needs no table: split and copy, 9 µs.
    """
    target = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    planes = (image,) if image.ndim == 2 else cv2.split(image)[::-1]
    for channel, plane in enumerate(planes):
        if options.dtype == "uint8":
            target[channel] = plane
        else:
            cv2.LUT(plane, options._tables[channel], dst=target[channel])  # dst's dtype was checked: no realloc
    if target is not out:
        np.copyto(out, target)


def _output_tables(options: ImageOptions) -> NDArray[Any]:
    """For each output channel, what each of the 256 pixel values becomes (ProcessImage's arithmetic)."""
    channels = options.data_shape[0]
    pixels = np.arange(256, dtype=np.float32)
    if options.dtype == "uint8":
        return np.tile(np.arange(256, dtype=np.uint8), (channels, 1))
    means = [mxnet_float32(m) for m in options.mean[:channels]]
    if options.dtype == "int8":
        # saturate_cast<int8_t>(pixel - std::round(mean)); std::round rounds halves away from zero
        rounded = [math.copysign(math.floor(abs(float(m)) + 0.5), m) for m in means]
        return np.stack([np.clip(pixels - r, -128, 127) for r in rounded]).astype(np.int8)
    scale = mxnet_float32(options.scale)
    bias = np.float32(0.0) * scale  # the (zero) random illumination, kept for its sign
    tables: list[NDArray[np.float32]] = []
    for mean, std in zip(means, (mxnet_float32(s) for s in options.std[:channels]), strict=True):
        # float32 throughout: (pixel - mean) * (scale / std) + illumination / std
        tables.append((pixels - mean) * (scale / std) + bias / std)
    return np.stack(tables).astype(np.float32)


def mxnet_float32(value: float) -> np.float32:
    """`value` as MXNet holds it when passed as a keyword: dmlc-core's ParseFloat<float> of `str(value)`.

    That parser is not correctly rounded (the integer and fraction parts are rounded to float32 apart, then
    added), so 1.808 becomes 1.8080001, not float32(1.808) = 1.808; outputs differ in the last bit otherwise.
    """
    text = repr(float(value))
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    negative = text.startswith("-")
    mantissa, _, exponent_text = text.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    result = np.float32(int(whole))
    if fraction:
        digits = fraction[:19]  # dmlc ignores digits after the 19th
        # both parts become doubles first, as in C++ (the quotient of the exact integers can differ)
        result = np.float32(result + np.float32(float(int(digits)) / float(10 ** len(digits))))
    if exponent_text:
        result = _scaled_by_power_of_ten(result, int(exponent_text), text)
    return np.float32(-result) if negative else result


def _scaled_by_power_of_ten(significand: np.float32, exponent: int, text: str) -> np.float32:
    # dmlc::stof refuses exponents past 38, and at 38 significands past float32's limits
    too_large = exponent == 38 and significand > np.float32(3.402823466)
    too_small = exponent == -38 and significand < np.float32(1.175494351)
    if abs(exponent) > 38 or too_large or too_small:
        raise ValueError(f"{text} is out of float32's range")
    power = np.float32(1.0)
    for _ in range(abs(exponent) // 8):
        power = np.float32(power * np.float32(1e8))
    for _ in range(abs(exponent) % 8):
        power = np.float32(power * np.float32(10.0))
    with np.errstate(over="ignore", under="ignore"):
        result = np.float32(significand / power) if exponent < 0 else np.float32(significand * power)
    if not np.isfinite(result):
        raise ValueError(f"{text} is out of float32's range")
    return result


def _check(options: ImageOptions) -> None:
    channels, height, width = options.data_shape
    if channels not in (1, 3) or height < 1 or width < 1:
        raise InvalidRequest(
            f"data_shape must be [1 or 3 channels, height, width] with positive sizes, not {list(options.data_shape)}"
        )
    _expect_int("resize", options.resize, lowest=-1)
    if options.resize == 0:
        raise InvalidRequest("resize must be -1 (no resize) or a positive number of pixels, not 0")
    _expect_int("pad", options.pad, lowest=0)
    _expect_int("fill_value", options.fill_value, lowest=0, highest=255)
    for name in ("rand_crop", "rand_mirror", "mirror"):
        if not isinstance(getattr(options, name), bool):
            raise InvalidRequest(f"{name} must be true or false, not {getattr(options, name)!r}")
    if options.dtype not in OUTPUT_DTYPES:
        raise InvalidRequest(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, not {options.dtype!r}")
    method = options.inter_method
    if (
        not isinstance(method, int)
        or isinstance(method, bool)
        or method not in (*INTERPOLATIONS, INTER_AUTO, INTER_RANDOM)
    ):
        raise InvalidRequest(
            f"inter_method must be 0 (nearest), 1 (bilinear), 2 (cubic), 3 (area), 4 (lanczos), 9 (auto) "
            f"or 10 (random), not {options.inter_method!r}"
        )
    _expect_floats(options)


def _expect_int(name: str, value: object, *, lowest: int, highest: int | None = None) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < lowest
        or (highest is not None and value > highest)
    ):
        bounds = f"from {lowest} to {highest}" if highest is not None else f"at least {lowest}"
        raise InvalidRequest(f"{name} must be an integer {bounds}, not {value!r}")


def _expect_floats(options: ImageOptions) -> None:
    named = [("scale", options.scale)]
    named += [(f"mean[{i}]", v) for i, v in enumerate(options.mean)]
    named += [(f"std[{i}]", v) for i, v in enumerate(options.std)]
    for name, value in named:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidRequest(f"{name} must be a number, not {value!r}")
        try:
            as_float32 = mxnet_float32(value)
        except ValueError as exc:
            raise InvalidRequest(f"{name}: {exc}") from exc
        if name.startswith("std") and as_float32 == 0:
            raise InvalidRequest(f"{name} must not be 0 (pixels are divided by it)")
        if name.startswith("mean") and options.dtype == "int8" and abs(value) > 32767:
            raise InvalidRequest(f"{name} must lie within ±32767 for int8 output, not {value!r}")


def _int_tuple(name: str, value: object) -> tuple[int, int, int]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise InvalidRequest(f"{name} must be [channels, height, width], not {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InvalidRequest(f"{name} must hold integers, not {value!r}")
    return (value[0], value[1], value[2])


def _float_triple(name: str, value: object) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise InvalidRequest(f"{name} must be [r, g, b], not {value!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise InvalidRequest(f"{name} must hold numbers, not {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))
