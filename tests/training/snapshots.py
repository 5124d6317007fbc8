"""Tiny valid snapshots for the training tests, written without a database.

`write_snapshot` writes what `kpdd export` would for a handful of hand-written key-point
rationales (each problem in CoT and PoT): `manifest.json` (snapshot id, spec, files with sha256,
manifest digest, so `verify_snapshot` passes) and the layout's task tables per split, with inputs
and targets formatted by `services.kpdd.formatting` exactly as the export formats them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from services.export.manifest import file_sha256, manifest_digest
from services.export.spec import snapshot_id
from services.kpdd.formatting import (
    format_core_question,
    format_key_points,
    format_key_points_target,
    format_solution,
    format_solving_info,
    format_student_input,
)
from services.kpdd.records import KeyPoints, Solution

# (question, core question, information, CoT steps, CoT answer, PoT program)
PROBLEMS: list[tuple[str, str, list[str], str, str, str]] = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
        " How many clips did Natalia sell altogether in April and May?",
        "How many clips did Natalia sell in April and May together?",
        ["She sold 48 clips in April.", "In May she sold half as many as in April."],
        "In May she sold 48 / 2 = 24 clips.\nAltogether she sold 48 + 24 = 72 clips.",
        "72",
        "april = 48\nmay = april / 2\nans = april + may",
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes of babysitting."
        " How much did she earn?",
        "How much did Weng earn for 50 minutes of babysitting?",
        ["She earns 12 dollars per hour.", "She babysat for 50 minutes."],
        "She earns 12 / 60 = 0.2 dollars per minute.\nFor 50 minutes she earned 0.2 * 50 = 10 dollars.",
        "10",
        "per_minute = 12 / 60\nans = per_minute * 50",
    ),
    (
        "Tom has 3 boxes with 7 apples in each box. He eats 4 apples. How many apples are left?",
        "How many apples does Tom have after eating 4?",
        ["There are 3 boxes.", "Each box has 7 apples.", "He eats 4 apples."],
        "He has 3 * 7 = 21 apples.\nAfter eating he has 21 - 4 = 17 apples.",
        "17",
        "apples = 3 * 7\nans = apples - 4",
    ),
    (
        "A shop sells pens at 2 dollars each. Mia buys 9 pens and pays with a 50 dollar bill."
        " How much change does she get?",
        "How much change does Mia get?",
        ["A pen costs 2 dollars.", "Mia buys 9 pens.", "She pays 50 dollars."],
        "The pens cost 9 * 2 = 18 dollars.\nHer change is 50 - 18 = 32 dollars.",
        "32",
        "cost = 9 * 2\nans = 50 - cost",
    ),
    (
        "A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours."
        " How far does it travel?",
        "What total distance does the train travel?",
        ["It goes 60 miles per hour for 3 hours.", "It goes 40 miles per hour for 2 hours."],
        "First it travels 60 * 3 = 180 miles.\nThen it travels 40 * 2 = 80 miles.\n"
        "In total it travels 180 + 80 = 260 miles.",
        "260",
        "first = 60 * 3\nsecond = 40 * 2\nans = first + second",
    ),
    (
        "Sara baked 24 cookies and gave a third of them to her neighbour."
        " How many cookies does she have left?",
        "How many cookies does Sara keep?",
        ["She baked 24 cookies.", "She gave away a third of them."],
        "She gave away 24 / 3 = 8 cookies.\nShe has 24 - 8 = 16 cookies left.",
        "16",
        "given = 24 / 3\nans = 24 - given",
    ),
    (
        "A garden has 5 rows of 12 tulips. 15 tulips are red and the rest are yellow. How many are yellow?",
        "How many tulips are yellow?",
        ["There are 5 rows.", "Each row has 12 tulips.", "15 tulips are red."],
        "There are 5 * 12 = 60 tulips.\nThe yellow ones are 60 - 15 = 45.",
        "45",
        "total = 5 * 12\nans = total - 15",
    ),
    (
        "James runs 3 sprints of 60 meters, 3 times a week. How many meters does he run a week?",
        "How many meters does James run in a week?",
        ["Each sprint is 60 meters.", "He runs 3 sprints per session.", "He has 3 sessions a week."],
        "Each session he runs 3 * 60 = 180 meters.\nA week he runs 180 * 3 = 540 meters.",
        "540",
        "session = 3 * 60\nans = session * 3",
    ),
    (
        "A book has 120 pages. Ali reads 15 pages a day. How many days does he need to finish it?",
        "How many days does Ali need to read the book?",
        ["The book has 120 pages.", "He reads 15 pages a day."],
        "He needs 120 / 15 = 8 days.",
        "8",
        "ans = 120 / 15",
    ),
    (
        "Lena has 4 packs of 6 stickers and buys 10 more stickers. How many stickers does she have?",
        "How many stickers does Lena have now?",
        ["She has 4 packs.", "Each pack has 6 stickers.", "She buys 10 more."],
        "The packs hold 4 * 6 = 24 stickers.\nShe now has 24 + 10 = 34 stickers.",
        "34",
        "packs = 4 * 6\nans = packs + 10",
    ),
]
VALIDATION_PROBLEMS = (8, 9)  # problem indexes in the validation split; the others are train
LAYOUT_TABLES = {
    "end-to-end": ("end_to_end",),
    "two-stage": ("key_points", "solution"),
    "cascade": ("core_question", "solving_info", "solution"),
}
TASK_SCHEMA = pa.schema(
    [
        ("rationale_id", pa.int64()),
        ("problem_id", pa.int64()),
        ("teacher", pa.string()),
        ("mode", pa.string()),
        ("input", pa.string()),
        ("target", pa.string()),
        ("split", pa.string()),
    ]
)


def _key_points(problem: int, mode: str) -> KeyPoints:
    _, core, info, steps, answer, program = PROBLEMS[problem]
    if mode == "pot":
        return KeyPoints(core, info, program=program)
    return KeyPoints(core, info, solution_text=steps, final_answer_text=answer)


def task_rows(table: str, problem: int, mode: str) -> tuple[str, str]:
    """(input, target) of one problem and mode in `table`, as the export formats them."""
    question = PROBLEMS[problem][0]
    kp = _key_points(problem, mode)
    solution = format_solution(Solution(kp.solution_text, kp.final_answer_text, kp.program))
    rows = {
        "end_to_end": (format_student_input("end-to-end", mode, question), format_key_points(kp)),
        "key_points": (
            format_student_input("key-points", mode, question),
            format_key_points_target(kp.core_question, kp.solving_info),
        ),
        "core_question": (
            format_student_input("core-question", mode, question),
            format_core_question(kp.core_question),
        ),
        "solving_info": (
            format_student_input("solving-info", mode, question, kp.core_question),
            format_solving_info(kp.solving_info),
        ),
        "solution": (
            format_student_input("solution", mode, question, kp.core_question, kp.solving_info),
            solution,
        ),
    }
    return rows[table]


def write_snapshot(root: Path, layout: str | None = "end-to-end", *, tables: tuple[str, ...] = ()) -> Path:
    """Write a snapshot of `layout` under `root` (created) and return it. `tables` overrides the
    task tables written; with `layout=None` the manifest names no layout (an old or hand-made
    snapshot), e.g. to make one holding the tables of two layouts."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for table in tables or LAYOUT_TABLES[layout or "end-to-end"]:
        for split in ("train", "validation"):
            rows = []
            for problem in range(len(PROBLEMS)):
                if (problem in VALIDATION_PROBLEMS) != (split == "validation"):
                    continue
                for mode_index, mode in enumerate(("cot", "pot")):
                    text, target = task_rows(table, problem, mode)
                    rationale = 2 * problem + mode_index + 1
                    rows.append((rationale, problem + 1, "sim:gold", mode, text, target, split))
            relative = f"data/{table}/{split}.parquet"
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            columns = list(zip(*rows, strict=True))
            pq.write_table(pa.Table.from_arrays([pa.array(c) for c in columns], schema=TASK_SCHEMA), path)
            files.append(
                {
                    "path": relative,
                    "role": "data",
                    "table": table,
                    "split": split,
                    "rows": len(rows),
                    "sha256": file_sha256(path),
                }
            )
    spec: dict[str, str] = {"format": "parquet", "note": "tests/training/snapshots.py"}
    if layout is not None:
        spec["layout"] = layout
    manifest = {
        "format_version": 1,
        "snapshot_id": snapshot_id(spec, {f["path"]: f["sha256"] for f in files}),
        "spec": spec,
        "files": files,
    }
    manifest["manifest_digest"] = manifest_digest(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return root
