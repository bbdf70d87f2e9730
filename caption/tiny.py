"""A tiny random-weight Qwen3-VL checkpoint built locally (no download): for tests and smoke runs of the real code path.

    python -m caption.tiny OUT_DIR        # then: python -m caption.run --root ROOT --weights OUT_DIR

It is a real ``Qwen3VLForConditionalGeneration`` (2 text layers of width 32, 2 vision blocks, patch 16, spatial merge
2) with a byte-level BPE tokenizer trained here on a few sentences and wrapped as ``Qwen2Tokenizer`` with the special
tokens the Qwen3-VL processor needs, a ``Qwen2VLImageProcessor`` with patch size 16, a ``Qwen3VLVideoProcessor`` and a
hand-written chat template, all saved with ``save_pretrained``. Its replies are random text: it proves plumbing, not
captions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# The Qwen chat format: <|im_start|>role\n ... <|im_end|>\n, each image as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    '{"overexposed": "the bright sky around the sun", "underexposed": "dark trees and ground", "scene": "a field"}',
    "overexposed underexposed scene none white grey black blue sky sun lamp window wall shadow",
]


def build_tiny_qwen3vl(out_dir, seed: int = 0, vocab_size: int = 400) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    out = Path(out_dir)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tok = Qwen2Tokenizer(tokenizer_object=bpe, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    image_proc = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=64 * 64,
                                       max_pixels=256 * 256)
    video_proc = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(image_processor=image_proc, tokenizer=tok, video_processor=video_proc,
                                 chat_template=CHAT_TEMPLATE)
    ids = tok.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m caption.tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write the checkpoint to")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(build_tiny_qwen3vl(args.out, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
