"""2D relative positions (``positions: rope2d``) and the position options of the model.

What a plausible bug would break: a rotation that leaks absolute places (scores or outputs
change when the whole slide shifts), memory keys rotated with the wrong tokens' places
(Transformer-XL streaming no longer equals one pass), coordinates ignored (outputs do not
change when the 2D arrangement does), recomputation that drops the tables (gradients off),
and existing checkpoints that change (new modules or outputs with the default option).
"""

from __future__ import annotations

import pytest
import torch

from xt_core.models.context import create_context_encoder
from xt_core.models.context.mamba import column_major_order
from xt_core.models.context.rope import apply_rotary, default_coords, rotary_tables
from xt_core.models.xt import create_model

DIM = 32  # 2 heads of 16: 4 channel pairs per axis


def grid_coords(length: int, width: int = 5, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Raster coordinates of ``length`` tokens on a grid ``width`` wide, shifted by ``origin``."""
    index = torch.arange(length)
    return torch.stack([index // width + origin[0], index % width + origin[1]], dim=1)


def tokens(length: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(1, length, DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


ENCODERS = {
    "attention": dict(depth=2, heads=2, dropout=0.1),
    "hyper": dict(depth=2, heads=2, dropout=0.1),  # exact below 4096 keys
    "hyper_blocks": dict(depth=2, heads=2, exact_below=0, block_size=64, sample_size=4),  # one block covers
    "transformer_xl": dict(depth=2, heads=2, segment_len=8, mem_len=8, dropout=0.1),
    "transformer_xl_causal": dict(depth=2, heads=2, segment_len=8, mem_len=6, causal=True),
}


def make(name: str, **extra):
    torch.manual_seed(0)
    kwargs = {**ENCODERS[name], "positions": "rope2d", **extra}
    encoder_name = name.replace("_blocks", "").replace("_causal", "")
    return create_context_encoder(encoder_name, dim=DIM, **kwargs).double().eval()


def test_rotated_scores_depend_only_on_the_2d_offset() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 20, 16, generator=g, dtype=torch.float64).unbind(0)
    coords = torch.randint(-50, 50, (20, 2), generator=g)
    here = rotary_tables(coords, 16, dtype=torch.float64)
    scores = apply_rotary(q, here) @ apply_rotary(k, here).T
    for shift in ((3, 0), (0, -7), (1000, 2500)):
        moved = rotary_tables(coords + torch.tensor(shift), 16, dtype=torch.float64)
        assert torch.allclose(apply_rotary(q, moved) @ apply_rotary(k, moved).T, scores, atol=1e-10)
    # a token's own score is unrotated, and rows and columns are told apart
    assert torch.allclose(scores.diagonal(), (q * k).sum(-1), atol=1e-12)
    row_step = rotary_tables(torch.tensor([[0, 0], [1, 0]]), 16, dtype=torch.float64)
    col_step = rotary_tables(torch.tensor([[0, 0], [0, 1]]), 16, dtype=torch.float64)
    x = torch.randn(1, 16, generator=g, dtype=torch.float64)
    assert not torch.allclose(apply_rotary(x, row_step.window(1, 2)), apply_rotary(x, col_step.window(1, 2)))


def test_rotation_needs_a_head_width_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        rotary_tables(torch.zeros(3, 2), 6)
    with pytest.raises(ValueError, match="divisible by 4"):
        create_context_encoder("attention", dim=24, heads=4, positions="rope2d")  # heads of 6


@pytest.mark.parametrize("name", list(ENCODERS))
def test_shifting_every_coordinate_leaves_the_outputs_equal(name: str) -> None:
    model = make(name)
    x = tokens(29)
    with torch.no_grad():
        out = model(x, grid_coords(29))
        for origin in ((4, 0), (0, 9), (-3, 250)):
            assert (model(x, grid_coords(29, origin=origin)) - out).abs().max() < 1e-6
        # ...while a different 2D arrangement of the same sequence changes them
        assert (model(x, grid_coords(29, width=7)) - out).abs().max() > 1e-4


def test_hyper_lsh_hashes_rotated_vectors() -> None:
    """In the approximate regime the buckets are computed from rotated queries and keys, so
    the approximation (not the attention it estimates) depends on absolute places."""
    model = make("hyper", exact_below=0, block_size=8, sample_size=4)
    x = tokens(40)
    with torch.no_grad():
        near = model(x, grid_coords(40))
        far = model(x, grid_coords(40, origin=(31, 17)))
        exact = make("hyper")(x, grid_coords(40))
    assert torch.isfinite(near).all() and torch.isfinite(far).all()
    assert (near - far).abs().max() > 0  # the buckets moved
    assert (near - exact).norm() < (near.norm())  # and both are approximations of one thing


def test_hyper_equals_attention_with_rope_when_blocks_cover_the_sequence() -> None:
    x = tokens(23)
    coords = grid_coords(23, width=4, origin=(10, 3))
    attention = make("attention")
    hyper = make("hyper_blocks")
    hyper.load_state_dict(attention.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.allclose(hyper(x, coords), attention(x, coords), atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_xl_streaming_with_rope_equals_one_pass(causal: bool) -> None:
    model = make("transformer_xl_causal" if causal else "transformer_xl")
    x = tokens(21)
    coords = grid_coords(21, width=6, origin=(2, 5))
    with torch.no_grad():
        whole = model(x, coords)
        # segment by segment, keys = the memory's tokens (those just before) then the segment's
        memory, parts = model.init_memory(1, x.device, x.dtype), []
        for start in range(0, 21, 8):
            held = memory[0].shape[1]
            out, memory = model.forward_segment(x[:, start : start + 8], memory, coords[start - held : start + 8])
            parts.append(out)
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-10)


def test_transformer_xl_rope_drops_the_1d_relative_term() -> None:
    names = set(make("transformer_xl").state_dict())
    assert not any(n.endswith((".r.weight", ".r_r_bias")) for n in names)
    assert any(n.endswith(".r_w_bias") for n in names)
    assert any(n.endswith(".r.weight") for n in create_context_encoder("transformer_xl", dim=DIM).state_dict())


@pytest.mark.parametrize("name", list(ENCODERS))
def test_recomputed_gradient_with_rope_equals_plain_backward(name: str) -> None:
    x0 = tokens(37)
    coords = grid_coords(37, width=6, origin=(3, 1))
    grads = []
    for recompute in (False, True):
        model = make(name, recompute=recompute).train()
        x = x0.clone().requires_grad_()
        torch.manual_seed(7)  # dropout
        out = model(x, coords)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append({"tokens": x.grad, **{n: p.grad for n, p in model.named_parameters()}})
    plain, recomputed = grads
    for key in plain:
        assert plain[key] is not None, key
        assert (recomputed[key] - plain[key]).norm() <= 1e-6 * plain[key].norm(), key


def test_mamba_alternating_scan_reads_columns_in_every_other_pair_of_layers() -> None:
    coords = grid_coords(12, width=4)
    order = column_major_order(coords)
    assert order.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    torch.manual_seed(0)
    raster = create_context_encoder("mamba", dim=DIM, depth=4, d_state=4, positions="normed").double().eval()
    torch.manual_seed(0)
    alternate = create_context_encoder("mamba", dim=DIM, depth=4, d_state=4, scan="alternate").double().eval()
    x = tokens(12)
    with torch.no_grad():
        assert torch.allclose(raster(x), alternate(x), atol=1e-12)  # no coords: the raster order
        assert (raster(x, coords) - alternate(x, coords)).abs().max() > 1e-4
        segmented = create_context_encoder("mamba", dim=DIM, depth=4, d_state=4, scan="alternate", segment_len=5)
        segmented.load_state_dict(alternate.state_dict())
        assert torch.allclose(segmented.double().eval()(x, coords), alternate(x, coords), atol=1e-10)
    with pytest.raises(ValueError, match="positions"):
        create_context_encoder("mamba", dim=DIM, positions="rope2d")


def test_default_coordinates_are_one_row() -> None:
    assert default_coords(3).tolist() == [[0, 0], [0, 1], [0, 2]]
    model = make("attention")
    x = tokens(6)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x, default_coords(6)), atol=1e-12)


# ----------------------------------------------------------------------------- the model
def _config(positions: str | None, context: str = "attention") -> dict:
    kwargs = {"depth": 1, "heads": 2}
    if positions is not None:
        kwargs["positions"] = positions
    return dict(classes=["a", "b"], region_encoder="efficientnet_lite0", region_size=64, chunk_size=64,
                target_mpp=None, token_pool=2, context_encoder=context, context_dim=DIM, context_kwargs=kwargs)


def test_default_option_keeps_the_model_as_it_was() -> None:
    """No new module or parameter unless a config asks for one, and the same sum as before."""
    model = create_model(_config(None))
    assert model.position_mode == "absolute" and model.token_norm is None
    assert not any(n.startswith("token_norm") for n in model.state_dict())
    seq = torch.randn(1, 8, DIM)
    coords = model.token_coords(torch.tensor([0, 3]), torch.tensor([1, 1]))
    expected = seq + model.positions(torch.tensor([0, 3]), torch.tensor([1, 1]))[None]
    assert torch.equal(model.context_input(seq, coords), expected)
    assert "token_norm.weight" in create_model(_config("normed")).state_dict()


def test_rope_model_is_invariant_to_where_the_tissue_lies() -> None:
    torch.manual_seed(0)
    model = create_model(_config("rope2d")).double().eval()
    tokens_ = torch.randn(6, model.tokens_per_region, DIM, dtype=torch.float64)
    rows, cols = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        here = model.heads(model.contextualize(tokens_, rows, cols))["logits"]
        there = model.heads(model.contextualize(tokens_, rows + 17, cols + 40))["logits"]
        other = model.heads(model.contextualize(tokens_, torch.tensor([0, 0, 0, 0, 0, 0]), torch.arange(6)))["logits"]
    assert (here - there).abs().max() < 1e-10
    assert (here - other).abs().max() > 1e-6
