"""The qwen3vl backend end to end with a tiny random-weight Qwen3-VL built locally (caption.tiny), loaded back through
the user's path (``--model <folder>``), on real tonemapped frames of the tiny dataset; retries and fallbacks with a
scripted backend."""
from __future__ import annotations


import numpy as np
import pytest

import caption.clip as caption_clip
from caption import stats
from caption.backends import Backend, BackendSpec, Request, get_backend
from caption.clip import CAPTION_JSON, CaptionSettings, caption_dataset
from caption.frames import load_clip_frames, vlm_images
from caption.parse import parse_reply
from caption.prompt import RETRY
from caption.run import main as caption_main
from caption.tiny import build_tiny_qwen3vl
from hdr.storage import Store
from tests.test_caption_stats import _captions


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("qwen") / "tiny-qwen3vl")


def test_tiny_qwen3vl_through_the_cli_always_lands_a_valid_caption(tiny_dataset, tiny_model, monkeypatch):
    import qwen_vl_utils

    seen = []  # (conversations, images) of every generate() call, as the backend passes them
    real = qwen_vl_utils.process_vision_info

    def spy(convs, **kw):
        images, videos = real(convs, **kw)
        seen.append((convs, images, kw))
        return images, videos

    monkeypatch.setattr(qwen_vl_utils, "process_vision_info", spy)
    argv = ["--dataset", str(tiny_dataset), "--model", str(tiny_model), "--max-new-tokens", "12", "--batch-size",
            "3", "--overwrite", "--no-ray"]
    assert caption_main(argv) == 0
    caps = _captions(tiny_dataset)
    assert len(caps) == 6
    store = Store(tiny_dataset)
    for key, rec in caps.items():
        assert rec["backend"] == "qwen3vl"
        assert rec["model"] == {"id": str(tiny_model.resolve()), "revision": None}
        assert rec["generation"]["model_class"] == "Qwen3VLForConditionalGeneration"
        assert rec["generation"]["device"] == "cpu" and rec["generation"]["dtype"] == "float32"
        # random weights write garbage: three attempts, every rejection recorded, then the statistics fallback
        assert rec["attempts"] == 3 and len(rec["generation"]["errors"]) == 3
        assert rec["fallback"].startswith("qwen3vl gave no usable reply in 3 attempt(s)")
        with pytest.raises(ValueError):  # raw_text is the model's own (last) reply, not the fallback's JSON
            parse_reply(rec["raw_text"])
        clip = load_clip_frames(store, *key.split("/"), k=4)
        fallback = stats.describe(clip.display, clip.over, clip.under, clip.hdr)
        assert (rec["overexposed"], rec["underexposed"]) == (fallback["overexposed"], fallback["underexposed"])
    # 2 batches x 3 attempts; each clip's 4 images are the outlined Reinhard frames at the model's input size
    assert len(seen) == 6 and all(kw == {"image_patch_size": 16} for _, _, kw in seen)
    first = load_clip_frames(store, "forest", "highlight_zoom_in", k=4)
    want = vlm_images(first, "contour", 64 * 64, 448 * 448, 32)
    convs, images, _ = seen[0]
    assert len(convs) == 3 and len(images) == 12
    for got, w in zip(images[:4], want):
        np.testing.assert_array_equal(np.asarray(got), w)
    text = convs[0][1]["content"][-1]["text"]
    assert "frames 0, 3, 5, 8" in text
    assert f"overexposed: {stats.region_hint(stats.region_summary(first.over))};" in text
    retry_conv = seen[1][0][0]  # the second attempt of the first clip: its reply, then the stricter instruction
    assert [m["role"] for m in retry_conv] == ["system", "user", "assistant", "user"]
    assert retry_conv[3]["content"][0]["text"].startswith("Your previous answer could not be used: ")
    assert caps["forest/highlight_zoom_in"]["generation"]["errors"][0] in retry_conv[3]["content"][0]["text"]

    # resume: nothing to do, the model is not even loaded; --redo-fallbacks redoes them
    before = {k: (tiny_dataset / k / CAPTION_JSON).read_bytes() for k in caps}
    monkeypatch.setattr(caption_clip, "get_backend", lambda spec: pytest.fail("model loaded for a finished run"))
    assert caption_main(argv[:-2] + ["--no-ray"]) == 0
    assert {k: (tiny_dataset / k / CAPTION_JSON).read_bytes() for k in caps} == before
    monkeypatch.setattr(caption_clip, "get_backend", get_backend)
    assert caption_main(argv[:-2] + ["--no-ray", "--redo-fallbacks", "--batch-size", "6"]) == 0
    assert all((tiny_dataset / k / CAPTION_JSON).read_bytes() != before[k] for k in caps)


def test_batched_generation_equals_one_by_one(tiny_dataset, tiny_model):
    backend = get_backend(BackendSpec(model=str(tiny_model), max_new_tokens=10, batch_size=3))
    store, s = Store(tiny_dataset), CaptionSettings()
    reqs = [caption_clip._request(load_clip_frames(store, h, c, 4), backend, s)
            for h, c in (("sunrise", "rotation_000"), ("night", "highlight_zoom_in"), ("forest", "rotation_000"))]
    lengths = {len(backend.processor.apply_chat_template(r.messages, tokenize=False)) for r in reqs}
    assert len(lengths) > 1  # the prompts differ in length, so the batch is padded (on the left)
    assert backend.generate(reqs) == [backend.generate([r])[0] for r in reqs]


class ScriptedBackend(Backend):
    """Replies from a script per clip and attempt; records what it was asked."""

    name = "qwen3vl"

    def __init__(self, script):
        self.script, self.calls = script, []

    def model_info(self):
        return {"id": "scripted/model", "revision": "abc"}

    def settings(self):
        return {"max_new_tokens": 8}

    def generate(self, requests: list[Request]):
        self.calls.append(requests)
        out = []
        for r in requests:
            replies = self.script[r.clip.key]
            n = sum(1 for batch in self.calls for q in batch if q.clip.key == r.clip.key)
            out.append(replies[min(n, len(replies)) - 1])
        return out


def test_retry_with_a_stricter_prompt_then_fallback(tiny_dataset, monkeypatch):
    script = {
        "forest/highlight_zoom_in": ['```json\n{"overexposed": "the sun", "underexposed": "fir trees"}\n```'],
        "forest/rotation_000": ["I see a forest.", "{'overexposed': 'sky', 'underexposed': 'moss', 'scene': 'woods'}"],
        "night/highlight_zoom_in": ["", "{}", '{"overexposed": "a lamp"}'],
    }
    backend = ScriptedBackend(script)
    monkeypatch.setattr(caption_clip, "get_backend", lambda spec: backend)
    res = caption_dataset(str(tiny_dataset), BackendSpec(model="scripted/model"), CaptionSettings(attempts=3),
                          clips=[tuple(k.split("/")) for k in script], overwrite=True, chunk=3)
    assert set(res.values()) == {"written"}
    assert [len(c) for c in backend.calls] == [3, 2, 1]  # only the clips still without a usable reply are re-asked
    caps = _captions(tiny_dataset)
    a, b, c = (caps[k] for k in script)
    assert (a["attempts"], a["fallback"], a["overexposed"], a["scene"]) == (1, None, "the sun", None)
    assert a["caption"] == "[overexposed: the sun]; [underexposed: fir trees]"
    assert (b["attempts"], b["fallback"], b["underexposed"], b["scene"]) == (2, None, "moss", "woods")
    assert b["generation"]["errors"] == ["no JSON object found in the reply"]
    assert b["raw_text"] == script["forest/rotation_000"][1]
    retry = backend.calls[1][0].messages
    assert retry[2] == {"role": "assistant", "content": [{"type": "text", "text": "I see a forest."}]}
    assert retry[3]["content"][0]["text"] == RETRY.format(error="no JSON object found in the reply")
    assert c["attempts"] == 3 and c["fallback"].startswith("qwen3vl gave no usable reply in 3 attempt(s)")
    assert c["generation"]["errors"] == ["empty reply", "missing key 'overexposed' (keys found: none)",
                                         "missing key 'underexposed' (keys found: overexposed)"]
    assert c["raw_text"] == '{"overexposed": "a lamp"}' and c["model"] == {"id": "scripted/model", "revision": "abc"}
    assert caps["sunrise/rotation_000"]["backend"] == "stats"  # clips not asked for are left alone
