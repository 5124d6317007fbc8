"""Student training: snapshot data to a trained Hugging Face model, on one CPU or many GPUs.

- `training.prepare`: check a run (config, snapshot) and write its run directory.
- `training.train`: the DeepSpeed entry point (`deepspeed ... --module training.train`).
- `config` (YAML dataclasses), `model` (build/load, token loss), `loop` (batch arithmetic and
  the loop), `checkpoint` (atomic, resumable checkpoints and final/), `metrics`, `hardware`.
- `training.data` (snapshot reading, tokenizer, batching) and `training.evaluate`.

Nothing here is imported by `services/`, `workers/` or `db/`.
"""
