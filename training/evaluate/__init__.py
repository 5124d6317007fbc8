"""Student evaluation: generate on test items, parse, run programs in the sandbox, score.

    python -m training.evaluate --model DIR --items FILE.jsonl --out DIR \\
        [--layout end-to-end|two-stage|cascade] [--mode cot|pot] [--batch-size B] \\
        [--max-new-tokens N] [--device cpu|cuda] [--program-timeout S] [--json]

Modules: `items` (the items file), `student` (kpdd_student.json, layout/mode, loading),
`generation` (batched greedy generation behind the `GenerateFn` seam), `chain` (a layout's
stages), `judging` (the project's judges and the failure-kind policy), `report` (the output
files and the table), `run` (`evaluate`, `evaluate_items`), `__main__` (the CLI).
"""

from training.evaluate.errors import EvalError, EvalInputError, EvalRunError
from training.evaluate.generation import GenerateFn, Generation, StudentGenerator
from training.evaluate.items import EvalItem, items_from_records, read_items
from training.evaluate.judging import FAILURE_KINDS, PREDICTION_KINDS
from training.evaluate.run import EvalResult, evaluate, evaluate_items
from training.evaluate.student import StudentInfo, read_student_info

__all__ = [
    "FAILURE_KINDS",
    "PREDICTION_KINDS",
    "EvalError",
    "EvalInputError",
    "EvalItem",
    "EvalResult",
    "EvalRunError",
    "GenerateFn",
    "Generation",
    "StudentGenerator",
    "StudentInfo",
    "evaluate",
    "evaluate_items",
    "items_from_records",
    "read_items",
    "read_student_info",
]
