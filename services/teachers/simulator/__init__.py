"""The teacher simulator: an HTTP server speaking the OpenAI Chat Completions and Anthropic
Messages wire formats well enough for the official SDKs, answering KPDD prompts from gold
solutions, with configurable latency, rate limits and reproducible faults.

Start it with `kpdd teacher-sim` (or `python -m services.teachers.simulator`), in a test with
`run_in_thread(SimulatorConfig(...))`, or as a child process with `spawn_simulator([...])`.
See docs/teachers_simulator.md.
"""

from services.teachers.simulator.bank import CorpusSource, ProblemBank, question_key
from services.teachers.simulator.config import SimulatorConfig
from services.teachers.simulator.faults import FAULT_HEADER, FaultRates, decide_fault, fingerprint
from services.teachers.simulator.process import SimulatorProcess, spawn_simulator
from services.teachers.simulator.server import SimulatorHandle, run_in_thread, serve

__all__ = [
    "FAULT_HEADER",
    "CorpusSource",
    "FaultRates",
    "ProblemBank",
    "SimulatorConfig",
    "SimulatorHandle",
    "SimulatorProcess",
    "decide_fault",
    "fingerprint",
    "question_key",
    "run_in_thread",
    "serve",
    "spawn_simulator",
]
