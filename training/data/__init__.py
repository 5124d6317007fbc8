"""The data side of student training: snapshot reading, tokenizer, encoding and batching.

`read_tasks` -> `build_tokenizer` (or a pretrained tokenizer through `adapt_pretrained`) ->
`encode` -> `make_micro_batches` (its `pad_id` from `specials_of(tokenizer)`); see each module's
docstring for its contract (`snapshot`, `tokenizer`, `encoding`, `batching`).
"""

from training.data.batching import (
    IGNORE_INDEX,
    MicroBatch,
    PackingAttention,
    block_causal_mask,
    make_micro_batches,
    packing_attention,
)
from training.data.encoding import (
    Encoded,
    causal_prompt_ids,
    encode,
    format_causal_prompt,
    source_ids,
    sources_ids,
)
from training.data.snapshot import (
    SnapshotError,
    TaskExample,
    read_manifest,
    read_tasks,
    snapshot_layouts,
)
from training.data.tokenizer import (
    ARCHS,
    Specials,
    adapt_pretrained,
    build_tokenizer,
    decode_text,
    load_tokenizer,
    save_tokenizer,
    specials_of,
    tokenizer_arch,
)

__all__ = [
    "ARCHS",
    "IGNORE_INDEX",
    "Encoded",
    "MicroBatch",
    "PackingAttention",
    "SnapshotError",
    "Specials",
    "TaskExample",
    "adapt_pretrained",
    "block_causal_mask",
    "build_tokenizer",
    "causal_prompt_ids",
    "decode_text",
    "encode",
    "format_causal_prompt",
    "load_tokenizer",
    "make_micro_batches",
    "packing_attention",
    "read_manifest",
    "read_tasks",
    "save_tokenizer",
    "snapshot_layouts",
    "source_ids",
    "sources_ids",
    "specials_of",
    "tokenizer_arch",
]
