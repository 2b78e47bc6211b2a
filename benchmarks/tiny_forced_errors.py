"""Where a tiny reasoner breaks on more variables: teacher-forced next-token errors on its reference traces.

    OMP_NUM_THREADS=1 python -m benchmarks.tiny_forced_errors --model shipped=harness/tinyreasoner/model \
        --model extended=DIR --variables 13,14,15,17 --problems 50

For each number of variables, ``--problems`` generated problems (split ``forced``, seed 100 + variables) are fed
with their reference trace; a position is an error where the model's argmax differs from the trace's next token.
Errors are also counted where the token just read is a variable letter beyond ``m`` (the 13th, the training
defaults' last): copying the value of a variable the base training never showed. Greedy generation compounds any
one error, so "problems with an error" bounds what the model can answer.
"""

from __future__ import annotations

import argparse
import random

import torch

from harness.tinyreasoner.problems import Knobs, generate
from harness.tinyreasoner.vocab import EOS, VOCAB, encode, prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=DIR; repeatable")
    parser.add_argument("--variables", default="13,14,15,17", help="comma-separated variable counts")
    parser.add_argument("--problems", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import LlamaForCausalLM

    unseen = {chr(c) for c in range(ord("n"), ord("z") + 1)}
    models = {name: LlamaForCausalLM.from_pretrained(path).eval()
              for name, path in (spec.split("=", 1) for spec in args.model)}
    print("| variables | model | problems with an error | errors | of them: the value of a variable after m |")
    print("|---|---|---|---|---|")
    for count in (int(v) for v in args.variables.split(",")):
        for name, model in models.items():
            rng = random.Random(100 + count)
            wrong_problems = errors = unseen_errors = 0
            for _ in range(args.problems):
                problem = generate(rng.getrandbits(48), 0, "forced", Knobs(min_vars=count, max_vars=count))
                prompt = encode(prompt_tokens(problem.prompt))
                ids = prompt + encode([*problem.completion, EOS])
                with torch.no_grad():
                    predicted = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)
                wrong = [i for i in range(len(prompt) - 1, len(ids) - 1) if predicted[i] != ids[i + 1]]
                wrong_problems += bool(wrong)
                errors += len(wrong)
                unseen_errors += sum(VOCAB[ids[i]] in unseen for i in wrong)
            print(f"| {count} | {name} | {wrong_problems}/{args.problems} | {errors} | {unseen_errors} |", flush=True)


if __name__ == "__main__":
    main()
