"""Which tone is in a WAV file: Goertzel power at candidate frequencies (stdlib only).

Every UA in a NAT test sends its own sine tone, so the dominant frequency of what a UA
received says which UA it came from: each direction of a call is proven separately.

    python -m tests.helpers.tonecheck file.wav 440 840
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True, frozen=True)
class ToneResult:
    freq: int | None       # the strongest candidate; None when there is no audio
    share: float           # its power / total signal power (a clean tone is near 1)
    seconds: float         # audio analysed
    powers: dict[int, float]


@dataclass(slots=True, frozen=True)
class WavInfo:
    rate: int
    channels: int
    width: int
    data_offset: int
    data_len: int


def wav_info(data: bytes, name: object = "wav") -> WavInfo:
    """Parse the RIFF header leniently: a writer that never got closed leaves the
    RIFF and data sizes at 0 (pjsua2's recorder after os._exit, baresip's dump while
    the call still runs); then the data is whatever follows the data chunk header."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{name}: not a WAV file")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            tag, channels, rate = struct.unpack_from("<HHI", data, body)
            width = struct.unpack_from("<H", data, body + 14)[0] // 8
            if tag != 1:
                raise ValueError(f"{name}: WAV format {tag} is not PCM")
            fmt = (rate, channels, width)
        elif cid == b"data":
            if fmt is None:
                raise ValueError(f"{name}: data chunk before fmt chunk")
            if size == 0 or body + size > len(data):
                size = len(data) - body
            return WavInfo(fmt[0], fmt[1], fmt[2], body, size)
        pos = body + size + (size & 1)
    raise ValueError(f"{name}: no data chunk")


def read_samples(path: Path | str, max_seconds: float = 2.0,
                 skip_seconds: float = 0.2) -> tuple[array, int]:
    """First channel of a 16-bit PCM WAV as signed ints, skipping the start (jitter
    buffer fill and codec start-up), at most `max_seconds` of it."""
    data = Path(path).read_bytes()
    w = wav_info(data, path)
    if w.width != 2:
        raise ValueError(f"{path}: only 16-bit PCM is supported")
    frame = w.width * w.channels
    n = w.data_len // frame
    skip = min(int(skip_seconds * w.rate), n // 4)
    count = min(n - skip, int(max_seconds * w.rate))
    start = w.data_offset + skip * frame
    samples = array("h")
    samples.frombytes(data[start:start + count * frame])
    if sys.byteorder == "big":
        samples.byteswap()
    if w.channels > 1:
        samples = samples[::w.channels]
    return samples, w.rate


def goertzel_power(samples: Sequence[int], rate: int, freq: float) -> float:
    """Signal power at `freq`, normalised so that a pure sine of amplitude A gives
    A*A/2 (the sine's mean power), comparable with `mean_power`."""
    n = len(samples)
    if n == 0:
        return 0.0
    coeff = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) * 2.0 / (n * n)


def mean_power(samples: Sequence[int]) -> float:
    n = len(samples)
    return sum(x * x for x in samples) / n if n else 0.0


def dominant_tone(path: Path | str, candidates: Sequence[int], max_seconds: float = 2.0,
                  block_seconds: float = 0.05) -> ToneResult:
    """The strongest candidate over short blocks, powers averaged across blocks.

    One long window would need the tone's phase to run on unbroken; a jitter buffer
    that drops or conceals a frame under load shifts the phase and, over a long window,
    makes the right tone look weak. 50 ms blocks still separate tones 400 Hz apart."""
    samples, rate = read_samples(path, max_seconds)
    seconds = len(samples) / rate if rate else 0.0
    block = max(int(rate * block_seconds), 1)
    total = 0.0
    powers = dict.fromkeys(candidates, 0.0)
    for i in range(0, len(samples) - block + 1, block):
        chunk = samples[i:i + block]
        total += mean_power(chunk)
        for f in candidates:
            powers[f] += goertzel_power(chunk, rate, f)
    if total < 1.0:  # silence or an empty (44-byte) file: nothing arrived
        return ToneResult(None, 0.0, seconds, powers)
    best = max(powers, key=powers.__getitem__)
    return ToneResult(best, powers[best] / total, seconds, powers)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: tonecheck.py FILE.wav FREQ [FREQ...]", file=sys.stderr)
        return 2
    r = dominant_tone(argv[1], [int(f) for f in argv[2:]])
    print(f"{argv[1]}: {r.freq} Hz, share {r.share:.2f}, {r.seconds:.2f} s")
    return 0 if r.freq is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
