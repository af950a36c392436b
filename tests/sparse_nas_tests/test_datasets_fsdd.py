"""FSDD from synthetic wav files named like FSDD, and the KWS feature extraction."""

from __future__ import annotations

import math
import re
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch

from sparse_nas.datasets import (
    DatasetConfig,
    DatasetCorruptError,
    DatasetNotFoundError,
    load_dataset,
)
from sparse_nas.datasets._audio_features import (
    KwsFeatureConfig,
    dct_ii_matrix,
    hz_to_mel,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    mfcc,
)

SAMPLE_RATE_HZ = 8000
DIGITS = (0, 1, 2)
SPEAKERS = ("alice", "bob")
TAKES = range(7)  # takes 0-4 are the official test set, 5-6 train


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone_hz(digit: int) -> float:
    return 400.0 + 800.0 * digit


def write_wav(
    path: Path,
    samples: np.ndarray,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    channels: int = 1,
    width_bytes: int = 2,
) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width_bytes)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(samples.tobytes())


def tone(frequency_hz: float, duration_s: float) -> np.ndarray:
    t = np.arange(round(duration_s * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return (0.5 * 32767 * np.sin(2 * np.pi * frequency_hz * t)).astype("<i2")


def write_fsdd(data_dir: Path) -> Path:
    """Sine tones, one frequency per digit; lengths 0.3-1.5 s so both pad and crop occur."""
    folder = data_dir / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for digit in DIGITS:
        for s, speaker in enumerate(SPEAKERS):
            for take in TAKES:
                duration_s = 0.3 + 0.2 * ((take + s) % 7)
                write_wav(folder / f"{digit}_{speaker}_{take}.wav", tone(tone_hz(digit), duration_s))
    return folder


def test_loads_wavs_with_the_official_split(tmp_path: Path) -> None:
    write_fsdd(tmp_path)
    splits = load_dataset(DatasetConfig("fsdd", val_fraction=0.25), tmp_path)
    n_train = len(DIGITS) * len(SPEAKERS) * 2
    assert len(splits.train) + len(splits.val) == n_train
    assert len(splits.val) == 3
    assert len(splits.test) == len(DIGITS) * len(SPEAKERS) * 5
    assert splits.input_shape == (1, 49, 10)
    assert splits.train.x.shape[1:] == (1, 49, 10)
    assert splits.class_names[:3] == ("zero", "one", "two")
    assert splits.num_classes == 10
    assert sorted(splits.test.y.tolist()) == sorted([d for d in DIGITS for _ in range(10)])
    norm = splits.normalization
    assert norm.dim == -3 and len(norm.mean) == 1 and norm.scale == 1.0
    assert torch.isfinite(splits.test.x).all()


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({"layout": "sequence"}, (49, 10)),
        ({"features": "logmel"}, (1, 49, 40)),
        ({"features": "logmel", "n_mels": 32, "layout": "sequence"}, (49, 32)),
        ({"n_mfcc": 13}, (1, 49, 13)),
        ({"frames": 24, "window_ms": 30, "hop_ms": 10}, (1, 24, 10)),
    ],
)
def test_feature_options_set_the_shape(tmp_path: Path, options: dict, shape: tuple) -> None:
    write_fsdd(tmp_path)
    splits = load_dataset(DatasetConfig("fsdd", options=options), tmp_path)
    assert splits.input_shape == shape
    assert splits.test.x.shape[1:] == shape
    if options.get("layout") == "sequence":
        assert splits.normalization.dim == -1 and len(splits.normalization.mean) == shape[-1]


def test_logmel_features_follow_the_tone_of_each_class(tmp_path: Path) -> None:
    write_fsdd(tmp_path)
    options = {"features": "logmel", "layout": "sequence"}
    splits = load_dataset(DatasetConfig("fsdd", options=options), tmp_path)
    norm = splits.normalization
    raw = splits.test.x * torch.tensor(norm.std) + torch.tensor(norm.mean)
    peak_band = raw[:, 24, :].argmax(dim=1)  # the middle frame always holds the tone
    centres_hz = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(20.0)),
                                          hz_to_mel(torch.tensor(4000.0)), 42))[1:-1]  # fmt: skip
    for band, digit in zip(peak_band.tolist(), splits.test.y.tolist(), strict=True):
        nearest = int((centres_hz - tone_hz(digit)).abs().argmin())
        assert abs(band - nearest) <= 1


def test_missing_recordings_folder_names_it_and_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset(DatasetConfig("fsdd"), tmp_path)
    message = str(caught.value)
    assert "'recordings'" in message and str(tmp_path / "fsdd") in message
    assert "sparse-nas datasets download fsdd" in message


def test_empty_recordings_folder_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "fsdd" / "recordings").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=re.escape("no .wav files")):
        load_dataset(DatasetConfig("fsdd"), tmp_path)


@pytest.mark.parametrize(
    ("writer", "problem"),
    [
        (lambda p: write_wav(p, tone(440, 0.5), sample_rate_hz=16000), "16000 Hz"),
        (lambda p: write_wav(p, np.repeat(tone(440, 0.5), 2), channels=2), "2 channel"),
        (lambda p: write_wav(p, tone(440, 0.5).view(np.uint8)[::2], width_bytes=1), "8-bit"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00JUNKJUNK"), "bad wav header"),
        (lambda p: p.write_bytes(b""), "bad wav header"),
    ],
    ids=["16kHz", "stereo", "8bit", "not-riff", "empty"],
)
def test_bad_wavs_are_corrupt_and_named(tmp_path: Path, writer, problem: str) -> None:
    folder = write_fsdd(tmp_path)
    writer(folder / "1_bob_3.wav")
    with pytest.raises(DatasetCorruptError) as caught:
        load_dataset(DatasetConfig("fsdd"), tmp_path)
    message = str(caught.value)
    assert "'1_bob_3.wav'" in message and str(folder) in message and problem in message


def test_truncated_wav_is_corrupt(tmp_path: Path) -> None:
    folder = write_fsdd(tmp_path)
    path = folder / "2_alice_0.wav"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetCorruptError, match=re.escape("2_alice_0.wav")):
        load_dataset(DatasetConfig("fsdd"), tmp_path)


def test_unlabelled_file_name_is_corrupt(tmp_path: Path) -> None:
    folder = write_fsdd(tmp_path)
    write_wav(folder / "hello.wav", tone(440, 0.5))
    with pytest.raises(DatasetCorruptError, match=r"'hello\.wav'.*no label"):
        load_dataset(DatasetConfig("fsdd"), tmp_path)


# --- feature extraction oracles -------------------------------------------------------


def test_default_framing_is_hello_edge() -> None:
    config = KwsFeatureConfig()
    assert (config.window_samples, config.hop_samples) == (320, 160)
    assert config.clip_samples == SAMPLE_RATE_HZ, "49 frames of 40 ms every 20 ms = 1 s"
    assert config.n_fft == 512


def test_htk_mel_scale() -> None:
    # The HTK mel scale puts 1000 Hz at (almost exactly) 1000 mel.
    assert float(hz_to_mel(torch.tensor(1000.0))) == pytest.approx(1000.0, abs=0.05)
    f_hz = torch.tensor([0.0, 20.0, 700.0, 4000.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(f_hz)), f_hz)


def test_mel_filterbank_triangles() -> None:
    bank = mel_filterbank(40, 512, SAMPLE_RATE_HZ, 20.0, 4000.0)
    assert bank.shape == (40, 257)
    assert torch.all(bank >= 0) and torch.all(bank <= 1)
    assert torch.all(bank.sum(dim=1) > 0), "no empty band"
    # Neighbouring triangles cross-fade: between the first and last centre they sum to 1.
    bin_hz = torch.linspace(0, 4000, 257)
    edges_hz = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(20.0)),
                                        hz_to_mel(torch.tensor(4000.0)), 42))  # fmt: skip
    inside = (bin_hz >= edges_hz[1]) & (bin_hz <= edges_hz[-2])
    assert torch.allclose(bank.sum(dim=0)[inside], torch.ones(int(inside.sum())), atol=1e-5)


def test_dct_matches_scipy_orthonormal_dct_ii() -> None:
    x = np.random.default_rng(0).normal(size=(5, 40))
    expected = scipy.fft.dct(x, type=2, norm="ortho", axis=-1)[:, :10]
    got = torch.from_numpy(x).float() @ dct_ii_matrix(40, 10).T
    assert np.allclose(got.numpy(), expected, atol=1e-5)
    full = dct_ii_matrix(16, 16)
    assert torch.allclose(full @ full.T, torch.eye(16), atol=1e-6)


def test_log_mel_matches_a_numpy_reference_framing() -> None:
    """Frame i = samples [160 i, 160 i + 320), Hann-windowed, zero-padded to 512 (TF)."""
    config = KwsFeatureConfig()
    waveform = np.random.default_rng(1).normal(scale=0.1, size=(2, 8000)).astype(np.float32)
    n = np.arange(320)
    hann = 0.5 - 0.5 * np.cos(2 * math.pi * n / 320)  # periodic Hann
    bank = mel_filterbank(40, 512, SAMPLE_RATE_HZ, 20.0, 4000.0).double().numpy()
    frames = np.stack([waveform[:, 160 * i : 160 * i + 320] * hann for i in range(49)], axis=1)
    power = np.abs(np.fft.rfft(frames, n=512, axis=-1)) ** 2
    expected = np.log(np.maximum(power @ bank.T, 1e-6))
    got = log_mel_spectrogram(torch.from_numpy(waveform), config).double().numpy()
    assert got.shape == (2, 49, 40)
    assert np.allclose(got, expected, atol=1e-3)
    coefficients = mfcc(torch.from_numpy(waveform), config).double().numpy()
    reference = scipy.fft.dct(expected, type=2, norm="ortho", axis=-1)[..., :10]
    assert np.allclose(coefficients, reference, atol=2e-3)


def test_log_mel_rejects_wrong_clip_length() -> None:
    with pytest.raises(ValueError, match=r"\(N, 8000\)"):
        log_mel_spectrogram(torch.zeros(1, 7999), KwsFeatureConfig())


def test_recordings_are_centred_in_the_clip() -> None:
    from sparse_nas.datasets._fsdd import _centre

    padded = np.zeros(6, dtype=np.float32)
    _centre(np.array([1, 2, 3], dtype=np.int16), padded)
    assert padded.tolist() == [0, 1, 2, 3, 0, 0]
    cropped = np.zeros(3, dtype=np.float32)
    _centre(np.arange(8, dtype=np.int16), cropped)
    assert cropped.tolist() == [2, 3, 4]
