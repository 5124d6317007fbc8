"""Dataset snapshots: filtered, deduplicated, decontaminated, reproducible exports.

- `spec`: the export's specification (`ExportSpec`), canonical JSON, the snapshot id.
- `query`: the streaming SELECT over rationales, problems and corpora, grouped by problem.
- `filters`: per-problem exact/near-duplicate removal and the cap.
- `decontam`: n-gram overlap against evaluation sets, with a report of every dropped problem.
- `splits`: the per-problem split rule.
- `tasks`: student task rows (end-to-end, cascade) in the KPDD answer format.
- `writer`: Parquet / JSON-lines files with fixed schemas, in row groups.
- `manifest`: `manifest.json`, the dataset card, `verify_snapshot`.
- `snapshot`: orchestration (`export_snapshot`): temporary directory, atomic rename, db record.
"""
