"""The manifest, the dataset card, and `verify`.

`manifest.json` is the machine-readable record of a snapshot: the snapshot id, the exact filter
specification, counts by split, corpus, teacher, mode and verdict, what each filter dropped, the
prompt versions, the decontamination report, the student input format (`student_inputs`: its
version, the header line's shape, each task table's task), the column schema of every table, and
for every file (data files and the card) its path, role, row count, size and sha256. It holds no
wall-clock time and no absolute path, so the whole directory (manifest included) is identical
for the same database state and filters; the export's time and place are in the database row.

`verify_snapshot` recomputes every file's sha256 and reports, by file name, a file that differs
from the manifest, one that is missing, one that is not in the manifest, and a manifest whose
snapshot id no longer matches its own spec and data hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from services.errors import BadInputError
from services.export.spec import canonical_json, snapshot_id
from services.export.writer import TASK_TEXTS, table_columns
from services.kpdd.formatting import (
    LAYOUT_TASKS,
    STUDENT_HEADER_PATTERN,
    STUDENT_INPUT_VERSION,
    student_header,
    task_table,
)

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT_VERSION = 1

CORPUS_LICENCES = {
    "gsm8k": "MIT (OpenAI, grade-school-math)",
    "svamp": "MIT (Patel et al., 2021)",
    "asdiv": "CC BY-NC 4.0 (Miao et al., ACL 2020): non-commercial use only",
    "multiarith": "from Roy & Roth (EMNLP 2015), as redistributed by Kojima et al. (2022)",
}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dump_json(document: Any) -> bytes:
    """The manifest's bytes: sorted keys, two-space indent, UTF-8, a final newline."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def schema_json(tables: tuple[str, ...]) -> dict[str, list[dict[str, str]]]:
    return {
        table: [
            {"name": name, "type": str(kind), "description": doc} for name, kind, doc in table_columns(table)
        ]
        for table in tables
    }


def student_inputs_json(layout: str) -> dict[str, Any]:
    """The manifest's `student_inputs`: the version of the student input format, the shape of
    the header line every input starts with, and the task of each task table of the layout."""
    return {
        "format_version": STUDENT_INPUT_VERSION,
        "header": STUDENT_HEADER_PATTERN,
        "tasks": {task_table(task): task for task in LAYOUT_TASKS[layout]},
    }


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own `manifest_digest` field: an edit
    to any field (counts, reports) that forgets to recompute it is caught by `verify`. It guards
    against accidents, not against someone who recomputes it; the database keeps the sha256 of
    the manifest file as written."""
    body = {k: v for k, v in manifest.items() if k != "manifest_digest"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def data_hashes(files: list[dict[str, Any]]) -> dict[str, str]:
    return {str(f["path"]): str(f["sha256"]) for f in files if f.get("role") == "data"}


# --- the dataset card ------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _count_table(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return []
    return [f"**By {title}**", "", *_table([title, "rows"], [[k, f"{v:,}"] for k, v in counts.items()]), ""]


def _listing(values: list[Any]) -> str:
    return ", ".join(f"`{v}`" for v in values) if values else "all"


def render_card(manifest: dict[str, Any]) -> str:
    """The dataset card (`README.md`) for a human, from the manifest alone (so it is as
    reproducible as the manifest). YAML front matter lists the files per table and split, so the
    Hugging Face hub and `datasets` see each table as a configuration."""
    spec = manifest["spec"]
    counts = manifest["counts"]
    filters = manifest["filters"]
    decontam = manifest["decontamination"]
    data_files = [f for f in manifest["files"] if f["role"] == "data"]
    tables = list(dict.fromkeys(f["table"] for f in data_files))

    lines = ["---", f"pretty_name: kpdd snapshot {manifest['snapshot_id']}", "configs:"]
    for table in tables:
        lines += [f"- config_name: {table}", "  data_files:"]
        for f in data_files:
            if f["table"] == table:
                lines += [f"  - split: {f['split']}", f"    path: {f['path']}"]
    lines += ["---", "", f"# KPDD rationale snapshot `{manifest['snapshot_id']}`", ""]
    lines += [
        "Key-point-driven rationales for math word problems, exported by `kpdd export`. Each",
        "rationale pairs a problem (question and gold answer) with a teacher model's key points: the",
        "**core question** the problem asks, the **problem-solving information** it needs, and a",
        "step-by-step **solution**, either Chain-of-Thought text ending in a final answer (`cot`) or",
        "a Python program that stores the answer in `ans` (`pot`, executed in a sandbox to judge",
        "it). The verdict says whether the answer matched the gold answer (or, for a corpus without",
        "answers, the teachers' consensus).",
        "",
        f"Layout `{spec['layout']}`, format `{spec['format']}`. Splits are by problem: no problem is in two",
        "splits.",
        "",
        "## Contents",
        "",
    ]
    split_rows = [[s, f"{c['rows']:,}", f"{c['problems']:,}"] for s, c in counts["by_split"].items()]
    lines += [*_table(["split", "rationales", "problems"], split_rows), ""]
    for title, key in (
        ("corpus", "by_corpus"),
        ("teacher", "by_teacher"),
        ("mode", "by_mode"),
        ("verdict", "by_verdict"),
    ):
        lines += _count_table(title, counts[key])
    versions = manifest["prompt_versions"]
    lines += _count_table("prompt version", versions)

    select = spec["select"]
    dedupe = spec["dedupe"]
    splits = spec["splits"]
    lines += [
        "## How it was built",
        "",
        f"- Jobs: {_listing(select['jobs'])}; corpora: {_listing(select['corpora'])}; "
        f"teachers: {_listing(select['teachers'])}; modes: {_listing(select['modes'])}.",
        f"- Verdicts: {'valid only' if select['verdict'] == 'valid' else 'all'} "
        f"(available before this filter: {_inline_counts(filters['available_by_verdict'])}).",
        "- Duplicates: "
        + (
            f"exact (whitespace-normalised) and near (token 3-gram Jaccard >= {dedupe['near_threshold']}) "
            f"solutions removed per problem and mode: {filters['exact_duplicates']:,} exact, "
            f"{filters['near_duplicates']:,} near."
            if dedupe["enabled"]
            else "kept."
        ),
        "- Cap: "
        + (
            f"at most {spec['max_per_problem']} per problem and mode, distinct solutions first, then "
            f"the lowest sample index ({filters['over_cap']:,} over the cap)."
            if spec["max_per_problem"]
            else "none."
        ),
        f"- Splits: validation fraction {splits['val_fraction']} by sha256 of seed `{splits['seed']}` "
        "and the normalised question.",
        "",
        "### Decontamination",
        "",
    ]
    if decontam["datasets"]:
        lines += [
            f"A problem is dropped when at least {decontam['threshold']} of its question's distinct word "
            f"{decontam['ngram']}-grams occur in one evaluation question. "
            f"Checked {decontam['checked_problems']:,} problems; dropped {decontam['dropped_problems']:,} "
            f"problems ({decontam['dropped_rationales']:,} rationales). Every dropped problem, with the "
            "evaluation item it matched, is listed in "
            "`manifest.json` under `decontamination.dropped`.",
            "",
            *_table(
                ["evaluation set", "source", "items", "sha256"],
                [
                    [d["name"], d["source"], f"{d['items']:,}", f"`{d['sha256'][:16]}...`"]
                    for d in decontam["datasets"]
                ],
            ),
            "",
        ]
    else:
        lines += ["None requested: this snapshot was not checked against evaluation sets.", ""]
    lines += _student_tasks(spec["layout"], manifest["student_inputs"])
    lines += ["## Files", ""]
    lines += _table(
        ["path", "rows", "sha256"],
        [[f"`{f['path']}`", f"{f['rows']:,}", f"`{f['sha256']}`"] for f in data_files],
    )
    lines += ["", "## Columns", ""]
    for table, columns in manifest["schema"].items():
        lines += [f"`{table}`:", ""]
        lines += _table(
            ["column", "type", "meaning"], [[f"`{c['name']}`", c["type"], c["description"]] for c in columns]
        )
        lines.append("")
    first = data_files[0]["path"] if data_files else "data/rationales/train.parquet"
    reader = "parquet" if spec["format"] == "parquet" else "json"
    lines += [
        "## Loading",
        "",
        "```python",
        "import pyarrow.parquet as pq" if reader == "parquet" else "import json",
        f'rows = pq.read_table("{first}").to_pylist()'
        if reader == "parquet"
        else f'rows = [json.loads(line) for line in open("{first}")]',
        "",
        "from datasets import load_dataset  # optional",
        f'ds = load_dataset("{reader}", data_files={{"train": "{first}"}})',
        "```",
        "",
        "## Integrity and reproducibility",
        "",
        "`kpdd snapshot verify DIR` checks every file against `manifest.json` (sha256) and reports any",
        "file that was changed, removed or added. The same database state and the same filters give",
        f"byte-identical files (with pyarrow {manifest['software']['pyarrow']}) and the same snapshot id.",
        "",
        "## Sources and licences",
        "",
        "The problems keep their source corpora's licences; teacher outputs are subject to their",
        "providers' terms.",
        "",
    ]
    for corpus in counts["by_corpus"]:
        licence = next((v for k, v in CORPUS_LICENCES.items() if corpus.lower().startswith(k)), None)
        lines.append(f"- `{corpus}`: {licence or 'see the source of this corpus'}")
    return "\n".join(lines) + "\n"


def _student_tasks(layout: str, student_inputs: dict[str, Any]) -> list[str]:
    tasks = LAYOUT_TASKS[layout]
    first = tasks[0]
    lines = [
        "## Student tasks",
        "",
        f"Layout `{layout}` has the task table{'s' if len(tasks) > 1 else ''} "
        + ", then ".join(f"`{task_table(task)}`" for task in tasks)
        + (
            " (in inference order: each task's output is part of the next one's input)."
            if len(tasks) > 1
            else "."
        ),
        f"Every `input` starts with a header line naming its task and the solution wanted, "
        f"`{student_inputs['header']}` (e.g. `{student_header(first, 'cot')}` or "
        f"`{student_header(first, 'pot')}`; input format version {student_inputs['format_version']}), "
        "then the body in the format of the teacher prompts: `Problem:` and the question, then the "
        "earlier tasks' outputs the task is given (table below). "
        "Targets are the matching part of the KPDD answer format, so a student's output parses "
        "with the teachers' parser.",
        "",
    ]
    rows = [[f"`{task_table(task)}`", f"`{task}`", *TASK_TEXTS[task]] for task in tasks]
    return [*lines, *_table(["table", "task", "input (after the header)", "target"], rows), ""]


def _inline_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


# --- verify ----------------------------------------------------------------------------------


@dataclass(slots=True)
class VerifyReport:
    """The outcome of `verify_snapshot`: `ok` when every file matches and nothing is extra."""

    path: str
    snapshot_id: str | None
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "snapshot_id": self.snapshot_id,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "problems": self.problems,
        }


def _safe_relative(text: str) -> bool:
    path = PurePosixPath(text)
    return bool(text) and not path.is_absolute() and ".." not in path.parts


def verify_snapshot(root: Path) -> VerifyReport:
    """Check a snapshot directory against its manifest. A missing directory is bad input
    (BadInputError); everything else is reported in the VerifyReport, file by file."""
    if not root.is_dir():
        raise BadInputError(f"{root}: no such snapshot directory")
    report = VerifyReport(str(root), None)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        report.problems.append(f"{MANIFEST}: missing")
        return report
    try:
        manifest = json.loads(manifest_path.read_bytes())
        files = manifest["files"]
        report.snapshot_id = str(manifest["snapshot_id"])
        spec = manifest["spec"]
        entries = [(str(f["path"]), str(f["sha256"])) for f in files]
    except (ValueError, KeyError, TypeError) as exc:
        report.problems.append(f"{MANIFEST}: not a kpdd snapshot manifest ({exc.__class__.__name__}: {exc})")
        return report
    listed = set()
    for relative, expected in entries:
        listed.add(relative)
        if not _safe_relative(relative):
            report.problems.append(f"{MANIFEST}: lists a path outside the snapshot: {relative!r}")
            continue
        path = root / relative
        if not path.is_file():
            report.problems.append(f"{relative}: missing")
            continue
        report.files_checked += 1
        actual = file_sha256(path)
        if actual != expected:
            report.problems.append(
                f"{relative}: sha256 {actual[:16]}... differs from the manifest's {expected[:16]}..."
            )
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(root).as_posix()
        if relative != MANIFEST and relative not in listed:
            report.problems.append(f"{relative}: not in the manifest (added after export)")
    if snapshot_id(spec, data_hashes(files)) != report.snapshot_id:
        report.problems.append(
            f"{MANIFEST}: the snapshot id does not match its spec and file hashes (edited)"
        )
    elif manifest.get("manifest_digest") != manifest_digest(manifest):
        report.problems.append(f"{MANIFEST}: its content does not match its manifest_digest (edited)")
    return report


__all__ = [
    "CARD",
    "MANIFEST",
    "VerifyReport",
    "data_hashes",
    "dump_json",
    "file_sha256",
    "manifest_digest",
    "render_card",
    "schema_json",
    "student_inputs_json",
    "verify_snapshot",
]
