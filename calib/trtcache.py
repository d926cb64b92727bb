"""TensorRT INT8 calibration cache (TensorRT 8.x-10.x), written and read exactly.

Format::

    TRT-<version code>-<algorithm>          e.g. TRT-100300-EntropyCalibration2
    <tensor name>: <hex>                    one line per tensor

The hex is the float32 **scale** (``amax / 127``) as its IEEE-754 bit pattern, most significant byte
first, lowercase, 8 digits (TensorRT itself may drop leading zeros, so reading pads to 8).
Version code: 8.x (and 7.x) ``major*1000 + minor*100 + patch`` (8.6.1 -> 8601); 10.x
``major*10000 + minor*100 + patch`` (10.3.0 -> 100300). TensorRT ignores a cache whose header does
not match its own version and algorithm, so both are configurable and recorded.
Tensors with a zero, negative or non-finite amax are left out (TensorRT then keeps them in higher
precision) and reported by :func:`write_trt_cache`; the reader refuses such scales and a tensor named
twice, which TensorRT would take silently.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.errors import InputError, check_choice
from calib.io import atomic_write_text

ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration", "EntropyCalibration", "LegacyCalibration")
DEFAULT_TRT_VERSION = "10.3.0"
QMAX = 127
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def version_code(version: str) -> int:
    """TensorRT's integer version in cache headers: '8.6.1' -> 8601, '10.3.0' -> 100300."""
    parts = str(version).strip().split(".")
    if not 2 <= len(parts) <= 4 or not all(p.isdigit() for p in parts):
        raise InputError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR[.PATCH] (e.g. 10.3.0 or 8.6.1)")
    major, minor, patch = (int(p) for p in (parts + ["0"])[:3])
    if major in (7, 8):
        if minor > 9 or patch > 99:
            raise InputError(f"TensorRT version {version!r} cannot be encoded as a {major}.x cache header")
        return major * 1000 + minor * 100 + patch
    if major >= 10:
        if minor > 99 or patch > 99:
            raise InputError(f"TensorRT version {version!r} cannot be encoded as a cache header")
        return major * 10000 + minor * 100 + patch
    raise InputError(f"TensorRT version {version!r}: calib writes caches for TensorRT 7.x, 8.x and 10.x")


def version_string(code: int) -> str:
    """Inverse of :func:`version_code` ('TRT-8601' -> '8.6.1', 'TRT-100300' -> '10.3.0')."""
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def header(trt_version: str, algorithm: str) -> str:
    check_choice(algorithm, ALGORITHMS, "TensorRT calibration algorithm")
    return f"TRT-{version_code(trt_version)}-{algorithm}"


def scale_to_hex(scale: float) -> str:
    """float32 bit pattern of ``scale``, big-endian, 8 lowercase hex digits."""
    return struct.pack("!f", np.float32(scale)).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of :func:`scale_to_hex`; accepts fewer than 8 digits (leading zeros dropped)."""
    text = text.strip().lower()
    if not 1 <= len(text) <= 8 or not re.fullmatch(r"[0-9a-f]+", text):
        raise InputError(f"{text!r} is not a hex float32 scale (up to 8 hex digits)")
    return float(struct.unpack("!f", bytes.fromhex(text.zfill(8)))[0])


def amax_to_scale(amax: float) -> float:
    """The float32 scale TensorRT stores for a symmetric INT8 range ``[-amax, amax]``."""
    return float(np.float32(amax / QMAX))


@dataclass(frozen=True)
class TrtCache:
    """A parsed cache: header fields and the float32 scale per tensor, in file order."""

    version_code: int
    algorithm: str
    scales: dict[str, float]

    @property
    def trt_version(self) -> str:
        return version_string(self.version_code)

    @property
    def header(self) -> str:
        return f"TRT-{self.version_code}-{self.algorithm}"

    def amax(self) -> dict[str, float]:
        return {n: s * QMAX for n, s in self.scales.items()}

    def text(self) -> str:
        lines = [self.header] + [f"{n}: {scale_to_hex(s)}" for n, s in self.scales.items()]
        return "\n".join(lines) + "\n"


def cache_text(amax: Mapping[str, float], *, algorithm: str, trt_version: str = DEFAULT_TRT_VERSION) -> tuple[str, list[str]]:
    """The cache text for per-tensor amax, and the names left out (amax zero, negative or non-finite)."""
    head = header(trt_version, algorithm)
    lines, omitted = [head], []
    for name, value in amax.items():
        if "\n" in name:
            raise InputError(f"tensor name {name!r} contains a newline and cannot go into a TensorRT cache")
        if not (math.isfinite(value) and value > 0):
            omitted.append(name)
            continue
        lines.append(f"{name}: {scale_to_hex(value / QMAX)}")
    return "\n".join(lines) + "\n", omitted


def write_trt_cache(path: str | Path, amax: Mapping[str, float], *, algorithm: str,
                    trt_version: str = DEFAULT_TRT_VERSION) -> list[str]:
    """Write a TensorRT calibration cache atomically; returns the tensor names left out."""
    text, omitted = cache_text(amax, algorithm=algorithm, trt_version=trt_version)
    atomic_write_text(path, text)
    return omitted


def parse_trt_cache(text: str, where: str = "cache") -> TrtCache:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"TensorRT cache {where} is empty")
    match = _HEADER.match(lines[0])
    if not match:
        raise InputError(f"TensorRT cache {where} starts with {lines[0][:60]!r}, expected a header like TRT-100300-EntropyCalibration2")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        if not sep or not name.strip():
            raise InputError(f"TensorRT cache {where} line {number}: expected '<tensor>: <hex scale>', got {line[:60]!r}")
        try:
            scale = hex_to_scale(value)
        except InputError as exc:
            raise InputError(f"TensorRT cache {where} line {number}: {exc}") from exc
        tensor = name.strip()
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"TensorRT cache {where} line {number}: tensor {tensor!r} has scale {scale!r}; "
                             "a scale must be finite and positive (recalibrate, or remove the line)")
        if tensor in scales:
            raise InputError(f"TensorRT cache {where} line {number}: tensor {tensor!r} appears twice; "
                             "a cache holds one scale per tensor")
        scales[tensor] = scale
    return TrtCache(version_code=int(match.group(1)), algorithm=match.group(2), scales=scales)


def read_trt_cache(path: str | Path) -> TrtCache:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"TensorRT cache {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"TensorRT cache {path} is not text: {exc}") from exc
    return parse_trt_cache(text, str(path))
