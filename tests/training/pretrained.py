"""Local "pretrained" model directories whose tokenizers are not kpdd's, built without downloads.

Each is what `save_pretrained` writes for a real checkpoint, shrunk: a tokenizer trained here
with `tokenizers` and wrapped in `PreTrainedTokenizerFast`, and a model with random weights.

- `qwen_like`: byte-level BPE, `<|endoftext|>` (eos and pad) at a high id after the merges, no
  bos, chat tokens as extra special tokens, like Qwen2.5; a Qwen2 model whose embedding has
  `SPARE_ROWS` rows more than the tokenizer (Qwen2.5-0.5B: 151,936 rows, 151,665 tokens).
- `llama_like`: byte-level BPE with `<|begin_of_text|>` (bos) and `<|end_of_text|>` (eos) at
  high ids and no pad token, like Llama 3.2; a Llama model with exactly one row per token
  (Llama 3.2: 128,256 of each), so adding `<sep>` must grow it.
- `t5_like`: a Unigram tokenizer with T5's conventions (`<pad>` 0, `</s>` 1, `<unk>` 2,
  metaspace pre-tokenizer, no bos) and a T5 model with spare rows (T5: 32,128 rows, 32,100
  tokens), decoder starting from `<pad>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

SPARE_ROWS = 16
SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def _byte_bpe(texts: Sequence[str], vocab_size: int, specials: Sequence[str]) -> Tokenizer:
    """A byte-level BPE trained without special tokens; `specials` added after the merges, so
    their ids come last (as in Qwen2.5 and Llama 3)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return backend


def qwen_like(directory: Path, texts: Sequence[str]) -> Path:
    backend = _byte_bpe(texts, 500, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer) + SPARE_ROWS,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=eos,  # as Qwen2.5's config.json, though its tokenizer adds no bos
        eos_token_id=eos,
        tie_word_embeddings=True,
        **SIZES,
    )
    Qwen2ForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def llama_like(directory: Path, texts: Sequence[str]) -> Path:
    backend = _byte_bpe(texts, 500, ["<|begin_of_text|>", "<|end_of_text|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        clean_up_tokenization_spaces=False,
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **SIZES,
    )
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def t5_like(directory: Path, texts: Sequence[str]) -> Path:
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.Replace("\n", " ")  # T5's vocabulary has no newline either
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer) + SPARE_ROWS,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
