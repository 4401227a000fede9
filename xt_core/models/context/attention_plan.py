"""Global attention (``attention``, ``hyper``) in training as one autograd node.

Checkpointing each layer keeps every layer's input and, in backward, one layer's activations
over the whole sequence: the queries, keys, values, the attention output, the MLP's hidden units
(about 15 sequence-sized tensors at once). This plan (a :class:`~recompute.SequencePlan`, see
:mod:`recompute`) splits each block into its token-wise parts and its attention core, and runs
every part in chunks:

- **forward** (no autograd) overwrites one copy of the tokens layer by layer: the attention
  output ``A`` chunk of queries by chunk (a chunk's queries computed from its tokens' rows),
  then the output projection and the MLP chunk of tokens by chunk, in place. It keeps only the
  tokens.
- **backward**, layer by layer from the top: the layer's input is rebuilt from the tokens (the
  layers below run again, no autograd: ``depth (depth - 1) / 2`` layer passes). Exact attention
  then runs each chunk of queries whole with autograd (its queries from its tokens, attention
  against leaf keys and values of all tokens, the projection and MLP, and the final norm with
  the top layer), sums the keys' and values' gradients over the chunks and takes them back to
  the tokens chunk by chunk. HyperAttention recomputes ``A``, back-propagates the projection and
  MLP chunk by chunk (``A``'s gradient overwrites ``A``), then each chunk of sorted blocks.

A step holds the tokens, the output's gradient, the layer buffer and the tokens' gradient, plus
one chunk's working memory; exact attention also the keys and values of all tokens and their
gradients while a layer runs (every query needs every key), HyperAttention ``A`` (its chunks
hold other tokens for each head, so a token's heads are complete only once every chunk has run).
The gradient is plain autograd's (tested to 1e-6 in float64).

HyperAttention's chunks are chunks of its sorted blocks (:class:`hyper.HyperLayout`): a chunk's
queries, block keys, values and sampled columns are computed from the token rows they come from,
gathered per head, so no whole query, key or value tensor exists and their gradients go straight
back to those rows. The sampled columns are drawn once per layer in forward and kept (a few hundred indices), so the rebuilt layers and
backward attend exactly as forward did. The plan serves non-causal attention without dropout;
causal HyperAttention and dropout keep the per-layer checkpoint (:func:`applies`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from xt_core.models.context.hyper import DEFAULT_QUERY_CHUNK, HyperLayout, HyperSelfAttention, gather_rows, gray_rank
from xt_core.models.context.recompute import GradientSum, Replay, SequencePlan, piece_gradients, trainable_parameters
from xt_core.models.context.rope import RotaryTables, apply_rotary

if TYPE_CHECKING:
    from xt_core.models.context.attention import AttentionBlock

#: A chunk of queries: contiguous token rows (exact attention), or HyperAttention's
#: ``(first block, block count)``.
Chunk = Union[slice, tuple[int, int]]

#: Tokens per chunk of the token-wise parts (norms, projections, MLP), and queries per chunk of
#: exact attention when the layer sets no ``query_chunk``.
TOKEN_CHUNK = 4096


def applies(encoder: nn.Module, length: int) -> bool:
    """Whether the plan serves ``encoder`` on ``length`` tokens: every layer non-causal and without
    dropout, and more tokens than one chunk (shorter sequences keep the per-layer checkpoint, which
    rebuilds nothing)."""
    for block in encoder.blocks:
        attn = block.attn
        if getattr(attn, "causal", False) or attn.dropout or block.drop.p or block.mlp.dropout.p:
            return False
    return length > _query_chunk(encoder.blocks[0].attn) if len(encoder.blocks) else False


def _query_chunk(attn: nn.Module) -> int:
    return int(attn.query_chunk or TOKEN_CHUNK)


def _spans(length: int, size: int) -> Iterator[slice]:
    for start in range(0, length, size):
        yield slice(start, min(start + size, length))


def _rows_per_head(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x (B, L, D)`` rows ``index (B, H, n)`` -> ``(B, H, n, D)``."""
    batch, length, dim = x.shape
    offsets = torch.arange(batch, device=x.device).view(batch, 1, 1) * length
    return x.reshape(batch * length, dim).index_select(0, (index + offsets).reshape(-1)).view(*index.shape, dim)


class _Layer:
    """One block's parts, each on any rows: keys and values, queries, the attention core, and the
    token-wise finish (output projection, residuals, MLP)."""

    def __init__(self, block: "AttentionBlock", rope: Optional[RotaryTables]) -> None:
        self.block = block
        self.attn = block.attn
        self.rope = rope
        self.heads, self.head_dim = self.attn.heads, self.attn.head_dim
        self.hyper = isinstance(self.attn, HyperSelfAttention)

    # -- token-wise parts
    def _weights(self, which: int) -> torch.Tensor:
        dim = self.heads * self.head_dim
        return self.attn.qkv.weight[which * dim : (which + 1) * dim]

    def _project(self, normed: torch.Tensor, which: int, rows: Union[slice, torch.Tensor]) -> torch.Tensor:
        """Queries (0), keys (1) or values (2) ``(B, H, n, d)`` of normed tokens at ``rows``: ``(B, n, D)``
        at contiguous rows, or per head ``(B, H, n, D)`` at token indices ``(B, H, n)``; queries and
        keys rotated by their tokens' places (``rope2d``)."""
        if isinstance(rows, slice):
            batch, n, _ = normed.shape
            out = F.linear(normed, self._weights(which)).view(batch, n, self.heads, self.head_dim).transpose(1, 2)
            tables = None if self.rope is None else self.rope.window(rows.start, rows.stop)
        else:
            per_head = self._weights(which).view(self.heads, self.head_dim, -1)
            out = torch.einsum("bhnc,hdc->bhnd", normed, per_head.to(normed.dtype))
            tables = None if self.rope is None else RotaryTables(self.rope.cos[rows], self.rope.sin[rows])
        return out if tables is None or which == 2 else apply_rotary(out, tables)

    def queries(self, x: torch.Tensor, rows: Union[slice, torch.Tensor]) -> torch.Tensor:
        """Queries of tokens ``x`` at ``rows`` (see :meth:`_project`)."""
        return self._project(self.block.attn_norm(x), 0, rows)

    def keys_values(self, x: torch.Tensor, rows: Union[slice, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of tokens ``x`` at ``rows`` (see :meth:`_project`)."""
        normed = self.block.attn_norm(x)
        return self._project(normed, 1, rows), self._project(normed, 2, rows)

    def finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The block's output for tokens ``x (B, n, D)`` whose attention output is ``a (B, H, n, d)``."""
        batch, _, n, _ = a.shape
        h = x + self.block.drop(self.attn.proj(a.transpose(1, 2).reshape(batch, n, -1)))
        return h + self.block.drop(self.block.mlp(self.block.mlp_norm(h)))

    # -- the attention core
    def approximates(self, length: int) -> bool:
        """HyperAttention above its exact length: chunks of sorted blocks, keys computed per chunk."""
        return self.hyper and length > self.attn.exact_below

    def layout(self, x: torch.Tensor, samples: Optional[torch.Tensor]) -> Optional[HyperLayout]:
        """HyperAttention's sorted layout for this layer (None where attention is exact): the LSH
        ranks of all queries and keys are taken chunk by chunk of tokens, so neither exists whole."""
        if not self.approximates(x.shape[1]):
            return None
        projections = self.attn.lsh_projections.to(x.dtype)
        q_ranks, k_ranks = [], []
        for rows in _spans(x.shape[1], TOKEN_CHUNK):
            normed = self.block.attn_norm(x[:, rows])
            for ranks, which in ((q_ranks, 0), (k_ranks, 1)):
                ranks.append(gray_rank(torch.matmul(self._project(normed, which, rows), projections) > 0))
        q_order = torch.argsort(torch.cat(q_ranks, dim=-1), dim=-1, stable=True)
        k_order = torch.argsort(torch.cat(k_ranks, dim=-1), dim=-1, stable=True)
        return HyperLayout(q_order, k_order, self.head_dim, self.attn.block_size, samples,
                          self.attn.query_chunk or DEFAULT_QUERY_CHUNK)  # as HyperSelfAttention.noncausal

    def draw_samples(self, length: int, device: torch.device) -> Optional[torch.Tensor]:
        """The sampled key columns, drawn as HyperAttention draws them (None where exact)."""
        if not self.approximates(length):
            return None
        return HyperLayout.draw_samples(length, self.attn.sample_size, device, self.attn._generator(device))

    def chunks(self, length: int, layout: Optional[HyperLayout]) -> list[Chunk]:
        if layout is None:
            return list(_spans(length, _query_chunk(self.attn)))
        return layout.chunks()

    def _key_index(self, chunk: Chunk, layout: HyperLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Token indices ``(B, H, n)`` of a chunk's block keys and ``(B, H, m)`` of the sampled ones."""
        rows = layout.key_rows(*chunk)
        return rows, layout.samples.expand(*rows.shape[:2], -1)

    def chunk_inputs(self, x: torch.Tensor, chunk: Chunk, layout: Optional[HyperLayout],
                     k: Optional[torch.Tensor], v: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """What a chunk's attention is computed from: its queries' token rows, then the keys and
        values of all tokens (exact), or the token rows of its block keys and sampled keys, per
        head (HyperAttention: its keys are computed from them, so no whole keys exist)."""
        if layout is None:
            return [x[:, chunk], k, v]
        keys, sampled = self._key_index(chunk, layout)
        return [_rows_per_head(x, layout.query_rows(*chunk)), _rows_per_head(x, keys), _rows_per_head(x, sampled)]

    def attend(self, inputs: list[torch.Tensor], chunk: Chunk, layout: Optional[HyperLayout]) -> torch.Tensor:
        """The attention output ``(B, H, real, d)`` of a chunk's (non-padding) queries from
        :meth:`chunk_inputs`."""
        if layout is None:
            rows_in, k, v = inputs
            return F.scaled_dot_product_attention(self.queries(rows_in, chunk), k, v)
        rows_in, key_rows_in, sampled_in = inputs
        keys, sampled = self._key_index(chunk, layout)
        q = self.queries(rows_in, layout.query_rows(*chunk))
        merged, _ = layout.attend(*chunk, q, *self.keys_values(key_rows_in, keys), *self.keys_values(sampled_in, sampled))
        real = layout.real_rows(*chunk).shape[-1]
        return merged[..., :real, :].to(rows_in.dtype)

    def add_row_grads(self, grad: torch.Tensor, chunk: Chunk, layout: HyperLayout,
                      found: list[Optional[torch.Tensor]]) -> None:
        """Add the gradients of a HyperAttention chunk's :meth:`chunk_inputs` (token rows per head)
        into the tokens' ``grad (B, L, D)``."""
        keys, sampled = self._key_index(chunk, layout)
        batch, length, dim = grad.shape
        offsets = torch.arange(batch, device=grad.device).view(batch, 1, 1) * length
        for index, part in zip((layout.query_rows(*chunk), keys, sampled), found):
            if part is not None:
                grad.view(-1, dim).index_add_(0, (index + offsets).reshape(-1), part.reshape(-1, dim).to(grad.dtype))

    def read(self, a: torch.Tensor, chunk: Chunk, layout: HyperLayout) -> torch.Tensor:
        """A HyperAttention chunk's rows of ``a (B, H, L, d)`` (the attention output's gradient)."""
        batch, heads, length, dim = a.shape
        return a.reshape(-1, dim).index_select(0, layout.targets(*chunk)).view(batch, heads, -1, dim)

    def write(self, a: torch.Tensor, chunk: Chunk, layout: Optional[HyperLayout], rows: torch.Tensor) -> None:
        if layout is None:
            a[..., chunk, :] = rows
        else:
            a.view(-1, a.shape[-1]).index_copy_(0, layout.targets(*chunk), rows.reshape(-1, a.shape[-1]))


class AttentionLayers(SequencePlan):
    """A global-attention encoder's blocks and final norm as one autograd node (module docstring)."""

    def __init__(self, encoder: nn.Module, rope: Optional[RotaryTables]) -> None:
        self.encoder = encoder
        self.layers = [_Layer(block, rope) for block in encoder.blocks]
        self.params = trainable_parameters(encoder)
        self.samples: list[Optional[torch.Tensor]] = []

    # -- forward, and rebuilding a layer's input
    @staticmethod
    def _keys_values(layer: _Layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of all tokens ``(B, H, L, d)`` (exact attention; no autograd)."""
        batch, length, _ = x.shape
        k = x.new_empty(batch, layer.heads, length, layer.head_dim)
        v = torch.empty_like(k)
        for rows in _spans(length, TOKEN_CHUNK):
            k[..., rows, :], v[..., rows, :] = layer.keys_values(x[:, rows], rows)
        return k, v

    def _attention(self, layer: _Layer, x: torch.Tensor,
                   samples: Optional[torch.Tensor]) -> tuple[Optional[HyperLayout], torch.Tensor]:
        """The layout (None where attention is exact) and the attention output ``A (B, H, L, d)``
        of ``x`` (no autograd); exact attention's whole keys and values live only meanwhile."""
        batch, length, _ = x.shape
        a = x.new_empty(batch, layer.heads, length, layer.head_dim)
        layout = layer.layout(x, samples)
        k, v = self._keys_values(layer, x) if layout is None else (None, None)
        for chunk in layer.chunks(length, layout):
            layer.write(a, chunk, layout, layer.attend(layer.chunk_inputs(x, chunk, layout, k, v), chunk, layout))
        return layout, a

    def _layer_in_place(self, index: int, x: torch.Tensor) -> None:
        layer = self.layers[index]
        _, a = self._attention(layer, x, self.samples[index])
        for rows in _spans(x.shape[1], TOKEN_CHUNK):
            x[:, rows] = layer.finish(x[:, rows], a[..., rows, :])

    def _norm_in_place(self, x: torch.Tensor) -> None:
        for rows in _spans(x.shape[1], TOKEN_CHUNK):
            x[:, rows] = self.encoder.norm(x[:, rows])

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.clone(memory_format=torch.contiguous_format)
        self.samples = []
        for index, layer in enumerate(self.layers):
            self.samples.append(layer.draw_samples(x.shape[1], x.device))  # where HyperAttention draws them
            self._layer_in_place(index, x)
        self._norm_in_place(x)
        return x

    # -- backward
    def backward(
        self, tokens: torch.Tensor, grad_out: torch.Tensor, replay: Replay, grads: GradientSum
    ) -> Optional[torch.Tensor]:
        x = torch.empty_like(tokens, memory_format=torch.contiguous_format)
        grad = torch.empty_like(x)

        def layer_input(index: int) -> None:
            with torch.no_grad(), replay.autocast():
                x.copy_(tokens)
                for k in range(index):
                    self._layer_in_place(k, x)

        for index in reversed(range(len(self.layers))):
            layer_input(index)
            top = index == len(self.layers) - 1  # the final norm goes with the top layer's backward
            self._layer_backward(self.layers[index], self.samples[index], x, grad_out if top else grad, grad,
                                 replay, grads, top)  # fmt: skip
        return grad if tokens.requires_grad else None

    def _layer_backward(self, layer: _Layer, samples: Optional[torch.Tensor], x: torch.Tensor,
                        grad_in: torch.Tensor, grad: torch.Tensor, replay: Replay, grads: GradientSum,
                        top: bool) -> None:
        """``grad_in``: the layer output's gradient (the encoder's, after the final norm, for the
        ``top`` layer); ``grad``: the layer input's, out (it may be ``grad_in``); ``x``: the input."""
        params, length = self.params, x.shape[1]
        norm = self.encoder.norm if top else (lambda t: t)
        if not layer.approximates(length):
            self._exact_layer_backward(layer, x, grad_in, grad, replay, grads, norm)
            return
        with torch.no_grad(), replay.autocast():
            layout, a = self._attention(layer, x, samples)
        with replay.replaying():
            # the projection and the MLP; the attention output's gradient overwrites it
            for rows in _spans(length, TOKEN_CHUNK):
                piece = x[:, rows].detach().requires_grad_()
                attended = a[..., rows, :].detach().requires_grad_()
                found = piece_gradients([norm(layer.finish(piece, attended))], [grad_in[:, rows]],
                                        [piece, attended, *params])  # fmt: skip
                grad[:, rows] = found[0]
                a[..., rows, :] = found[1]
                grads.add(found[2:])
            # the attention core, chunk of sorted blocks by chunk: the gradients go straight to the
            # token rows its queries, keys and values came from
            for chunk in layer.chunks(length, layout):
                inputs = [t.detach().requires_grad_() for t in layer.chunk_inputs(x, chunk, layout, None, None)]
                out = layer.attend(inputs, chunk, layout)
                found = piece_gradients([out], [layer.read(a, chunk, layout)], [*inputs, *params])
                layer.add_row_grads(grad, chunk, layout, found[: len(inputs)])
                grads.add(found[len(inputs) :])

    def _exact_layer_backward(self, layer: _Layer, x: torch.Tensor, grad_in: torch.Tensor, grad: torch.Tensor,
                              replay: Replay, grads: GradientSum, norm) -> None:
        """Exact attention's chunks of queries are chunks of tokens with all their heads, so each
        runs whole (queries, attention against leaf keys and values, the projection and MLP) and
        no attention output is kept; the keys' and values' gradients are summed over the chunks,
        then go back to the tokens chunk by chunk."""
        params, length = self.params, x.shape[1]
        with torch.no_grad(), replay.autocast():
            k, v = self._keys_values(layer, x)
        with replay.replaying():
            keys, values = k.detach().requires_grad_(), v.detach().requires_grad_()
            grad_k, grad_v = torch.zeros_like(k), torch.zeros_like(v)
            for rows in layer.chunks(length, None):
                piece = x[:, rows].detach().requires_grad_()
                out = norm(layer.finish(piece, layer.attend([piece, keys, values], rows, None)))
                found = piece_gradients([out], [grad_in[:, rows]], [piece, keys, values, *params])
                grad[:, rows] = found[0]
                for total, part in ((grad_k, found[1]), (grad_v, found[2])):
                    if part is not None:
                        total += part
                grads.add(found[3:])
            del keys, values, k, v
            for rows in _spans(length, TOKEN_CHUNK):
                piece = x[:, rows].detach().requires_grad_()
                found = piece_gradients(list(layer.keys_values(piece, rows)),
                                        [grad_k[..., rows, :], grad_v[..., rows, :]], [piece, *params])  # fmt: skip
                grad[:, rows] += found[0]
                grads.add(found[1:])
