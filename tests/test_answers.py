"""Scoring of reasoning outputs on hand-made cases, as a careful human would score them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.scoring.answers import GeneratedText, extract_choice, extract_math, last_boxed, score

MATH_CASES = [
    # (gold, output, correct, reason)
    ("12", "<think>7+5 is 12</think>The answer is \\boxed{12}.", True, "ok"),
    ("\\frac{3}{4}", "<think>6/8 = 3/4</think>\\boxed{\\dfrac{3}{4}}", True, "ok"),
    ("\\frac{3}{4}", "<think>..</think>So \\boxed{0.75}", True, "ok"),
    ("3\\sqrt{2}", "<think>sqrt 18</think>\\boxed{\\sqrt{18}}", True, "ok"),
    ("x^2+1", "<think>expand</think>\\boxed{1 + x^{2}}", True, "ok"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "</think>\\boxed{(3, \\pi/2)}", True, "ok"),
    ("5", "<think>2+3</think>\\boxed{6}", False, "wrong"),
    ("5", "<think>maybe \\boxed{5}</think> final: \\boxed{4}", False, "wrong"),  # only after </think> counts
    ("5", "<think>2+3=5</think>The answer is 5.", False, "no_box"),  # no box: no credit, no guessing
    ("5", "<think>2+3 = 5 so \\boxed{5} and then I keep", True, "ok"),  # untagged / unclosed: flagged only
    ("\\frac{1}{2}", "</think>\\boxed{\\frac{1}{2}}", True, "ok"),
    ("7", "</think>\\boxed{}", False, "no_box"),
]


@pytest.mark.parametrize("gold,output,correct,reason", MATH_CASES)
def test_math_scoring(gold, output, correct, reason):
    scored = score("math", gold, output)
    assert (scored.correct, scored.reason) == (correct, reason)


def test_unclosed_thinking_is_flagged_and_can_be_required():
    output = "<think>2+3 = 5 so \\boxed{5}"
    assert not score("math", "5", output).thinking_closed
    assert score("math", "5", output, require_think_close=True).reason == "unclosed_thinking"
    assert not score("math", "5", output, require_think_close=True).correct


def test_truncated_trace_is_wrong_even_with_a_box():
    cut = GeneratedText.of("<think>I guess \\boxed{5} but let me check whether", "length")
    scored = score("math", "5", cut)
    assert (scored.correct, scored.reason) == (False, "truncated")
    finished = GeneratedText.of("<think>ok</think>\\boxed{5}", "eos")
    assert score("math", "5", finished).correct


CHOICE_CASES = [
    ("C", "<think>A? no.</think> The answer is (C).", True),
    ("B", "<think>hmm</think>\\boxed{\\text{B}}", True),
    ("B", "<think>hmm</think>\\boxed{B}", True),
    ("A", "<think>(A) looks right</think> Final answer: D", False),
    ("A", "<think>thinking</think> I am not sure.", False),
]


@pytest.mark.parametrize("gold,output,correct", CHOICE_CASES)
def test_choice_scoring(gold, output, correct):
    assert score("choice", gold, output).correct is correct


def test_extraction_details():
    assert last_boxed("\\boxed{\\frac{1}{\\sqrt{2}}} and \\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("\\boxed{unbalanced") is None
    assert extract_math("no answer here").reason == "no_box"
    assert extract_choice("</think>nothing").answer is None


NUMBER_CASES = [
    ("4", "step a 1 + b 3 = 4 r1 4 . </think> answer 4", True, "ok"),
    ("4", "step a 1 + b 3 = 4 r1 4 . </think> answer 5", False, "wrong"),
    ("4", "step a 1 + b 3 = 4 r1 4 . step", False, "no_answer"),  # never closed: a digit inside does not count
    ("4", "</think> answer", False, "no_answer"),
]


@pytest.mark.parametrize("gold,output,correct,reason", NUMBER_CASES)
def test_number_scoring_reads_only_after_think(gold, output, correct, reason):
    scored = score("number", gold, output)
    assert (scored.correct, scored.reason) == (correct, reason)


def test_prompt_file_scoring_requires_a_closed_trace_from_thinking_models():
    from harness.scoring.answers import is_correct

    assert is_correct("4", "r1 4 . </think> answer 4", thinking=True)
    assert not is_correct("4", "step a 1 + b 3 = 4 r1 4", thinking=True)
    assert is_correct("4", "the answer is 4")  # a model that does not think: the last number


def test_a_script_piped_to_python_scores_with_math_verify(tmp_path: Path) -> None:
    """``python - <<EOF``: the caller's ``__main__`` is stdin, which a re-importing worker cannot read; 0.5 equals
    1/2 only symbolically, so the check needs the worker."""
    script = ("from harness.scoring.answers import score\n"
              "print(score('math', '\\\\frac{1}{2}', '</think> \\\\boxed{0.5}').correct)\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0 and done.stdout.split() == ["True"], done.stdout + done.stderr
