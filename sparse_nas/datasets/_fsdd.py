"""Free Spoken Digit Dataset (FSDD): spoken digits as keyword-spotting features.

Source: https://github.com/Jakobovski/free-spoken-digit-dataset (v1.0.10): 3,000
recordings ``recordings/{digit}_{speaker}_{index}.wav``, 8 kHz mono 16-bit PCM, 6
speakers x 10 digits x 50 takes. Official split, from its README: takes with index
0-4 are the test set (300 files), 5-49 the training set (2,700 files).

Each recording is centred in a clip of ``window_ms + (frames - 1) * hop_ms`` (1 s by
default): shorter ones are zero-padded equally on both sides, longer ones (up to
2.3 s) lose equal parts at both ends. The clips become MFCCs or log-mel energies
(:mod:`sparse_nas.datasets._audio_features`), framed as in Hello Edge / MLPerf Tiny:
``(1, 49, 10)`` by default, an image for CNNs; ``layout="sequence"`` gives
``(49, 10)`` for RNNs.
"""

from __future__ import annotations

import re
import struct
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparse_nas.datasets._download import Sha256ListDownload
from sparse_nas.datasets._errors import DatasetError, DatasetNotFoundError
from sparse_nas.datasets._registry import (
    DatasetInfo,
    OptionSpec,
    RawDataset,
    corrupt_file_error,
    how_to_obtain,
    missing_file_error,
    register_dataset,
    require_data_dir,
)

_NAME = "fsdd"
_SAMPLE_RATE_HZ = 8000
_SAMPLE_BYTES = 2
_FULL_SCALE = 32768.0
_TEST_TAKES = range(0, 5)
_FILE_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<take>\d+)\.wav$")
_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
_TAKES_PER_DIGIT = 50
_CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_OPTIONS = (
    OptionSpec("features", "mfcc", "MFCCs or log-mel energies", choices=("mfcc", "logmel")),
    OptionSpec("n_mfcc", 10, "MFCCs per frame (features='mfcc')", minimum=1, maximum=128),
    OptionSpec("n_mels", 40, "mel bands, 20 Hz to 4 kHz", minimum=1, maximum=128),
    OptionSpec("frames", 49, "frames per clip; 49 frames of 40/20 ms = 1 s", minimum=1,
               maximum=1000),
    OptionSpec("window_ms", 40.0, "frame length in ms", minimum=1.0, maximum=1000.0),
    OptionSpec("hop_ms", 20.0, "frame step in ms", minimum=1.0, maximum=1000.0),
    OptionSpec("layout", "image", "'image' (1, frames, F) for CNNs or 'sequence' "
               "(frames, F) for RNNs", choices=("image", "sequence")),
)  # fmt: skip


def _check_options(options: Mapping[str, Any]) -> None:
    if options["n_mfcc"] > options["n_mels"]:
        raise DatasetError(
            f"options['n_mfcc']={options['n_mfcc']} of dataset 'fsdd' exceeds "
            f"options['n_mels']={options['n_mels']}"
        )
    for key in ("window_ms", "hop_ms"):
        samples = options[key] * _SAMPLE_RATE_HZ / 1000
        if abs(samples - round(samples)) > 1e-9:
            raise DatasetError(
                f"options[{key!r}]={options[key]} of dataset 'fsdd' is not a whole number "
                f"of samples at {_SAMPLE_RATE_HZ} Hz (multiples of 0.125 ms are)"
            )


def _input_shape(options: Mapping[str, Any]) -> tuple[int, ...]:
    per_frame = options["n_mfcc"] if options["features"] == "mfcc" else options["n_mels"]
    frames = (options["frames"], per_frame)
    return (1, *frames) if options["layout"] == "image" else frames


def read_wav_pcm16(path: Path, data_dir: Path) -> np.ndarray:
    """Samples of an 8 kHz mono 16-bit PCM wav file, int16.

    Raises:
        DatasetCorruptError: Not a wav file, another sample format, or truncated.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            form = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
            compression = wav.getcomptype()
            n_frames = wav.getnframes()
            data = wav.readframes(n_frames)
    except (wave.Error, EOFError, struct.error) as exc:
        raise corrupt_file_error(_NAME, path, data_dir, f"bad wav header: {exc}") from exc
    if form != (1, _SAMPLE_BYTES, _SAMPLE_RATE_HZ) or compression != "NONE":
        channels, width, rate = form
        raise corrupt_file_error(
            _NAME, path, data_dir,
            f"{rate} Hz, {channels} channel(s), {8 * width}-bit {compression}; expected "
            f"{_SAMPLE_RATE_HZ} Hz mono 16-bit PCM",
        )  # fmt: skip
    if len(data) != n_frames * _SAMPLE_BYTES:
        raise corrupt_file_error(
            _NAME, path, data_dir,
            f"truncated: {len(data)} data bytes for {n_frames} samples",
        )  # fmt: skip
    return np.frombuffer(data, "<i2")


def _centre(samples: np.ndarray, out: np.ndarray) -> None:
    """Copy ``samples`` into the middle of ``out``, cropping both ends if too long."""
    n, clip = samples.shape[0], out.shape[0]
    if n >= clip:
        start = (n - clip) // 2
        out[:] = samples[start : start + clip]
    else:
        start = (clip - n) // 2
        out[start : start + n] = samples


def _list_recordings(folder: Path, data_dir: Path) -> list[tuple[Path, int, int]]:
    """``(path, digit, take)`` of every recording, sorted by file name."""
    if not folder.is_dir():
        raise missing_file_error(_NAME, folder, data_dir)
    recordings = []
    for path in sorted(folder.glob("*.wav")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise corrupt_file_error(
                _NAME, path, data_dir,
                "name is not {digit}_{speaker}_{index}.wav, so it has no label",
            )  # fmt: skip
        recordings.append((path, int(match["digit"]), int(match["take"])))
    if not recordings:
        raise DatasetNotFoundError(
            f"dataset {_NAME!r}: no .wav files in directory {folder}; "
            f"{how_to_obtain(_NAME, data_dir)}"
        )
    return recordings


def _load(data_dir: Path | None, options: Mapping[str, Any]) -> RawDataset:
    import torch

    from sparse_nas.datasets._audio_features import KwsFeatureConfig, log_mel_spectrogram, mfcc

    data_dir = require_data_dir(_NAME, data_dir)
    config = KwsFeatureConfig(
        sample_rate_hz=_SAMPLE_RATE_HZ,
        window_ms=options["window_ms"],
        hop_ms=options["hop_ms"],
        frames=options["frames"],
        n_mels=options["n_mels"],
        n_mfcc=options["n_mfcc"],
    )
    recordings = _list_recordings(data_dir / _NAME / "recordings", data_dir)
    clips = np.zeros((len(recordings), config.clip_samples), dtype=np.float32)
    for row, (path, _, _) in enumerate(recordings):
        _centre(read_wav_pcm16(path, data_dir), clips[row])
    clips /= _FULL_SCALE
    extract = mfcc if options["features"] == "mfcc" else log_mel_spectrogram
    features = extract(torch.from_numpy(clips), config).numpy()
    if options["layout"] == "image":
        features = features[:, np.newaxis]
    labels = np.array([digit for _, digit, _ in recordings], dtype=np.int64)
    is_test = np.array([take in _TEST_TAKES for _, _, take in recordings])
    return RawDataset(
        x_train=features[~is_test],
        y_train=labels[~is_test],
        x_test=features[is_test],
        y_test=labels[is_test],
        class_names=_CLASS_NAMES,
    )


register_dataset(
    DatasetInfo(
        name=_NAME,
        description="Free Spoken Digit Dataset: 3,000 spoken digits (8 kHz), 6 speakers, "
        "10 classes, 2,700 train / 300 test; as 49 x 10 MFCCs by default.",
        input_shape=(1, 49, 10),
        num_classes=len(_CLASS_NAMES),
        class_names=_CLASS_NAMES,
        needs_data_dir=True,
        expected_files=(f"{_NAME}/recordings/*.wav",),
        options=_OPTIONS,
        source="https://github.com/Jakobovski/free-spoken-digit-dataset (Jackson et al., v1.0.10)",
        license="CC BY-SA 4.0",
    ),
    _load,
    # Files at the commit of v1.0.10's recordings/ tree; the digest is that of the
    # sha256sum listing of all 3,000 files (shared/data/fsdd/SHA256SUMS).
    download=Sha256ListDownload(
        "https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/"
        "26eb9aaf76e81b692f806f9140c2d2777410d7a1/",
        target_dir=_NAME,
        paths=tuple(
            f"recordings/{digit}_{speaker}_{take}.wav"
            for digit in range(len(_CLASS_NAMES))
            for speaker in _SPEAKERS
            for take in range(_TAKES_PER_DIGIT)
        ),
        listing_sha256="04e1baae96c6a26e39c623f2b01d0182ddae627ba0ac02a3cdc17ba2af99fd9b",
    ),
    check_options=_check_options,
    input_shape=_input_shape,
)
