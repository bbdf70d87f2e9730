"""DiffHDR backbone: Wan2.1-VACE from diffusers (transformer, fp32 VAE, UMT5 text encoder + tokenizer) and the
rank-32 LoRA (DiffHDR §3.3.3, §4.1).

``model:`` config keys (see train/configs/diffhdr_*.yaml):

* ``pretrained``: local folder or hub id of a diffusers-format Wan VACE checkpoint (subfolders ``transformer``,
  ``vae``, ``text_encoder``, ``tokenizer``); ``Wan-AI/Wan2.1-VACE-14B-diffusers`` is the paper's,
  ``Wan-AI/Wan2.1-VACE-1.3B-diffusers`` the cheap one. ``local_files_only: true`` forbids downloads.
* ``tiny: true`` instead builds random tiny versions of the SAME classes from ``tiny_*`` configs (no download);
  the tokenizer is then a byte-level tokenizer built in memory (one token per UTF-8 byte).
* ``lora: {rank, alpha, blocks: vace|main|both, targets}``: peft LoRA on the attention projections
  (``to_q, to_k, to_v, to_out.0`` of attn1 and attn2) and the feed-forward (``ffn.net.0.proj``, ``ffn.net.2``) of
  ``vace_blocks.N`` (``vace``), ``blocks.N`` (``main``) or both. The public DiffHDR code (scripts/train.sh:
  ``--lora_base_model vace --lora_target_modules q,k,v,o,ffn.0,ffn.2 --lora_rank 32``) puts the LoRA on the VACE
  blocks only, self- and cross-attention and FFN; the paper says "the DiT blocks". Default: ``vace``.
"""
from __future__ import annotations

import hashlib
import re

import torch

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
BLOCK_PREFIXES = {"vace": ("vace_blocks",), "main": ("blocks",), "both": ("blocks", "vace_blocks")}

TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=3, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, vace_layers=[0, 2], vace_in_channels=96)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_TEXT = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, dropout_rate=0.0)


class ModelError(ValueError):
    """A model config problem (one line)."""


def byte_tokenizer():
    """A T5-style tokenizer without any download: one token per UTF-8 byte (ByteLevel alphabet), ``</s>`` appended,
    ``<pad>`` = 0. Used by the tiny configs only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def load_backbone(mcfg: dict, device, weight_dtype=torch.float32):
    """(transformer, vae, text_encoder, tokenizer). VAE always fp32 (DiffHDR appendix C: bf16 decoding bands)."""
    from diffusers import AutoencoderKLWan, WanVACETransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    if mcfg.get("tiny"):
        torch.manual_seed(int(mcfg.get("init_seed", 0)))
        transformer = WanVACETransformer3DModel(**{**TINY_TRANSFORMER, **mcfg.get("tiny_transformer", {})})
        torch.manual_seed(int(mcfg.get("init_seed", 0)))
        vae = AutoencoderKLWan(**{**TINY_VAE, **mcfg.get("tiny_vae", {})})
        tokenizer = byte_tokenizer()
        tcfg = {**TINY_TEXT, **mcfg.get("tiny_text", {})}
        if tcfg["d_model"] != transformer.config.text_dim:
            raise ModelError(f"model.tiny_text.d_model={tcfg['d_model']} must equal the transformer's text_dim "
                             f"{transformer.config.text_dim}")
        torch.manual_seed(int(mcfg.get("init_seed", 0)))
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                                   decoder_start_token_id=0, **tcfg))
    else:
        src = mcfg.get("pretrained")
        if not src:
            raise ModelError("model.pretrained (a local folder or hub id of a diffusers Wan VACE checkpoint) or "
                             "model.tiny: true is required")
        kw = dict(local_files_only=bool(mcfg.get("local_files_only", False)), revision=mcfg.get("revision"))
        try:
            transformer = WanVACETransformer3DModel.from_pretrained(src, subfolder="transformer",
                                                                    torch_dtype=weight_dtype, **kw)
            vae = AutoencoderKLWan.from_pretrained(src, subfolder="vae", torch_dtype=torch.float32, **kw)
            text_encoder = UMT5EncoderModel.from_pretrained(src, subfolder="text_encoder", torch_dtype=weight_dtype,
                                                            **kw)
            tokenizer = AutoTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
        except (OSError, ValueError) as e:
            raise ModelError(f"model.pretrained={src}: cannot load the Wan VACE checkpoint "
                             f"({str(e).splitlines()[0][:300]})") from None
    if mcfg.get("tiny") and weight_dtype != torch.float32:
        transformer.to(dtype=weight_dtype)
        text_encoder.to(dtype=weight_dtype)
    # from_pretrained already gave the dtypes (keeping diffusers' fp32 modules such as norms/rope in fp32)
    transformer.to(device=device)
    text_encoder.to(device=device)
    vae.to(device=device)          # built or loaded in float32
    for m in (transformer, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
    return transformer, vae, text_encoder, tokenizer


def lora_target_regex(blocks: str = "vace", targets=LORA_TARGETS) -> str:
    """peft ``target_modules`` regex (full match on module names) for the chosen blocks and projections."""
    if blocks not in BLOCK_PREFIXES:
        raise ModelError(f"model.lora.blocks must be one of {', '.join(BLOCK_PREFIXES)}, got {blocks!r}")
    pre = "|".join(BLOCK_PREFIXES[blocks])
    tg = "|".join(re.escape(t) for t in targets)
    return rf"^(?:{pre})\.\d+\.(?:(?:attn1|attn2)\.(?:{tg})|(?:{tg}))$"


def add_lora(transformer, lcfg: dict | None = None) -> dict:
    """Insert the LoRA (adapter "default") into the frozen transformer; LoRA weights fp32 and trainable. Returns the
    LoRA config as a dict (recorded with the export)."""
    from peft import LoraConfig

    lcfg = dict(lcfg or {})
    rank = int(lcfg.get("rank", 32))
    alpha = float(lcfg.get("alpha", rank))
    targets = tuple(lcfg.get("targets", LORA_TARGETS))
    regex = lora_target_regex(lcfg.get("blocks", "vace"), targets)
    names = [n for n, _ in transformer.named_modules() if re.fullmatch(regex, n)]
    if not names:
        raise ModelError(f"model.lora: no module of the transformer matches blocks={lcfg.get('blocks', 'vace')} "
                         f"targets={list(targets)}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=regex, init_lora_weights=True,
                        lora_dropout=float(lcfg.get("dropout", 0.0)))
    transformer.add_adapter(config)
    for n, p in transformer.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
            p.requires_grad_(True)
    return {"rank": rank, "alpha": alpha, "blocks": lcfg.get("blocks", "vace"), "targets": list(targets),
            "modules": len(names), "regex": regex}


def lora_state_dict(transformer, trainable: dict | None = None) -> dict:
    """The LoRA weights in diffusers' transformer naming (``blocks.0.attn1.to_q.lora_A.weight``), from the live
    model or from the engine's ``trainable_state`` (same parameter names)."""
    from peft.utils import get_peft_model_state_dict

    if trainable is None:
        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    out = {}
    for k, v in trainable.items():
        if "lora_" not in k:
            raise ModelError(f"unexpected trainable weight {k} (only LoRA weights are trained)")
        out[k.replace(".default", "")] = v.detach().cpu().contiguous()
    return out


def module_hash(module: torch.nn.Module) -> str:
    """Content hash of a module's config and weights (the VAE key of the latent cache)."""
    h = hashlib.blake2b(digest_size=16)
    cfg = getattr(module, "config", None)
    if cfg is not None:
        h.update(repr(sorted(dict(cfg).items())).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
