import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpo_ao.errors import GrpoAoError
from grpo_ao.format import (
    ORACLE_SYSTEM_PROMPT,
    SPECIAL_TOKEN,
    build_oracle_messages,
    find_placeholder_positions,
    format_epistemic_status,
    left_pad,
    oracle_prefix,
    parse_epistemic_status,
    render_oracle_prompt,
)


def test_oracle_prefix_is_exact():
    assert oracle_prefix(18, 3) == "Layer: 18\n ? ? ? \n"
    assert oracle_prefix(9, 1) == "Layer: 9\n ? \n"


def test_system_prompt_is_the_published_text():
    assert ORACLE_SYSTEM_PROMPT.startswith("Respond with: [epistemic status: X] Answer\n\nX is your")
    assert ORACLE_SYSTEM_PROMPT.endswith("[epistemic status: 2] The question is about cooking")
    assert not ORACLE_SYSTEM_PROMPT.endswith("\n")
    assert ORACLE_SYSTEM_PROMPT.count("\n") == 18  # 19 lines, as published


def test_messages_layouts():
    none = build_oracle_messages("Q?", 4, 2)
    assert none == [{"role": "user", "content": "Layer: 4\n ? ? \nQ?"}]
    merged = build_oracle_messages("Q?", 4, 2, system_prompt="SYS")
    assert merged == [{"role": "user", "content": "SYS\n\nLayer: 4\n ? ? \nQ?"}]
    role = build_oracle_messages("Q?", 4, 2, system_prompt="SYS", mode="system_role", answer="A")
    assert role == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "Layer: 4\n ? ? \nQ?"},
        {"role": "assistant", "content": "A"},
    ]
    assert build_oracle_messages("Q?", 4, 2, system_prompt="SYS", mode="none") == none


def test_special_token_is_one_token(tokenizer):
    assert len(tokenizer.encode(SPECIAL_TOKEN, add_special_tokens=False)) == 1


def test_render_prompt_has_empty_think_block_and_positions_point_at_placeholders(tokenizer):
    p = render_oracle_prompt(tokenizer, "Is it about food?", layer=4, num_positions=3)
    assert p.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "<|im_start|>user\nLayer: 4\n ? ? ? \nIs it about food?<|im_end|>" in p.text
    qid = tokenizer.encode(SPECIAL_TOKEN, add_special_tokens=False)[0]
    assert [p.input_ids[i] for i in p.positions] == [qid] * 3
    assert p.positions == list(range(p.positions[0], p.positions[0] + 3))
    assert tokenizer.decode(p.input_ids[: p.positions[0]]).endswith("Layer: 4\n")


@pytest.mark.parametrize("mode", ["merged", "system_role"])
def test_positions_with_system_prompt(tokenizer, mode):
    p = render_oracle_prompt(tokenizer, "Q?", 2, 5, system_prompt=ORACLE_SYSTEM_PROMPT, mode=mode)
    assert len(p.positions) == 5
    assert tokenizer.decode(p.input_ids[: p.positions[0]]).endswith("Layer: 2\n")


def test_question_mark_in_question_is_not_a_placeholder(tokenizer):
    p = render_oracle_prompt(tokenizer, "Is it hot ? Or cold ?", 4, 2)
    assert len(p.positions) == 2
    assert p.positions[-1] < p.text.count("x") + len(p.input_ids)  # sanity
    assert tokenizer.decode(p.input_ids[p.positions[-1] + 1 :]).startswith(" \nIs it hot")


def test_placeholder_count_mismatch_raises(tokenizer):
    p = render_oracle_prompt(tokenizer, "Q?", 4, 3)
    with pytest.raises(GrpoAoError, match="Expected exactly 2"):
        find_placeholder_positions(p.input_ids, tokenizer, 4, 2)
    with pytest.raises(GrpoAoError, match="do not follow 'Layer: 5"):
        find_placeholder_positions(p.input_ids, tokenizer, 5, 3)
    ids = tokenizer("<|im_start|>user\nno placeholders here<|im_end|>", add_special_tokens=False)["input_ids"]
    with pytest.raises(GrpoAoError, match="No ' \\?' placeholder"):
        find_placeholder_positions(ids, tokenizer, 4, 1)


def test_left_pad_shifts_positions(tokenizer):
    a = render_oracle_prompt(tokenizer, "Short?", 4, 1)
    b = render_oracle_prompt(tokenizer, "A much longer question about the text?", 4, 3)
    ids, mask, pos = left_pad([a, b], tokenizer.pad_token_id)
    qid = tokenizer.encode(SPECIAL_TOKEN, add_special_tokens=False)[0]
    for row, p in enumerate(pos):
        assert all(ids[row, i].item() == qid for i in p)
    assert mask[0].sum().item() == len(a.input_ids) and mask[1].sum().item() == len(b.input_ids)
    assert mask[0, 0].item() == 0 and mask[0, -1].item() == 1


@pytest.mark.parametrize(
    "text,conf,answer",
    [
        ("[epistemic status: 7] Paris", 7, "Paris"),
        ("  [EPISTEMIC STATUS: 10] Yes", 10, "Yes"),
        ("[ epistemic status : 0 ]No", 0, "No"),
        ("<think>\n\n</think>\n\n[epistemic status: 3] The text is about food.", 3, "The text is about food."),
        ("[epistemic status: 9] multi\nline", 9, "multi\nline"),
    ],
)
def test_parse_accepts_valid(text, conf, answer):
    r = parse_epistemic_status(text)
    assert r.ok and r.confidence == conf and r.answer == answer


@pytest.mark.parametrize(
    "text",
    [
        "[epistemic status: 11] Yes",
        "[epistemic status: -1] Yes",
        "[epistemic status: 7.5] Yes",
        "[epistemic status: ] Yes",
        "[epistemic status: 7]   ",
        "Yes [epistemic status: 7]",
        "epistemic status: 7 Yes",
        "",
    ],
)
def test_parse_rejects_invalid(text):
    r = parse_epistemic_status(text)
    assert not r.ok and r.confidence is None and r.answer == text.strip()


@given(st.integers(0, 10), st.text(min_size=1).map(str.strip).filter(bool))
def test_format_parse_round_trip(conf, answer):
    r = parse_epistemic_status(format_epistemic_status(conf, answer))
    assert r.ok and r.confidence == conf and r.answer == answer


def test_format_rejects_out_of_range():
    with pytest.raises(ValueError):
        format_epistemic_status(11, "x")


def test_tag_token_mask_covers_exactly_the_tag_tokens(tokenizer):
    import torch

    tiny_tokenizer = tokenizer
    from grpo_ao.format import tag_token_mask

    texts = ["[epistemic status: 7] Yes, it is.", "no tag here", "[epistemic status: 10] No"]
    rows = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tiny_tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = tag_token_mask(tiny_tokenizer, ids, [True, False, True])
    for n, row in enumerate(rows):
        k = int(mask[n].sum())
        assert mask[n, :k].all() and not mask[n, k:].any()
        if n == 1:
            assert k == 0
            continue
        assert "]" in tiny_tokenizer.decode(row[:k]) and "]" not in tiny_tokenizer.decode(row[:k - 1])


def test_tag_candidate_ids_spell_each_tag_as_the_oracle_writes_it(tokenizer):
    from grpo_ao.format import format_epistemic_status, tag_candidate_ids

    ids = tag_candidate_ids(tokenizer)
    assert len(ids) == 11
    for x, row in enumerate(ids):
        assert tokenizer.decode(row) == f"[epistemic status: {x}]"
        written = tokenizer(format_epistemic_status(x, "No, it is not."), add_special_tokens=False)["input_ids"]
        assert written[:len(row)] == row
