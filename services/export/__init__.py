"""Dataset snapshots: filtered, deduplicated, decontaminated, reproducible exports.

- `spec`: the export's specification (`ExportSpec`), canonical JSON, the snapshot id.
- `query`: the streaming SELECT over rationales, problems and corpora, as Arrow batches of whole
  problems.
- `filters`: per-problem exact/near-duplicate removal and the cap.
- `decontam`: n-gram overlap against evaluation sets, with a report of every dropped problem.
- `splits`: the per-problem split rule.
- `tasks`: student task rows (end-to-end, two-stage, cascade) in the KPDD answer format, each
  input headed by its task and mode.
- `writer`: Parquet / JSON-lines files with fixed schemas, in row groups.
- `manifest`: `manifest.json`, the dataset card, `verify_snapshot`.
- `builder`: one batch at a time through the filters, the split, the counts and the writers.
- `snapshot`: orchestration (`export_snapshot`): temporary directory, atomic rename, db record.
"""
