"""Context-focused cross-attention (CFA, DiffHDR §3.4.2, eq. 7-8) as a diffusers attention processor.

At every cross-attention layer (``attn2``) of the main DiT blocks and/or the VACE blocks:

    r_base = CA(x, c), r_over = CA(x, c_over), r_under = CA(x, c_under)                    (eq. 7)
    r = r_base + a_over M_over (r_over - r_base) + a_under M_under (r_under - r_base)       (eq. 8)

c is the prompt the pipeline passes (the base / "unconditional" prompt, "" in the public code), c_over / c_under
the over- and under-exposure prompts, M the exposure masks pooled onto the transformer's tokens. Inference only:
the weights are untouched; uninstalling restores the original processors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# the public code's CFA prompts (infer_video.py)
OVER_PROMPT = "over-exposed: Recover the over-exposed area."
UNDER_PROMPT = "under-exposed: Recover the under-exposed area."


@dataclass
class CFAState:
    """Shared by all CFA processors of a model; set the fields before calling the model/pipeline.

    ``over_embeds`` / ``under_embeds`` are text-encoder outputs (1, L, text_dim), like the pipeline's prompt_embeds;
    they go through the transformer's own text projection (``condition_embedder.text_embedder``) once, as the base
    prompt does inside the transformer, before they reach the cross-attention layers."""

    alpha_over: float = 0.0
    alpha_under: float = 0.0
    over_embeds: torch.Tensor | None = None    # (1, L, text_dim) text embeddings of c_over
    under_embeds: torch.Tensor | None = None
    over_mask: torch.Tensor | None = None      # (1, N, 1) in [0, 1] per token
    under_mask: torch.Tensor | None = None
    calls: int = 0
    project: object = None                     # set by install_cfa
    _cache: dict | None = None

    def context(self, which: str, like: torch.Tensor) -> torch.Tensor | None:
        raw = self.over_embeds if which == "over" else self.under_embeds
        if raw is None:
            return None
        self._cache = self._cache or {}
        hit = self._cache.get(which)
        if hit is None or hit[0] is not raw:
            with torch.no_grad():
                p = self.project(raw.to(device=like.device, dtype=like.dtype)) if self.project else raw
            hit = (raw, p)
            self._cache[which] = hit
        return hit[1].to(device=like.device, dtype=like.dtype)


class ContextFocusedAttnProcessor:
    """Wraps the block's own processor (``WanAttnProcessor``); self-attention calls pass through unchanged."""

    def __init__(self, state: CFAState, base):
        self.state = state
        self.base = base

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        r_base = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        st = self.state
        if encoder_hidden_states is None:
            return r_base
        out = r_base
        b, n = hidden_states.shape[:2]
        for which, mask, alpha in (("over", st.over_mask, st.alpha_over), ("under", st.under_mask, st.alpha_under)):
            emb = st.context(which, encoder_hidden_states)
            if emb is None or mask is None:
                continue
            if mask.shape[1] != n:
                raise ValueError(f"CFA mask has {mask.shape[1]} tokens, the attention layer {n}")
            e = emb.expand(b, -1, -1)
            r = self.base(attn, hidden_states, e, None, rotary_emb)
            out = out + float(alpha) * mask.to(r_base) * (r - r_base)        # eq. 8
        st.calls += 1
        return out


def install_cfa(transformer, state: CFAState, branches: str = "both") -> dict:
    """Put CFA on ``attn2`` of ``blocks`` (main), ``vace_blocks`` (vace) or both (the paper: both). Returns the
    replaced processors for :func:`uninstall_cfa`."""
    prefixes = {"main": ("blocks",), "vace": ("vace_blocks",), "both": ("blocks", "vace_blocks")}[branches]
    old = {}
    state.project = transformer.condition_embedder.text_embedder
    for prefix in prefixes:
        for i, block in enumerate(getattr(transformer, prefix)):
            attn = block.attn2
            old[f"{prefix}.{i}"] = attn.processor
            attn.set_processor(ContextFocusedAttnProcessor(state, attn.processor))
    return old


def uninstall_cfa(transformer, old: dict) -> None:
    for name, proc in old.items():
        prefix, i = name.split(".")
        getattr(transformer, prefix)[int(i)].attn2.set_processor(proc)


def token_mask(mask: torch.Tensor, patch_size=(1, 2, 2), n_reference: int = 0, spatial: int = 8,
               temporal: int = 4) -> torch.Tensor:
    """(T, H, W) pixel mask in [0, 1] -> (1, N, 1) per-token coverage in the transformer's token order
    (latent frame, row, column). Latent frame 0 covers frame 0 and latent frame k frames 4k-3..4k (the Wan VAE's
    causal temporal stride); each token covers (spatial * patch) pixels square; the value is the mean coverage.
    ``n_reference`` latent frames of zeros are prepended (VACE reference images)."""
    m = mask.float()
    t = m.shape[0]
    groups = [m[:1]] + [m[i:i + temporal] for i in range(1, t, temporal)]
    m = torch.stack([g.mean(0) for g in groups])                              # (F, H, W)
    ph, pw = patch_size[1] * spatial, patch_size[2] * spatial
    m = F.avg_pool2d(m[:, None], kernel_size=(ph, pw), stride=(ph, pw))[:, 0]  # (F, h, w)
    if n_reference:
        m = torch.cat([torch.zeros(n_reference, *m.shape[1:], dtype=m.dtype), m])
    return m.reshape(1, -1, 1)
