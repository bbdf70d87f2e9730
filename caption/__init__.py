"""Caption stage: structured ``[overexposed: ...]; [underexposed: ...]`` captions with Qwen3-VL. Planned in issue #6;
nothing is implemented here yet."""
