"""Loss masks from the chat template, checked token by token."""

import pytest

from redone.data.chat import encode_chat
from redone.errors import DataError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, of course."},
]


def test_labels_only_on_assistant_tokens_multi_turn(tokenizer):
    encoded = encode_chat(tokenizer, CONVERSATION)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(encoded.ids) == text
    # Expected mask, rebuilt independently from the ChatML layout: after "<|im_start|>assistant\n"
    # every token through the turn's "<|im_end|>\n" is learnt; everything else is not.
    expected, inside, so_far = [], False, ""
    for token in encoded.ids:
        piece = tokenizer.decode([token])
        so_far += piece
        expected.append(inside)
        if inside and so_far.endswith("<|im_end|>\n"):
            inside = False
        elif not inside and so_far.endswith("<|im_start|>assistant\n"):
            inside = True
    assert encoded.mask == expected
    learnt = tokenizer.decode([t for t, m in zip(encoded.ids, encoded.mask) if m])
    assert learnt == "Blue.<|im_end|>\nGreen, of course.<|im_end|>\n"


def test_loss_on_all(tokenizer):
    encoded = encode_chat(tokenizer, CONVERSATION, loss_on="all")
    assert all(encoded.mask)


def test_overlong_policies(tokenizer):
    long_turn = [{"role": "system", "content": "Classify."},
                 {"role": "user", "content": "Note: " + "word " * 300 + "\nCandidates: A, B\nAnswer:"},
                 {"role": "assistant", "content": "A"}]
    full = encode_chat(tokenizer, long_turn)
    assert encode_chat(tokenizer, long_turn, max_len=100, overlong="drop") is None
    with pytest.raises(DataError, match=r"ex:7: \d+ tokens exceed data.seq_len=100"):
        encode_chat(tokenizer, long_turn, max_len=100, overlong="error", where="ex:7")
    cut = encode_chat(tokenizer, long_turn, max_len=100)
    assert cut.truncated and len(cut.ids) == 100
    text = tokenizer.decode(cut.ids)
    # The start of the prompt, the candidates, the cue and the whole answer survive the cut.
    assert text.startswith("<|im_start|>system\nClassify.") and "Candidates: A, B\nAnswer:" in text
    assert sum(cut.mask) == sum(full.mask)
    assert tokenizer.decode([t for t, m in zip(cut.ids, cut.mask) if m]) == "A<|im_end|>\n"


def test_no_assistant_turn_is_an_error(tokenizer):
    with pytest.raises(DataError, match="no assistant turn"):
        encode_chat(tokenizer, [{"role": "user", "content": "hi"}], where="f.jsonl:3")
