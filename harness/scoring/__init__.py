"""Judging generated text: answer extraction, symbolic checking (math-verify, in a worker), pass@k."""
