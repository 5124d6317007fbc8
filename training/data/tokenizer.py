"""Student tokenizers: trained on the spot from the snapshot's texts, or a pretrained model's.

Nothing is downloaded. Whatever the tokenizer, the data layout reads its special tokens once,
through `specials_of(tokenizer)` (a `Specials` record: pad, eos, bos or None, and `<sep>`, the
causal prompt end); nothing else assumes fixed ids.

## Trained on the spot (`build_tokenizer`)

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

## Pretrained (`adapt_pretrained`)

A pretrained tokenizer keeps its own vocabulary and ids. A causal one gets `<sep>` as an added
special token when it lacks it (its id is `len(tokenizer)` before; the model's embedding must
then have that row, see `training.model`); one without a pad token pads with its eos. Its bos is
used when it has one (Llama 3: `<|begin_of_text|>`) and left out otherwise (Qwen2.5). Only
`training.data.encoding` builds prompts for it: its own post-processor (`tokenizer(text)`) is
left as the checkpoint made it. The adapted tokenizer is what a run saves (DIR/tokenizer,
final/), so evaluation prompts as training did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

ARCHS = ("seq2seq", "causal")
PAD, EOS, UNK, BOS, SEP = "<pad>", "</s>", "<unk>", "<s>", "<sep>"
PAD_ID, EOS_ID, UNK_ID, BOS_ID, SEP_ID = 0, 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class Specials:
    """The special token ids a student's rows are built with, read from its tokenizer.

    `sep_id` (`<sep>`, the causal prompt end) is None for a tokenizer without it (seq2seq);
    `bos_id` is None when the tokenizer has no bos (the causal prompt then starts with the input).
    """

    pad_id: int
    eos_id: int
    bos_id: int | None = None
    sep_id: int | None = None

    def source(self, content: list[int], arch: str) -> list[int]:
        """`content` as a model input: seq2seq `content </s>`, causal `[<s>] content <sep>`."""
        if arch == "seq2seq":
            return [*content, self.eos_id]
        check_arch(arch)
        if self.sep_id is None:
            raise ValueError(
                f"the tokenizer has no {SEP} token, which ends a causal prompt; adapt a pretrained "
                "tokenizer with training.data.adapt_pretrained(tokenizer, 'causal') first"
            )
        return [self.bos_id, *content, self.sep_id] if self.bos_id is not None else [*content, self.sep_id]

    def source_overhead(self, arch: str) -> int:
        """How many special ids `source` adds around the content."""
        return 1 if arch == "seq2seq" else 1 + (self.bos_id is not None)


def specials_of(tokenizer: Any) -> Specials:
    """The special ids of any tokenizer: pad (its eos when it has none), eos, bos, `<sep>`."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; a student must learn where an answer ends")
    pad = tokenizer.pad_token_id
    return Specials(
        pad_id=eos if pad is None else pad,
        eos_id=eos,
        bos_id=tokenizer.bos_token_id,
        sep_id=_token_id(tokenizer, SEP),
    )


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token`, None when the vocabulary lacks it (not the unk id)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
        return None
    return int(token_id)


def adapt_pretrained(tokenizer: Any, arch: str) -> Any:
    """Ready a pretrained tokenizer for a student of `arch`, in place (see the module docstring):
    a causal one gets `<sep>` when it lacks it, one without a pad token pads with its eos.
    ValueError when it has no eos or is not a fast (`tokenizer.json`) tokenizer."""
    check_arch(arch)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError("the tokenizer is not a fast one (no tokenizer.json); save it with tokenizer.json")
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no eos token; a student must learn where an answer ends")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if arch == "causal":
        if _token_id(tokenizer, SEP) is None:
            token = AddedToken(SEP, special=True, normalized=False)
            # Named `sep_token` when the slot is free (Qwen2.5, Llama 3); never replace another.
            added = {"sep_token": token} if tokenizer.sep_token is None else {"extra_special_tokens": [token]}
            tokenizer.add_special_tokens(added, replace_extra_special_tokens=False)
        tokenizer.padding_side = "left"  # batched generation, as the on-the-spot tokenizer does
    return tokenizer


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


def tokenizer_arch(tokenizer: Any) -> str:
    """`causal` when the tokenizer has the `<sep>` prompt end, else `seq2seq`."""
    return "causal" if _token_id(tokenizer, SEP) is not None else "seq2seq"


def _kpdd_arch(backend: Tokenizer) -> str | None:
    """The arch of a tokenizer `build_tokenizer` made (its special tokens at their fixed ids, a
    byte-level BPE), None for any other."""
    if not isinstance(backend.model, models.BPE) or not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    for arch in ("causal", "seq2seq"):  # causal's specials extend seq2seq's
        if all(backend.token_to_id(token) == i for i, token in enumerate(special_tokens(arch))):
            return arch
    return None


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Write the tokenizer (`tokenizer.json` and its config) into directory `path`."""
    tokenizer.save_pretrained(str(path))


def load_tokenizer(path: Path) -> Any:
    """Read a tokenizer from a local directory (`save_tokenizer`, or a model's `save_pretrained`):
    one `build_tokenizer` made is rebuilt as built (its template and padding side); any other is
    loaded with `AutoTokenizer`, local files only."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}/tokenizer.json not found: save the run's tokenizer there first")
    backend = Tokenizer.from_file(str(path / "tokenizer.json"))
    arch = _kpdd_arch(backend)
    if arch is not None:
        return _wrap(backend, arch)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def decode_text(tokenizer: Any, ids: Iterable[int]) -> str:
    """The text of generated ids: special tokens dropped, nothing else touched (no space cleanup)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
