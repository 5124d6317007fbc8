"""The on-the-spot student tokenizer: exact round trips, fixed special ids, determinism."""

from __future__ import annotations

import pytest

from tests.training.data.conftest import PROGRAM, corpus, kpdd_examples
from training.data import build_tokenizer, decode_text, load_tokenizer, save_tokenizer, tokenizer_arch

ODD_TEXTS = [
    PROGRAM,
    "x = 1234567890\r\n\tif x:\n\t\ty = -0.5e-3\n",
    "  leading and trailing spaces  \n\n\n",
    "Unicode: café, naïve, 12½ km — “quoted” ∑ 你好 🙂",
]


@pytest.mark.parametrize("arch", ["causal", "seq2seq"])
def test_round_trips_program_and_cot_text_exactly(arch, causal_tokenizer, seq2seq_tokenizer):
    tokenizer = causal_tokenizer if arch == "causal" else seq2seq_tokenizer
    for text in [*ODD_TEXTS, *(t for e in kpdd_examples() for t in (e.input, e.target))]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert decode_text(tokenizer, ids) == text
        assert tokenizer.decode(ids) == text


def test_decoded_program_still_runs(causal_tokenizer):
    ids = causal_tokenizer(PROGRAM, add_special_tokens=False)["input_ids"]
    namespace: dict[str, object] = {}
    exec(decode_text(causal_tokenizer, [*ids, causal_tokenizer.eos_token_id]), namespace)
    assert namespace["ans"] == 72.0


def test_digits_are_single_tokens(causal_tokenizer):
    tokens = causal_tokenizer.convert_ids_to_tokens(
        causal_tokenizer("48 + 1200 = 1248", add_special_tokens=False)["input_ids"]
    )
    assert [t for t in tokens if any(c.isdigit() for c in t)] == list("481200" + "1248")


def test_special_token_ids_are_fixed():
    causal = build_tokenizer(corpus(), vocab_size=400, arch="causal")
    seq2seq = build_tokenizer(corpus(), vocab_size=400, arch="seq2seq")
    assert (seq2seq.pad_token_id, seq2seq.eos_token_id, seq2seq.unk_token_id) == (0, 1, 2)
    assert seq2seq.bos_token_id is None
    assert (causal.pad_token_id, causal.eos_token_id, causal.bos_token_id, causal.sep_token_id) == (
        0,
        1,
        3,
        4,
    )
    assert tokenizer_arch(causal) == "causal"
    assert tokenizer_arch(seq2seq) == "seq2seq"
    # The post-processor writes the model input: `input </s>` and `<s> input <sep>`.
    assert seq2seq("ab")["input_ids"][-1] == 1
    ids = causal("ab")["input_ids"]
    assert (ids[0], ids[-1]) == (3, 4)


def test_training_is_deterministic():
    first = build_tokenizer(corpus(), vocab_size=500, arch="causal")
    second = build_tokenizer(corpus(), vocab_size=500, arch="causal")
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    other = build_tokenizer(corpus()[:4], vocab_size=500, arch="causal")
    assert other.backend_tokenizer.to_str() != first.backend_tokenizer.to_str()


def test_save_and_load_keep_ids_and_batch_padding(tmp_path, causal_tokenizer):
    save_tokenizer(causal_tokenizer, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    texts = [PROGRAM, "short"]
    assert loaded(texts)["input_ids"] == causal_tokenizer(texts)["input_ids"]
    batch = loaded(texts, padding=True, return_tensors="pt")
    # Causal prompts pad on the left, so every prompt ends where generation starts.
    assert batch["input_ids"][1, 0].item() == loaded.pad_token_id
    assert (batch["input_ids"][:, -1] == loaded.sep_token_id).all()
    decoded = loaded.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert decoded == texts


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(["abc"], vocab_size=100, arch="causal")
    with pytest.raises(ValueError, match="arch"):
        build_tokenizer(["abc"], vocab_size=1000, arch="encoder")
