"""Parsing and validating VLM replies (caption.parse): what models really write, good and bad."""
from __future__ import annotations

import pytest

from caption.parse import CaptionFormatError, clean_description, parse_reply, render_caption

GOOD = '{"overexposed": "the sun and the bright sky around it", "underexposed": "tree trunks", "scene": "a forest"}'
WANT = {"overexposed": "the sun and the bright sky around it", "underexposed": "tree trunks", "scene": "a forest"}


@pytest.mark.parametrize("reply", [
    GOOD,
    f"```json\n{GOOD}\n```",
    f"```\n{GOOD}\n```\nI hope this helps!",
    f"Sure! Here is the JSON you asked for:\n{GOOD}\nLet me know if you need anything else.",
    "{'overexposed': 'the sun and the bright sky around it', 'underexposed': 'tree trunks', 'scene': 'a forest'}",
    '{"overexposed": "the sun and the bright sky around it", "underexposed": "tree trunks", "scene": "a forest",}',
    f"<think>The top is bright {{maybe}}. Let me answer.</think>\n{GOOD}",
    '{"Overexposed": "the sun and the bright sky around it", "UNDER-EXPOSED": "tree trunks", "Scene": "a forest"}',
    '{"note": "ignored"} then ' + GOOD,
    '{"overexposed":   "the  sun and the bright\\nsky around it ", "underexposed": "tree trunks", "scene": "a forest"}',
])
def test_accepts_what_models_write(reply):
    assert parse_reply(reply) == WANT


@pytest.mark.parametrize("reply, why", [
    ("", "empty reply"),
    ("   \n ", "empty reply"),
    (None, "empty reply"),
    ("The overexposed region is the sky and the underexposed region is the road.", "no JSON object"),
    ('{"overexposed": "the sky", "underexposed": "the ro', "cut off"),
    ('{"overexposed": "the sky"}', "missing key 'underexposed'"),
    ('{"underexposed": "the road", "scene": "x"}', "missing key 'overexposed'"),
    ('{"overexposed": ["sky", "sun"], "underexposed": "the road"}', "'overexposed' must be a string, got list"),
    ('{"overexposed": "sky", "underexposed": 3}', "'underexposed' must be a string, got int"),
    ('{"overexposed": {"description": "sky"}, "underexposed": "road"}', "must be a string, got dict"),
    ('{"overexposed": "sky", "underexposed": null}', "must be a string, got NoneType"),
    ('{"overexposed": "   ", "underexposed": "road"}', "'overexposed' is empty"),
    ('{"overexposed": "<description>", "underexposed": "road"}', "placeholder"),
    ('{"overexposed": "' + "sky " * 200 + '", "underexposed": "road"}', "characters long"),
    ("[1, 2, 3]", "no JSON object"),
])
def test_rejects_malformed_replies_with_a_reason(reply, why):
    with pytest.raises(CaptionFormatError) as e:
        parse_reply(reply)
    assert why in str(e.value)
    assert "\n" not in str(e.value)


def test_scene_is_optional_and_a_bad_scene_never_rejects_good_descriptions():
    assert parse_reply('{"overexposed": "sky", "underexposed": "road"}')["scene"] is None
    assert parse_reply('{"overexposed": "sky", "underexposed": "road", "scene": 5}')["scene"] is None
    assert parse_reply('{"overexposed": "sky", "underexposed": "road", "scene": ""}')["scene"] is None


def test_none_words_are_normalised_and_brackets_cannot_break_the_caption_format():
    got = parse_reply('{"overexposed": "None.", "underexposed": "a [dark] doorway", "scene": "N/A"}')
    assert got == {"overexposed": "none", "underexposed": "a (dark) doorway", "scene": None}
    cap = render_caption(got["overexposed"], got["underexposed"])
    assert cap == "[overexposed: none]; [underexposed: a (dark) doorway]"
    assert cap.count("[") == 2 and cap.count("]") == 2
    assert clean_description("  a\t lamp \n") == "a lamp"


def test_render_caption_is_the_paper_format():
    assert render_caption("the sun", "the road") == "[overexposed: the sun]; [underexposed: the road]"
