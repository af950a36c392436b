"""Keyword-spotting features in torch: log-mel spectrograms and MFCCs.

The framing follows Hello Edge (Zhang et al., "Hello Edge: Keyword Spotting on
Microcontrollers", arXiv 1711.07128) and the MLPerf Tiny keyword-spotting benchmark
(Banbury et al., arXiv 2106.07597): 40 ms windows every 20 ms over a 1 s clip give 49
frames, of which 10 MFCCs each are kept (a 49 x 10 input). As in TensorFlow's
``audio_spectrogram`` op that they use, each 40 ms frame is Hann-windowed and
zero-padded to the next power of two for the FFT, and the mel filterbank spans
20 Hz to 4 kHz with 40 bands.

Mel scale: the HTK formula ``mel = 2595 * log10(1 + f / 700)`` (Young et al., The HTK
Book), with triangular filters of peak 1 (no area normalisation), evaluated at each
FFT bin's frequency. The log floor is ``1e-6`` (about -60 dB re. a full-scale
sinusoid's power), so digital silence does not produce ``-inf``. MFCCs are the
orthonormal DCT-II of the log-mel energies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LOG_FLOOR = 1e-6
_STFT_BATCH = 512  # waveforms per STFT call: bounds the complex spectrogram's memory


@dataclass(frozen=True)
class KwsFeatureConfig:
    """Framing and filterbank of keyword-spotting features.

    Attributes:
        sample_rate_hz: Sample rate of the waveforms.
        window_ms: Frame length.
        hop_ms: Frame step.
        frames: Number of frames; the clip is ``window_ms + (frames - 1) * hop_ms``
            long (1,000 ms for the defaults).
        n_mels: Mel bands.
        n_mfcc: MFCCs kept per frame (the first ones, including the 0th).
        f_min_hz: Lower edge of the lowest mel band.
        f_max_hz: Upper edge of the highest mel band.
    """

    sample_rate_hz: int = 8000
    window_ms: float = 40.0
    hop_ms: float = 20.0
    frames: int = 49
    n_mels: int = 40
    n_mfcc: int = 10
    f_min_hz: float = 20.0
    f_max_hz: float = 4000.0

    @property
    def window_samples(self) -> int:
        """Frame length in samples."""
        return round(self.window_ms * self.sample_rate_hz / 1000)

    @property
    def hop_samples(self) -> int:
        """Frame step in samples."""
        return round(self.hop_ms * self.sample_rate_hz / 1000)

    @property
    def clip_samples(self) -> int:
        """Samples in a clip that gives exactly :attr:`frames` frames."""
        return self.window_samples + (self.frames - 1) * self.hop_samples

    @property
    def n_fft(self) -> int:
        """FFT length: the next power of two of the window, as TensorFlow's op uses."""
        return 1 << (self.window_samples - 1).bit_length()


def hz_to_mel(f_hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + f_hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate_hz: int, f_min_hz: float, f_max_hz: float
) -> torch.Tensor:
    """Triangular mel filters on the HTK scale, peak 1.

    Band ``m`` rises from centre ``m - 1`` to centre ``m`` and falls to centre
    ``m + 1``, where the ``n_mels + 2`` centres are equally spaced in mel between
    ``f_min_hz`` and ``f_max_hz``.

    Returns:
        Weights ``(n_mels, n_fft // 2 + 1)``, float32.
    """
    bin_hz = torch.linspace(0.0, sample_rate_hz / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges_mel = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min_hz, dtype=torch.float64))),
        float(hz_to_mel(torch.tensor(f_max_hz, dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    edges_hz = mel_to_hz(edges_mel)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


def dct_ii_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II, first ``n_out`` rows: ``y = x @ D.T`` for ``x`` of ``n_in``.

    ``D[k, n] = s_k * cos(pi * (n + 0.5) * k / n_in)`` with ``s_0 = sqrt(1 / n_in)`` and
    ``s_k = sqrt(2 / n_in)`` otherwise (``scipy.fft.dct(type=2, norm="ortho")``).

    Returns:
        ``(n_out, n_in)``, float32.
    """
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi * (n + 0.5) * k / n_in) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.to(torch.float32)


def log_mel_spectrogram(waveforms: torch.Tensor, config: KwsFeatureConfig) -> torch.Tensor:
    """Log-mel energies of clips of exactly ``config.clip_samples`` samples.

    Args:
        waveforms: ``(N, config.clip_samples)`` float32, full scale = 1.0.
        config: Framing and filterbank.

    Returns:
        ``(N, config.frames, config.n_mels)`` float32.
    """
    if waveforms.ndim != 2 or waveforms.shape[1] != config.clip_samples:
        raise ValueError(
            f"waveforms must be (N, {config.clip_samples}), got {tuple(waveforms.shape)}"
        )
    n_fft, window = config.n_fft, config.window_samples
    # torch.stft centres a shorter window inside each n_fft frame; padding by that offset
    # on both sides makes frame i cover samples [i * hop, i * hop + window) exactly, the
    # window zero-padded to n_fft as in TensorFlow's audio_spectrogram.
    offset = (n_fft - window) // 2
    hann = torch.hann_window(window, periodic=True, dtype=torch.float32)
    filterbank = mel_filterbank(
        config.n_mels, n_fft, config.sample_rate_hz, config.f_min_hz, config.f_max_hz
    )
    outputs = []
    for batch in torch.split(waveforms, _STFT_BATCH):
        padded = F.pad(batch, (offset, n_fft - window - offset))
        spectrum = torch.stft(
            padded,
            n_fft=n_fft,
            hop_length=config.hop_samples,
            win_length=window,
            window=hann,
            center=False,
            return_complex=True,
        )
        power = spectrum.real.square() + spectrum.imag.square()  # (B, bins, frames)
        mel = torch.matmul(filterbank, power).transpose(1, 2)  # (B, frames, n_mels)
        outputs.append(torch.log(mel.clamp_min(_LOG_FLOOR)))
    return torch.cat(outputs) if outputs else waveforms.new_zeros(0, config.frames, config.n_mels)


def mfcc(waveforms: torch.Tensor, config: KwsFeatureConfig) -> torch.Tensor:
    """MFCCs: orthonormal DCT-II of :func:`log_mel_spectrogram`, first ``n_mfcc`` kept.

    Returns:
        ``(N, config.frames, config.n_mfcc)`` float32.
    """
    return log_mel_spectrogram(waveforms, config) @ dct_ii_matrix(config.n_mels, config.n_mfcc).T
