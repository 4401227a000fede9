"""The two-pass step: exact end-to-end gradients in memory bounded by one batch of regions."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from conftest import cmu_model, tiny_model

from xt_core import open_slide
from xt_core.models.xt import create_model
from xt_core.stream import iter_region_batches
from xt_core.tissue import tissue_mask
from xt_core.tokenize import make_region_grid
from xt_core.train.augment import AugmentConfig, augment_regions, region_seeds
from xt_core.train.streaming import (
    LossWeights,
    ReencodingError,
    SlideRegions,
    SlideTargets,
    TensorRegions,
    check_reencoded,
    encode_features,
    set_train_mode,
    slide_loss,
    train_step,
)

AUG = AugmentConfig()


@pytest.fixture(scope="module")
def cmu(cmu_svs):
    """CMU-1-Small-Region at 2 um/px: 18 tissue regions of 128 px, read once."""
    slide = open_slide(cmu_svs)
    grid = make_region_grid(slide, target_mpp=2.0, region_size=128, chunk_size=64, tissue=tissue_mask(slide))
    idx = grid.tissue_indices(0.05)
    batch = next(iter_region_batches(slide, grid, batch_size=len(idx), workers=0, indices=idx, as_tensor=True))
    yield slide, grid, idx, batch.images.contiguous(), batch.rows, batch.cols
    slide.close()


def _model(config: dict, seed: int = 0, dtype: torch.dtype = torch.float64):
    """A model with the ImageNet backbone, in train mode (BatchNorm frozen).

    Gradient comparisons run in float64, where the two computations agree to ~1e-12: in
    float32 the different summation order over region batches alone moves some BatchNorm
    gradients by ~1e-4 relative (see test_exact_step_in_float32).
    """
    torch.manual_seed(seed)
    model = create_model(config, region_weights="package").to(dtype)
    return set_train_mode(model, True)


def _first(cmu, n: int = 8):
    """The first ``n`` tissue regions: enough for the secondary checks, and quicker."""
    _, _, idx, images, rows, cols = cmu
    return idx[:n], images[:n], rows[:n], cols[:n]


def _targets(n_regions: int, tokens: int, seed: int = 0) -> SlideTargets:
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, 3, (n_regions * tokens, 1, 1), generator=g)
    seg[torch.rand(seg.shape, generator=g) < 0.3] = -100
    return SlideTargets(label=1, seg=seg)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict, ref: dict, rtol: float = 1e-4) -> float:
    """Per tensor ||got - ref|| <= rtol * ||ref||; returns the worst ratio.

    A tensor whose true gradient is zero (the attention pool's score bias: softmax ignores a
    shift) has only rounding noise, so its norm is floored at 1e-4 of the mean tensor norm.
    """
    assert got.keys() == ref.keys()
    floor = 1e-4 * float(np.mean([float(r.norm()) for r in ref.values()]))
    worst = 0.0
    for name, r in ref.items():
        ratio = float((got[name] - r).norm()) / max(float(r.norm()), floor)
        assert ratio <= rtol, f"{name}: relative difference {ratio:.2e}"
        worst = max(worst, ratio)
    return worst


def _full_backward(model, images, rows, cols, targets, weights=LossWeights()):
    """Reference: every region through the region encoder at once, one plain backward."""
    model.zero_grad(set_to_none=True)
    out = model(images, torch.as_tensor(rows), torch.as_tensor(cols))
    loss, _ = slide_loss(out, targets, weights)
    loss.backward()
    return float(loss.detach()), _grads(model)


@pytest.mark.parametrize("context, kwargs", [
    ("attention", {"depth": 1}),
    ("transformer_xl", {"depth": 2, "segment_len": 8, "mem_len": 8}),
    ("mamba", {"depth": 2, "segment_len": 8}),
    ("attention", {"depth": 1, "positions": "rope2d"}),
    ("transformer_xl", {"depth": 2, "segment_len": 8, "mem_len": 8, "positions": "rope2d"}),
])
def test_exact_step_equals_full_backward(cmu, context, kwargs) -> None:
    """The headline check: pixels read from the slide, augmented, streamed in batches of 4."""
    slide, grid, idx, images, rows, cols = cmu
    if context != "attention":  # the other encoders on the first 12 regions (quicker)
        idx, images, rows, cols = _first(cmu, 12)
    model = _model(cmu_model(context, **kwargs))
    targets = _targets(len(idx), model.tokens_per_region)
    seeds = region_seeds(7, 1, 0, idx)
    source = SlideRegions(slide, grid, idx, workers=2, seeds=seeds, augment=AUG)  # read from the slide again
    result = train_step(model, source, targets, mode="exact", batch_size=4)
    streamed = _grads(model)
    ref_loss, ref = _full_backward(model, augment_regions(images, seeds, AUG), rows, cols, targets)
    assert result.loss == pytest.approx(ref_loss, rel=1e-5)
    assert any(n.startswith("region_encoder.") for n in ref)  # the backbone really is trained
    _assert_same_grads(streamed, ref)


def test_exact_step_in_float32(cmu) -> None:
    """The everyday precision: equal up to float32 rounding of differently ordered sums."""
    idx, images, rows, cols = _first(cmu, 12)
    model = _model(cmu_model("transformer_xl", depth=1, segment_len=16), dtype=torch.float32)
    targets = _targets(len(idx), model.tokens_per_region, seed=4)
    train_step(model, TensorRegions(images, rows, cols), targets, mode="exact", batch_size=4)
    streamed = _grads(model)
    _, ref = _full_backward(model, images, rows, cols, targets)
    assert _assert_same_grads(streamed, ref, rtol=1e-3) < 1e-3


@pytest.mark.parametrize("positions", ["absolute", "rope2d"])
def test_xl_detached_equals_exact(cmu, positions) -> None:
    """Transformer-XL detaches its memory by design, so segment-wise context backward is exact too
    (with 2D RoPE, each segment's keys rotated by its memory's and its own grid places)."""
    idx, images, rows, cols = _first(cmu)
    model = _model(cmu_model("transformer_xl", depth=2, segment_len=12, mem_len=16, positions=positions))
    targets = _targets(len(idx), model.tokens_per_region, seed=1)
    source = TensorRegions(images, rows, cols, seeds=region_seeds(0, 0, 0, idx), augment=AUG)
    train_step(model, source, targets, mode="xl_detached", batch_size=5)
    detached = _grads(model)
    model.zero_grad(set_to_none=True)
    train_step(model, source, targets, mode="exact", batch_size=5)
    _assert_same_grads(detached, _grads(model))
    with pytest.raises(ValueError, match="transformer_xl"):
        train_step(_model(cmu_model("none")), source, targets, mode="xl_detached")


def test_stochastic_layers_are_replayed_exactly(cmu) -> None:
    """Drop-path in the backbone and dropout in the context: pass 2 replays pass 1's masks."""
    idx, images, rows, cols = _first(cmu)
    config = cmu_model("attention", depth=1, dropout=0.2)
    config["region_encoder_kwargs"] = {"drop_path_rate": 0.3}
    model = _model(config)
    targets = _targets(len(idx), model.tokens_per_region, seed=2)
    torch.manual_seed(123)
    train_step(model, TensorRegions(images, rows, cols), targets, mode="exact", batch_size=4)
    streamed = _grads(model)
    after_step = torch.get_rng_state()
    # reference: the same batches encoded in order with gradient (same random draws), one backward
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    tokens = torch.cat([model.encode_regions(images[i : i + 4]) for i in range(0, len(images), 4)])
    out = model.heads(model.contextualize(tokens, torch.as_tensor(rows), torch.as_tensor(cols)))
    slide_loss(out, targets, LossWeights())[0].backward()
    _assert_same_grads(streamed, _grads(model))
    assert torch.equal(after_step, torch.get_rng_state())  # pass 2 left the global RNG as pass 1 did
    # and the masks really are random: another seed gives other gradients
    model.zero_grad(set_to_none=True)
    torch.manual_seed(124)
    train_step(model, TensorRegions(images, rows, cols), targets, mode="exact", batch_size=4)
    assert not torch.allclose(_grads(model)["proj.weight"], streamed["proj.weight"])


class SavedTensorMeter:
    """Bytes of tensors autograd holds for backward, alive at once (peak), via saved-tensor hooks."""

    class _Box:
        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

    def __init__(self) -> None:
        self.alive = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.alive -= n

    def pack(self, t: torch.Tensor):
        n = t.numel() * t.element_size()
        self.alive += n
        self.peak = max(self.peak, self.alive)
        box = self._Box(t)
        weakref.finalize(box, self._free, n)
        return box

    def unpack(self, box):
        return box.t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def test_memory_does_not_grow_with_the_number_of_regions(lc25000) -> None:
    """Peak autograd memory of a step is one batch of regions, for 4 or 16 regions alike."""
    from PIL import Image

    files = sorted((lc25000 / "lung_aca").glob("*.jpeg"))[:16]
    tiles = np.stack([np.asarray(Image.open(f).convert("RGB").resize((128, 128))) for f in files])
    images = torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()
    model = _model(tiny_model("attention"), dtype=torch.float32)
    peaks = {}
    for n in (4, 16):
        rows, cols = np.divmod(np.arange(n), 8)
        for mode in ("exact", "plain"):
            model.zero_grad(set_to_none=True)
            with SavedTensorMeter() as meter:
                if mode == "exact":
                    train_step(model, TensorRegions(images[:n], rows, cols), SlideTargets(label=0), batch_size=4)
                else:
                    out = model(images[:n], torch.as_tensor(rows), torch.as_tensor(cols))
                    slide_loss(out, SlideTargets(label=0), LossWeights())[0].backward()
            peaks[mode, n] = meter.peak
    print({k: round(v / 2**20, 1) for k, v in peaks.items()}, "MiB")
    assert peaks["exact", 16] <= 1.1 * peaks["exact", 4]  # bounded: one batch of 4 regions
    assert peaks["plain", 16] >= 3 * peaks["plain", 4]  # a plain backward grows with the slide
    assert peaks["exact", 16] * 3 < peaks["plain", 16]


def test_frozen_step_trains_projection_context_and_heads(cmu) -> None:
    idx, images, rows, cols = _first(cmu)
    model = _model(cmu_model("attention", depth=1))
    for p in model.region_encoder.parameters():
        p.requires_grad_(False)
    targets = _targets(len(idx), model.tokens_per_region, seed=3)
    model.eval()  # features are computed in eval mode by the cache
    with torch.no_grad():
        features = encode_features(model, images)
    set_train_mode(model, True)
    result = train_step(model, None, targets, mode="frozen", features=features, rows=torch.as_tensor(rows),
                        cols=torch.as_tensor(cols))
    frozen = _grads(model)
    assert not any(n.startswith("region_encoder.") for n in frozen) and "proj.weight" in frozen
    ref_loss, ref = _full_backward(model, images, rows, cols, targets)
    assert result.loss == pytest.approx(ref_loss, rel=1e-5)
    _assert_same_grads(frozen, ref)


class UnseededJitter(TensorRegions):
    """A region source that forgets to seed its augmentation: every call jitters the pixels anew."""

    def batches(self, batch_size: int):
        rng = np.random.default_rng()  # unseeded: pass 1 and pass 2 see different pixels
        for start, images in super().batches(batch_size):
            noise = torch.from_numpy(rng.integers(-40, 41, images.shape)).to(torch.int16)
            yield start, (images.to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)


def test_pass_two_refuses_tokens_that_differ_from_pass_one(cmu) -> None:
    """An unseeded random source would give gradients tens of percent off, silently: the step
    raises instead, naming the source; the seeded path (augmented, dropout replayed) does not."""
    idx, images, rows, cols = _first(cmu)
    model = _model(cmu_model("attention", depth=1, dropout=0.2), dtype=torch.float32)
    targets = _targets(len(idx), model.tokens_per_region, seed=5)
    seeded = TensorRegions(images, rows, cols, seeds=region_seeds(0, 0, 0, idx), augment=AUG)
    train_step(model, seeded, targets, mode="exact", batch_size=4)  # no error
    model.zero_grad(set_to_none=True)
    with pytest.raises(ReencodingError, match=r"regions 0-3 of UnseededJitter\(8 regions\)"):
        train_step(model, UnseededJitter(images, rows, cols), targets, mode="exact", batch_size=4)


def test_reencoding_check_tolerates_rounding_only() -> None:
    tokens = torch.randn(4, 4, 8)
    check_reencoded("src", 0, tokens * (1 + 1e-5), tokens)  # rounding-level: accepted
    with pytest.raises(ReencodingError, match="regions 8-11 of 'src'"):
        check_reencoded("src", 8, tokens + 0.01 * tokens.abs().max(), tokens)
    with pytest.raises(ReencodingError):
        check_reencoded("src", 0, torch.full_like(tokens, float("nan")), tokens)
