"""Caption stage (DiffHDR §3.4.2, appendix E): ``[overexposed: <description>]; [underexposed: <description>]`` per clip.

- :mod:`caption.frames`   K uniformly sampled frames, Reinhard-tonemapped from HDR; the LDR augmentation's masks;
                          the images the VLM sees (region outlines drawn at the model's input size).
- :mod:`caption.prompt`   the prompt and its hash.
- :mod:`caption.parse`    reply -> validated fields (fences, stray text, single quotes...), the rendered caption.
- :mod:`caption.stats`    descriptions from image statistics (the ``stats`` backend and the fallback).
- :mod:`caption.backends` ``qwen3vl`` (transformers), ``vllm`` (GPU), ``stats``, behind one interface.
- :mod:`caption.clip`     caption a batch of clips -> ``<clip>/caption.json`` (resume, retries, fallback).
- :mod:`caption.run`      the CLI: ``python -m caption.run --root ROOT --weights MODEL``.
- :mod:`caption.tiny`     a tiny random-weight Qwen3-VL checkpoint for tests and smoke runs.
"""
