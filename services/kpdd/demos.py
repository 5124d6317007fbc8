"""Hand-written few-shot demonstrations: four GSM8K train problems with key-point rationales.

The questions are copied verbatim from GSM8K `train.jsonl` (lines 1, 2, 3 and 5); the key points,
the step-by-step solutions and the programs were written by hand for the prompts and checked
against the gold answers (a test runs the programs' arithmetic and compares). They are part of
every prompt's version: editing a demo changes the versions of the prompts that show it.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.kpdd.records import KeyPoints, Mode


@dataclass(slots=True, frozen=True)
class Demo:
    """One worked example, with both a CoT and a PoT solution."""

    source: str  # where the question comes from, for the record
    question: str
    core_question: str
    solving_info: tuple[str, ...]
    cot_steps: str
    answer: str
    program: str

    def key_points(self, mode: Mode) -> KeyPoints:
        if mode == "pot":
            return KeyPoints(self.core_question, list(self.solving_info), program=self.program)
        return KeyPoints(
            self.core_question,
            list(self.solving_info),
            solution_text=self.cot_steps,
            final_answer_text=self.answer,
        )


DEMOS: tuple[Demo, ...] = (
    Demo(
        source="gsm8k train.jsonl line 1",
        question=(
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
            "in May. How many clips did Natalia sell altogether in April and May?"
        ),
        core_question="How many clips did Natalia sell in April and May together?",
        solving_info=(
            "Natalia sold 48 clips in April.",
            "In May she sold half as many clips as in April.",
        ),
        cot_steps=(
            "In May Natalia sold half of 48 clips: 48 / 2 = 24 clips.\n"
            "Altogether she sold 48 + 24 = 72 clips in April and May."
        ),
        answer="72",
        program=(
            "clips_april = 48\n"
            "clips_may = clips_april / 2\n"
            "total_clips = clips_april + clips_may\n"
            "ans = total_clips"
        ),
    ),
    Demo(
        source="gsm8k train.jsonl line 2",
        question=(
            "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
            "babysitting. How much did she earn?"
        ),
        core_question="How much money did Weng earn for 50 minutes of babysitting?",
        solving_info=(
            "Weng earns $12 per hour.",
            "She babysat for 50 minutes.",
            "An hour has 60 minutes.",
        ),
        cot_steps=("Weng earns 12 / 60 = $0.2 per minute.\nFor 50 minutes she earned 0.2 * 50 = $10."),
        answer="10",
        program=(
            "hourly_rate = 12\n"
            "minutes_worked = 50\n"
            "rate_per_minute = hourly_rate / 60\n"
            "ans = rate_per_minute * minutes_worked"
        ),
    ),
    Demo(
        source="gsm8k train.jsonl line 3",
        question=(
            "Betty is saving money for a new wallet which costs $100. Betty has only half of the money "
            "she needs. Her parents decided to give her $15 for that purpose, and her grandparents "
            "twice as much as her parents. How much more money does Betty need to buy the wallet?"
        ),
        core_question="How much more money does Betty still need for the $100 wallet?",
        solving_info=(
            "The wallet costs $100.",
            "Betty has half of the money she needs.",
            "Her parents give her $15.",
            "Her grandparents give her twice as much as her parents.",
        ),
        cot_steps=(
            "Betty has 100 / 2 = $50.\n"
            "Her grandparents give her 15 * 2 = $30.\n"
            "She still needs 100 - 50 - 15 - 30 = $5."
        ),
        answer="5",
        program=(
            "wallet_cost = 100\n"
            "betty_savings = wallet_cost / 2\n"
            "parents_gift = 15\n"
            "grandparents_gift = parents_gift * 2\n"
            "ans = wallet_cost - betty_savings - parents_gift - grandparents_gift"
        ),
    ),
    Demo(
        source="gsm8k train.jsonl line 5",
        question=(
            "James writes a 3-page letter to 2 different friends twice a week.  How many pages does he "
            "write a year?"
        ),
        core_question="How many pages does James write in one year?",
        solving_info=(
            "Each letter has 3 pages.",
            "He writes to 2 friends.",
            "He writes twice a week.",
            "A year has 52 weeks.",
        ),
        cot_steps=(
            "Each time he writes 3 * 2 = 6 pages.\n"
            "Each week he writes 6 * 2 = 12 pages.\n"
            "In a year he writes 12 * 52 = 624 pages."
        ),
        answer="624",
        program=(
            "pages_per_letter = 3\n"
            "friends = 2\n"
            "times_per_week = 2\n"
            "weeks_per_year = 52\n"
            "ans = pages_per_letter * friends * times_per_week * weeks_per_year"
        ),
    ),
)
