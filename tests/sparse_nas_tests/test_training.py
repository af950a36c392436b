"""Tests of sparse_nas.training: the trainer, its schedules, phases and augmentation."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from sparse_nas.training import (
    BaseTrainingPhase,
    EpochReport,
    GradualMagnitudePruningPhase,
    RandomShiftAugment,
    TrainConfig,
    TrainingConfigError,
    TrainResult,
    cubic_sparsity,
    learning_rate_at,
    train,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@dataclasses.dataclass(frozen=True)
class _Split:
    x: torch.Tensor
    y: torch.Tensor


@dataclasses.dataclass(frozen=True)
class _Splits:
    train: _Split
    val: _Split
    test: _Split


def _blobs(n_train: int = 384, n_classes: int = 4, n_features: int = 8, seed: int = 0) -> _Splits:
    """Gaussian blobs around well-separated class centres: a linearly separable problem."""
    gen = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(n_classes, n_features, generator=gen)

    def split(n: int) -> _Split:
        y = torch.randint(0, n_classes, (n,), generator=gen)
        return _Split(centres[y] + torch.randn(n, n_features, generator=gen), y)

    return _Splits(split(n_train), split(128), split(128))


def _mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 16), nn.ReLU(),
        nn.Linear(16, 4),
    )  # fmt: skip


def _noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + 0.1 * torch.randn(x.shape, generator=generator)


def _without_seconds(history: tuple[EpochReport, ...]) -> list[EpochReport]:
    return [dataclasses.replace(report, epoch_seconds=0.0) for report in history]


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- learning and the result ------------------------------------------------------------


def test_learns_a_separable_problem_well_above_chance() -> None:
    result = train(_mlp(), _blobs(), TrainConfig(epochs=5, batch_size=32, lr=1e-2))
    assert isinstance(result, TrainResult)
    assert result.val_accuracy > 0.9  # chance is 0.25
    assert result.aborted_reason is None and not result.diverged
    assert result.epochs_completed == 5 and len(result.history) == 5
    assert result.steps_completed == 5 * (384 // 32)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.train_seconds > 0


@pytest.mark.parametrize(
    ("memory_format", "precision"),
    [("contiguous", "fp32"), ("channels_last", "fp32"), ("channels_last", "bf16-mixed")],
)
def test_conv_net_learns_deterministically_in_every_format(memory_format: str, precision: str) -> None:
    blobs = _blobs(n_features=16)
    images = _Splits(*(_Split(s.x.view(-1, 1, 4, 4), s.y) for s in (blobs.train, blobs.val, blobs.test)))
    config = TrainConfig(
        epochs=3,
        batch_size=32,
        lr=1e-2,
        memory_format=memory_format,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
    )

    def run() -> TrainResult:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
            nn.Linear(128, 4),
        )  # fmt: skip
        return train(model, images, config)

    result = run()
    assert result.val_accuracy > 0.9
    assert all(t.dtype == torch.float32 for t in result.state_dict.values() if t.is_floating_point())
    _assert_same_state(result.state_dict, run().state_dict)


def test_model_is_left_holding_the_returned_state() -> None:
    model = _mlp()
    result = train(model, _blobs(), TrainConfig(epochs=2, batch_size=64))
    _assert_same_state(model.state_dict(), result.state_dict)
    assert not model.training


def test_test_accuracy_only_when_asked() -> None:
    splits = _blobs()
    config = TrainConfig(epochs=1, batch_size=64)
    assert train(_mlp(), splits, config).test_accuracy is None
    asked = train(_mlp(), splits, config, evaluate_test=True).test_accuracy
    assert asked is not None and 0.0 <= asked <= 1.0


def test_learns_sklearn_digits_through_the_datasets_package() -> None:
    datasets = pytest.importorskip("sparse_nas.datasets")
    splits = datasets.load_dataset(datasets.DatasetConfig(name="digits", seed=0, val_fraction=0.1))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    result = train(model, splits, TrainConfig(epochs=4, batch_size=32), evaluate_test=True)
    assert result.test_accuracy is not None and result.test_accuracy > 0.8


# --- determinism -------------------------------------------------------------------------

_DETERMINISM_CONFIG = TrainConfig(epochs=2, batch_size=32, lr=5e-3, seed=7, grad_clip_norm=1.0)


def _seeded_run(seed: int = 7) -> TrainResult:
    return train(
        _mlp(dropout=0.2),
        _blobs(),
        dataclasses.replace(_DETERMINISM_CONFIG, seed=seed),
        augment=_noise,
    )


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_same_seed_gives_identical_state_and_history() -> None:
    first, second = _seeded_run(), _seeded_run()
    _assert_same_state(first.state_dict, second.state_dict)
    assert _without_seconds(first.history) == _without_seconds(second.history)


def test_different_seed_gives_a_different_state() -> None:
    first, other = _seeded_run(7), _seeded_run(8)
    assert any(not torch.equal(first.state_dict[k], other.state_dict[k]) for k in first.state_dict)


def test_training_leaves_the_global_rng_untouched() -> None:
    model, splits = _mlp(dropout=0.2), _blobs()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, splits, _DETERMINISM_CONFIG, augment=_noise)
    assert torch.equal(torch.rand(3), expected)


def test_same_seed_is_identical_in_a_fresh_process() -> None:
    script = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(1)
        from tests.sparse_nas_tests import test_training as t
        print(t._state_digest(t._seeded_run().state_dict))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert completed.stdout.strip().splitlines()[-1] == _state_digest(_seeded_run().state_dict)


# --- early stops ---------------------------------------------------------------------------


class _Sabotaged(nn.Module):
    """An MLP whose logits turn NaN, or grow huge, from a given training forward on."""

    def __init__(self, bad_from_call: int, kind: str) -> None:
        super().__init__()
        self.net = _mlp()
        self.bad_from_call = bad_from_call
        self.kind = kind
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if not self.training:
            return logits
        self.calls += 1
        if self.calls <= self.bad_from_call:
            return logits
        return logits * float("nan") if self.kind == "nan" else logits * 1e4 - 1e4


def test_nan_loss_aborts_with_epoch_step_and_best_state() -> None:
    splits = _blobs()
    model = _Sabotaged(bad_from_call=12 + 7, kind="nan")  # 12 steps per epoch
    config = TrainConfig(epochs=4, batch_size=32, check_every_steps=5)
    result = train(model, splits, config)
    assert result.diverged
    assert result.aborted_reason is not None
    assert "loss became nan at epoch 2 of 4, step 19" in result.aborted_reason
    assert result.epochs_completed == 1
    # Windows of 5 steps restart each epoch: the NaN at step 19 is seen after step 21.
    assert result.steps_completed == 22
    assert all(torch.isfinite(t).all() for t in result.state_dict.values())
    assert result.val_accuracy == result.history[0].val_accuracy


def test_nan_in_the_first_epoch_returns_the_initial_state() -> None:
    model = _Sabotaged(bad_from_call=0, kind="nan")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, _blobs(), TrainConfig(epochs=2, batch_size=32))
    assert result.diverged and result.epochs_completed == 0
    assert "step 0" in (result.aborted_reason or "")
    _assert_same_state(result.state_dict, initial)


def test_divergent_loss_aborts_with_a_reason() -> None:
    model = _Sabotaged(bad_from_call=3, kind="huge")
    config = TrainConfig(epochs=2, batch_size=32, check_every_steps=4, divergence_loss_factor=5)
    result = train(model, _blobs(), config)
    assert result.diverged
    assert "loss diverged at epoch 1 of 2, steps 0-3" in (result.aborted_reason or "")
    assert "exceeds 5 x the first step's loss" in (result.aborted_reason or "")


def test_callback_returning_true_stops_training() -> None:
    seen: list[EpochReport] = []

    def stop_after_two(report: EpochReport) -> bool:
        seen.append(report)
        return report.epoch == 2

    result = train(_mlp(), _blobs(), TrainConfig(epochs=5, batch_size=64), on_epoch_end=stop_after_two)
    assert [r.epoch for r in seen] == [1, 2]
    assert result.epochs_completed == 2 and not result.diverged
    assert result.aborted_reason == "stopped by the on_epoch_end callback after epoch 2 of 5"
    assert result.val_accuracy == seen[-1].val_accuracy


# --- schedules -----------------------------------------------------------------------------


def _torch_schedule_lrs(make: type, n_steps: int, **kwargs: float) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make(optimizer, **kwargs)
    lrs = []
    for _ in range(n_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_onecycle_matches_pytorch_onecyclelr_at_every_step() -> None:
    total = 97
    config = TrainConfig(lr=0.1, schedule="onecycle")
    expected = _torch_schedule_lrs(
        torch.optim.lr_scheduler.OneCycleLR,
        total,
        max_lr=0.1,
        total_steps=total,
        cycle_momentum=False,
    )
    ours = [learning_rate_at(config, step, total) for step in range(total)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ours[0] == pytest.approx(0.1 / 25)
    assert max(ours) == pytest.approx(0.1, rel=1e-3)


def test_cosine_matches_pytorch_cosine_annealing_without_warmup() -> None:
    total = 50
    config = TrainConfig(lr=0.1, schedule="cosine")
    expected = _torch_schedule_lrs(torch.optim.lr_scheduler.CosineAnnealingLR, total, T_max=total)
    ours = [learning_rate_at(config, step, total) for step in range(total)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert learning_rate_at(config, 25, total) == pytest.approx(0.05)


def test_cosine_warmup_rises_linearly_then_decays_to_the_final_fraction() -> None:
    config = TrainConfig(lr=1.0, warmup_fraction=0.1, start_lr_fraction=0.1, final_lr_fraction=0.2)
    total = 100
    assert learning_rate_at(config, 0, total) == pytest.approx(0.1)
    assert learning_rate_at(config, 5, total) == pytest.approx(0.55)
    assert learning_rate_at(config, 10, total) == pytest.approx(1.0)
    assert learning_rate_at(config, 55, total) == pytest.approx(0.2 + 0.8 * 0.5)
    with pytest.raises(TrainingConfigError):
        learning_rate_at(config, total, total)


def test_trainer_applies_the_schedule() -> None:
    config = TrainConfig(epochs=3, batch_size=32, lr=1e-2, schedule="onecycle")
    steps_per_epoch = 384 // 32
    result = train(_mlp(), _blobs(), config)
    for report in result.history:
        last_step = report.epoch * steps_per_epoch - 1
        assert report.lr == learning_rate_at(config, last_step, 3 * steps_per_epoch)


# --- label smoothing and augmentation ------------------------------------------------------


def test_label_smoothing_changes_the_loss() -> None:
    config = TrainConfig(epochs=4, batch_size=32, lr=1e-2)
    plain = train(_mlp(), _blobs(), config)
    smoothed = train(_mlp(), _blobs(), dataclasses.replace(config, label_smoothing=0.3))
    # Smoothed targets keep a floor under the loss, far above a confident fit's.
    assert smoothed.history[-1].train_loss > plain.history[-1].train_loss + 0.1


def test_augmentation_hook_sees_every_training_batch() -> None:
    calls: list[tuple[int, ...]] = []

    def record(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        assert isinstance(generator, torch.Generator)
        calls.append(tuple(x.shape))
        return x

    result = train(_mlp(), _blobs(), TrainConfig(epochs=2, batch_size=32), augment=record)
    assert len(calls) == result.steps_completed == 24
    assert set(calls) == {(32, 8)}


def test_random_shift_moves_each_image_by_at_most_the_shift() -> None:
    images = torch.zeros(64, 1, 9, 9)
    images[:, 0, 4, 4] = 1.0
    shifted = RandomShiftAugment(2)(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    positions = {(int(r), int(c)) for _, _, r, c in shifted.nonzero().tolist()}
    assert all(abs(r - 4) <= 2 and abs(c - 4) <= 2 for r, c in positions)
    assert len(positions) > 5  # per-sample offsets, not one offset for the batch
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(64))


# --- pruning phase -------------------------------------------------------------------------


def _zhu_gupta(t: int, s_i: float, s_f: float, t0: int, n_dt: int) -> float:
    """Zhu & Gupta 2017, eq. 1, written independently of the implementation."""
    t = min(max(t, t0), t0 + n_dt)
    return s_f + (s_i - s_f) * (1 - (t - t0) / n_dt) ** 3


def test_cubic_sparsity_follows_zhu_and_gupta() -> None:
    for t in (0, 10, 13, 40, 70, 99):
        expected = _zhu_gupta(t, 0.1, 0.9, 10, 60)
        got = cubic_sparsity(t, initial_sparsity=0.1, final_sparsity=0.9, begin_step=10, end_step=70)
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_density_follows_the_cubic_schedule_step_by_step(scope: str) -> None:
    model = _mlp()
    phase = GradualMagnitudePruningPhase(0.8, start_fraction=0.1, end_fraction=0.6, update_every_steps=5, scope=scope)
    phase.on_train_start(model, total_steps=100)  # t0 = 10, n * dt = 50
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    density_after: dict[int, float] = {}
    with torch.no_grad():
        for step in range(100):
            phase.on_step_end(step)
            density_after[step + 1] = phase.density()
    for steps_done in (10, 15, 25, 40, 60, 100):
        target = _zhu_gupta(steps_done, 0.0, 0.8, 10, 50)
        if scope == "global":
            expected = 1 - round(target * n_weights) / n_weights
            assert density_after[steps_done] == pytest.approx(expected, abs=1e-12)
        else:
            assert density_after[steps_done] == pytest.approx(1 - target, abs=0.02)
    assert density_after[17] == density_after[15]  # masks change every dt steps only
    assert density_after[5] == 1.0
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))
    assert zeros == round(0.8 * n_weights)
    if scope == "layer":
        assert all(d == pytest.approx(0.2, abs=0.02) for d in phase.layer_densities().values())


def test_pruning_phase_in_training_leaves_zeros_in_the_trained_state() -> None:
    phase = GradualMagnitudePruningPhase(0.75, end_fraction=0.5, update_every_steps=2)
    result = train(_mlp(), _blobs(), TrainConfig(epochs=4, batch_size=32, lr=1e-2), phases=[phase])
    weights = [v for k, v in result.state_dict.items() if k.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros == round(0.75 * total)
    assert result.phase_metrics["GradualMagnitudePruningPhase.density"] == pytest.approx(0.25, abs=1e-3)
    assert result.history[0].phase_metrics["GradualMagnitudePruningPhase.density"] < 1.0
    assert result.val_accuracy > 0.9


def test_phase_hooks_run_in_the_documented_order() -> None:
    class Recorder(BaseTrainingPhase):
        def __init__(self) -> None:
            self.events: list[str] = []

        def wrap_model(self, model: nn.Module) -> nn.Module:
            self.events.append("wrap")
            return model

        def on_train_start(self, model: nn.Module, total_steps: int) -> None:
            self.events.append(f"start {total_steps}")

        def on_epoch_start(self, epoch: int) -> None:
            self.events.append(f"epoch {epoch}")

        def on_step_end(self, step: int) -> None:
            assert not torch.is_grad_enabled()
            self.events.append(f"step {step}")

        def on_train_end(self) -> None:
            self.events.append("end")

    recorder = Recorder()
    train(_mlp(), _blobs(n_train=64), TrainConfig(epochs=2, batch_size=32), phases=[recorder])
    assert recorder.events == [
        "wrap", "start 4", "epoch 0", "step 0", "step 1", "epoch 1", "step 2", "step 3", "end",
    ]  # fmt: skip


def test_pruning_phase_pickles_before_training() -> None:
    phase = GradualMagnitudePruningPhase(0.5, scope="layer")
    clone = pickle.loads(pickle.dumps(phase))
    assert clone.final_sparsity == 0.5 and clone.scope == "layer"


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("lr", math.nan), ("schedule", "step"), ("label_smoothing", 1.0)],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(TrainingConfigError, match=f"TrainConfig.{field}") as info:
        TrainConfig(**{field: value})
    assert isinstance(info.value, ValueError)


def test_bad_pruning_phase_and_too_few_samples_are_rejected() -> None:
    with pytest.raises(TrainingConfigError, match="final_sparsity"):
        GradualMagnitudePruningPhase(1.0)
    with pytest.raises(TrainingConfigError, match="fewer than batch_size=512"):
        train(_mlp(), _blobs(), TrainConfig(batch_size=512))
    with pytest.raises(TrainingConfigError, match="no weights to prune"):
        train(
            nn.BatchNorm1d(8),
            _blobs(),
            TrainConfig(batch_size=32),
            phases=[GradualMagnitudePruningPhase(0.5)],
        )
    with pytest.raises(TrainingConfigError, match="no trainable parameters"):
        train(nn.Identity(), _blobs(), TrainConfig(batch_size=32))


def test_layerwise_pruning_schedule_drives_each_layer_to_its_own_target():
    from search_spaces.compression import make_linear
    from sparse_nas.datasets import DatasetConfig, load_dataset
    from sparse_nas.training import LayerwisePruningSchedulePhase, TrainConfig, train

    torch.manual_seed(0)
    splits = load_dataset(DatasetConfig("digits", seed=0))
    model = nn.Sequential(
        nn.Flatten(),
        make_linear("magnitude_pruning", 64, 32, density=0.2),
        nn.ReLU(),
        make_linear("doped_kronecker", 32, 10, doping_density=0.1),
    )
    phase = LayerwisePruningSchedulePhase(start_fraction=0.0, end_fraction=0.5, update_every_steps=5)
    result = train(model, splits, TrainConfig(epochs=4, batch_size=64, lr=5e-3, seed=0), phases=[phase])
    assert result.aborted_reason is None
    pruned, doped = model[1], model[3]
    assert pruned.density == pytest.approx(0.2, abs=1 / pruned.mask.numel())
    assert doped.density == pytest.approx(0.1, abs=1 / doped.mask.numel())
    # Mid-schedule the cubic formula holds: half-way, density = t + (1 - t) (1 - 1/2)^3.
    half = (phase.begin_step + phase.end_step) // 2
    frac = 1 - (half - phase.begin_step) / (phase.end_step - phase.begin_step)
    assert phase.density_at(pruned, half) == pytest.approx(0.2 + 0.8 * frac**3)
    assert result.val_accuracy > 0.5


def test_layerwise_pruning_schedule_takes_a_doped_kronecker_layer_to_no_doping() -> None:
    # Found by bench/search_quality.py: ds_cnn points with doping_density 0 failed to train.
    from search_spaces.compression import make_linear
    from sparse_nas.datasets import DatasetConfig, load_dataset
    from sparse_nas.training import LayerwisePruningSchedulePhase, TrainConfig, train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), make_linear("doped_kronecker", 64, 10, doping_density=0.0))
    splits = load_dataset(DatasetConfig("digits", seed=0))
    result = train(model, splits, TrainConfig(epochs=1, batch_size=64), phases=[LayerwisePruningSchedulePhase()])
    assert result.aborted_reason is None
    assert model[1].density == 0.0 and not model[1].sparse_overlay().any()
