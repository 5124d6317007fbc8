"""The student model and its tokenizer: loaded from a local directory, or built tiny from sizes.

- `model.path` set: weights and tokenizer from that Hugging Face directory, `local_files_only`
  (nothing is downloaded), in fp32 (DeepSpeed keeps fp32 master weights and casts for bf16).
  The tokenizer keeps its own special tokens (`training.data.adapt_pretrained`: a causal one
  gets `<sep>` when it lacks it, pad falls back to eos). The embedding is resized only when
  the tokenizer then has more tokens than it has rows: Qwen2.5's matrix has spare rows and is
  kept; Llama 3's is full and grows by one (the new row initialised from the old rows' mean
  and covariance). A seq2seq model's decoder starts from its config's `decoder_start_token_id`.
- `model.path` null: a tokenizer trained on the snapshot's training texts (`training.data`) and
  a model with random weights from the size fields, its vocabulary the tokenizer's real size.
  Built Llama/Qwen2 models tie their input and output embeddings (fewer parameters for tiny
  students); T5 always does.

The loss is not the model's: `token_loss_sum` returns the summed cross-entropy over the target
tokens, which the loop divides by the global step's target-token count.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from training.config import ModelConfig, TrainConfigError
from training.data.batching import IGNORE_INDEX
from training.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, Specials, adapt_pretrained, load_tokenizer

# The ids of a tokenizer `training.data.build_tokenizer` trained, by kind.
ON_THE_SPOT = {"seq2seq": Specials(PAD_ID, EOS_ID), "causal": Specials(PAD_ID, EOS_ID, BOS_ID, SEP_ID)}


def load_pretrained_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of `cfg.path`, adapted for a student of `cfg.kind` (`adapt_pretrained`)."""
    assert cfg.path is not None
    if not (Path(cfg.path) / "config.json").is_file():
        raise TrainConfigError(
            f"model.path {cfg.path}: not a local Hugging Face model directory (no config.json); download"
            " the model there first (e.g. `huggingface-cli download ORG/NAME --local-dir DIR`), or set"
            " model.path: null to build a model from the size fields"
        )
    try:
        if (Path(cfg.path) / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(Path(cfg.path))
        else:
            tokenizer = AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
        return adapt_pretrained(tokenizer, cfg.kind)
    except (OSError, ValueError) as exc:
        raise TrainConfigError(
            f"model.path {cfg.path}: its tokenizer cannot be used ({exc}); the directory needs the"
            " checkpoint's tokenizer files (tokenizer.json and tokenizer_config.json)"
        ) from exc


def _dropout(cfg: ModelConfig) -> dict[str, float]:
    if cfg.dropout is None:
        return {}
    return {"dropout_rate": cfg.dropout} if cfg.arch == "t5" else {"attention_dropout": cfg.dropout}


def build_model(cfg: ModelConfig, vocab_size: int, specials: Specials | None = None) -> PreTrainedModel:
    """The student in fp32 on the CPU (DeepSpeed moves it); seed torch first for equal inits.

    `vocab_size` is `len(tokenizer)`: a built model's vocabulary, and the fewest embedding rows a
    pretrained one may have (it is resized when it has fewer). `specials` are the tokenizer's
    (`specials_of`) a built model's config records; None: those of an on-the-spot tokenizer.
    """
    attention = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    ids = specials or ON_THE_SPOT[cfg.kind]
    if cfg.path is not None:
        loader = AutoModelForSeq2SeqLM if cfg.kind == "seq2seq" else AutoModelForCausalLM
        model = loader.from_pretrained(
            cfg.path, local_files_only=True, dtype=torch.float32, **attention, **_dropout(cfg)
        )
        if model.get_input_embeddings().weight.shape[0] < vocab_size:
            model.resize_token_embeddings(vocab_size)  # e.g. the tokenizer gained <sep>; never shrunk
    elif cfg.arch == "t5":
        config = T5Config(
            vocab_size=vocab_size,
            d_model=cfg.d_model,
            d_kv=cfg.d_model // cfg.heads,
            d_ff=cfg.ff,
            num_layers=cfg.layers,
            num_heads=cfg.heads,
            dropout_rate=cfg.dropout or 0.0,
            pad_token_id=ids.pad_id,
            eos_token_id=ids.eos_id,
            decoder_start_token_id=ids.pad_id,
            **attention,
        )
        model = T5ForConditionalGeneration(config)
    else:
        config_class, model_class = {
            "llama": (LlamaConfig, LlamaForCausalLM),
            "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        }[cfg.arch]
        config = config_class(
            vocab_size=vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.ff,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.kv_heads or cfg.heads,
            max_position_embeddings=cfg.max_positions,
            attention_dropout=cfg.dropout or 0.0,
            pad_token_id=ids.pad_id,
            bos_token_id=ids.bos_id,
            eos_token_id=ids.eos_id,
            tie_word_embeddings=True,
            **attention,
        )
        model = model_class(config)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False
    return model


def attention_implementation(model: PreTrainedModel) -> str:
    """The attention kernel transformers picked (or was told to use) for this model."""
    return str(model.config._attn_implementation)


def count_parameters(model: PreTrainedModel) -> int:
    """All parameters, each counted once (tied embeddings once). Under ZeRO-3 call it before
    `deepspeed.initialize`, which replaces the weights by empty partitions."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def token_loss_sum(model: torch.nn.Module, tensors: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Summed token cross-entropy (fp32) of one micro batch over its labelled target tokens.

    `model` is the DeepSpeed engine (or a bare model); `tensors` are `MicroBatch.tensors` on the
    device. Causal labels are aligned with `input_ids`, so logits at t predict the label at t+1;
    every sequence starts with its unlabelled prompt, so no prediction crosses a packed boundary.
    """
    inputs = dict(tensors)
    labels = inputs.pop("labels")
    if kind == "seq2seq":
        module = getattr(model, "module", model)
        inputs["decoder_input_ids"] = module.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(**inputs, use_cache=False).logits
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        labels = labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@torch.no_grad()
def greedy(
    model: PreTrainedModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    kind: str,
    specials: Specials,
    synced: bool = False,
) -> list[int]:
    """The greedy answer to one prompt (encoder input or causal prompt), without the prompt and
    the decoder start, stopping at `specials.eos_id` (the tokenizer's, `specials_of`). `synced`:
    every rank calls it on the same prompt (ZeRO-3 gathers weights collectively, so a rank that
    stopped early would hang the others)."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=specials.eos_id,
        pad_token_id=specials.pad_id,
        use_cache=True,
        synced_gpus=synced,
    )
    ids = out[0].tolist()
    return ids[len(prompt_ids) :] if kind == "causal" else ids[1:]
