"""The data side of student training: snapshot reading, tokenizer, encoding and batching.

`read_tasks` -> `build_tokenizer` -> `encode` -> `make_micro_batches`; see each module's
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
    build_tokenizer,
    decode_text,
    load_tokenizer,
    save_tokenizer,
    tokenizer_arch,
)

__all__ = [
    "ARCHS",
    "IGNORE_INDEX",
    "Encoded",
    "MicroBatch",
    "PackingAttention",
    "SnapshotError",
    "TaskExample",
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
    "tokenizer_arch",
]
