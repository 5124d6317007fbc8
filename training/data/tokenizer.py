"""A student tokenizer trained on the spot from the snapshot's own texts (nothing is downloaded).

Byte-level BPE with no normaliser: every string, whatever its Unicode, spaces, tabs, newlines or
indentation, decodes back to itself exactly (`decode(encode(text)) == text`), because a generated
PoT program must execute as written. Digits are split one per token before BPE, so numbers are
spelt digit by digit and the model never meets a merged `48` it has to take apart to compute.

Special tokens and ids (fixed, whatever the texts):

| arch | 0 | 1 | 2 | 3 | 4 |
|---|---|---|---|---|---|
| `seq2seq` (T5-like) | `<pad>` | `</s>` eos | `<unk>` | | |
| `causal` (decoder-only) | `<pad>` | `</s>` eos | `<unk>` | `<s>` bos | `<sep>` |

The seq2seq decoder starts from `<pad>` (id 0), as in T5. `unk` is never produced (all 256 bytes
are in the base alphabet); it is there because model configs expect one.

The tokenizer's post-processor writes the model input of a task input, so `tokenizer(inputs)`
(with `padding=True` for a batch) gives exactly what training used (`source_ids`):

- seq2seq: `input </s>` (the encoder input);
- causal: `<s> input <sep>` (the prompt; generation continues after `<sep>` and stops at `</s>`).

Targets are encoded with `add_special_tokens=False` and end with `</s>` (see `encoding`).
Training is deterministic: the same texts in the same order give the same vocabulary and ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ARCHS = ("seq2seq", "causal")
PAD, EOS, UNK, BOS, SEP = "<pad>", "</s>", "<unk>", "<s>", "<sep>"
PAD_ID, EOS_ID, UNK_ID, BOS_ID, SEP_ID = 0, 1, 2, 3, 4


def special_tokens(arch: str) -> list[str]:
    """The special tokens of `arch`, in id order (ids 0, 1, ...)."""
    check_arch(arch)
    return [PAD, EOS, UNK] if arch == "seq2seq" else [PAD, EOS, UNK, BOS, SEP]


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")


def build_tokenizer(texts: Iterable[str], *, vocab_size: int = 2000, arch: str) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (inputs and targets) for a student of `arch`.

    `vocab_size` counts the special tokens and the 256 byte symbols, so it must exceed both; a
    small corpus may give fewer merges than asked (`len(tokenizer)` is the real size, which is
    what the model config must use).
    """
    specials = special_tokens(arch)
    base = len(specials) + 256
    if vocab_size <= base:
        raise ValueError(f"vocab_size {vocab_size} must exceed {base} (special tokens + 256 bytes)")
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    for token_id, token in enumerate(specials):
        if backend.token_to_id(token) != token_id:  # the id table above is a contract
            raise RuntimeError(f"special token {token} got id {backend.token_to_id(token)}, not {token_id}")
    backend.post_processor = _post_processor(arch)
    return _wrap(backend, arch)


def _post_processor(arch: str) -> processors.TemplateProcessing:
    if arch == "seq2seq":
        return processors.TemplateProcessing(
            single=f"$A:0 {EOS}:0", pair=f"$A:0 {EOS}:0 $B:1 {EOS}:1", special_tokens=[(EOS, EOS_ID)]
        )
    return processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0 {SEP}:0",
        pair=f"{BOS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(BOS, BOS_ID), (SEP, SEP_ID)],
    )


def _wrap(backend: Tokenizer, arch: str) -> PreTrainedTokenizerFast:
    kwargs: dict[str, str] = {"pad_token": PAD, "eos_token": EOS, "unk_token": UNK}
    if arch == "causal":
        kwargs |= {"bos_token": BOS, "sep_token": SEP}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side="left" if arch == "causal" else "right",  # causal: batched generation
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    # Where a transformers release rebuilds the post-processor from add_bos/add_eos, put ours back.
    tokenizer.backend_tokenizer.post_processor = _post_processor(arch)
    return tokenizer


def tokenizer_arch(tokenizer: PreTrainedTokenizerFast) -> str:
    """`causal` when the tokenizer has the `<sep>` prompt end, else `seq2seq`."""
    return "causal" if tokenizer.convert_tokens_to_ids(SEP) == SEP_ID else "seq2seq"


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Write the tokenizer (`tokenizer.json` and its config) into directory `path`."""
    tokenizer.save_pretrained(str(path))


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """Read a tokenizer written by `save_tokenizer`, from the local directory only."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}/tokenizer.json not found: save the run's tokenizer there first")
    backend = Tokenizer.from_file(str(path / "tokenizer.json"))
    arch = "causal" if backend.token_to_id(SEP) == SEP_ID else "seq2seq"
    return _wrap(backend, arch)


def decode_text(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> str:
    """The text of generated ids: special tokens dropped, nothing else touched (no space cleanup)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
