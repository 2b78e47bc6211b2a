"""The command line: listings, one-line errors for user mistakes, and a real resumable run on SmolLM2-135M."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from zoo.predictor import ImportancePredictor, PredictorConfig

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_policies_lists_every_policy():
    result = run_cli("policies")
    assert result.exit_code == 0
    for name in ("full", "window", "streamingllm", "sepllm", "h2o", "snapkv", "tova", "rkv", "random", "dynts"):
        assert name in result.output


def test_tasks_lists_sources(tmp_path):
    (tmp_path / "math500.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    result = run_cli("tasks", "--data-dir", str(tmp_path))
    assert result.exit_code == 0
    for name in ("aime24", "aime25", "amc23", "gk23en", "math500", "gpqa_diamond"):
        assert name in result.output
    assert "HuggingFaceH4/MATH-500" in result.output and "missing aime24.jsonl" in result.output


def test_backends_say_what_is_missing():
    result = run_cli("backends")
    assert result.exit_code == 0
    assert "transformers" in result.output and "ready" in result.output
    assert "vllm" in result.output and "sglang" in result.output


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": "a", "prompt": "What is 2 + 3?", "answer": "5"}, {"id": "b", "prompt": "Name a color."}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


BAD_INPUTS = [
    (["--policy", "nope"], "unknown policy 'nope'"),
    (["--budget", "16", "--window", "32", "--policy", "window"], "--budget 16 must be larger than --window 32"),
    (["--policy", "dynts", "--model", "HuggingFaceTB/SmolLM2-360M-Instruct"],
     "dynts needs an importance predictor trained for HuggingFaceTB/SmolLM2-360M-Instruct"),
    (["--policy", "dynts", "--predictor", "/nonexistent/pred"], "no DynTS predictor at /nonexistent/pred"),
    (["--policy", "snapkv", "--policy-arg", "kernel_size=4"], "kernel_size must be an odd number"),
    (["--policy", "snapkv", "--policy-arg", "obs_window=abc"], "obs_window must be int"),
    (["--policy", "window", "--policy-arg", "colour=red"], "none of the chosen policies has an option 'colour'"),
    (["--policy", "window", "--mode", "paper"], "paper mode needs --trigger-len"),
    (["--policy", "window", "--mode", "paper", "--trigger-len", "64", "--ratio", "1.5"], "--ratio must be in [0, 1)"),
    (["--policy", "window", "--backend", "vllm"], "vLLM"),
    (["--policy", "window", "--backend", "sglang"], "SGLang"),
    (["--policy", "window", "--backend", "tgi"], "unknown backend 'tgi'"),
    (["--policy", "window", "--prompts", "/nonexistent.jsonl"], "cannot read prompts file"),
    (["--policy", "window", "--task", "aime99"], "unknown task 'aime99'"),
    (["--policy", "window", "--task", "math500", "--data-dir", "/nonexistent"], "no math500.jsonl in --data-dir"),
    (["--policy", "window", "--data-dir", "/tmp"], "--data-dir is for --task"),
    (["--policy", "window", "--temperature", "-1"], "--temperature must be >= 0"),
    (["--policy", "window", "--model", "./no/such/model"], "model path not found"),
    (["--policy", "window", "--budget", "40", "--window", "32"], "does not fit in --budget 40"),
    (["--policy", "window", "--tensor-parallel", "2"], "only --backend vllm runs tensor-parallel"),
    (["--policy", "window", "--tensor-parallel", "0"], "--tensor-parallel must be >= 1"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_red_line_and_exit_2(args, message, prompts, tmp_path):
    if "--prompts" not in args and "--task" not in args:
        args = [*args, "--prompts", str(prompts)]
    result = runner.invoke(app, ["run", *args, "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_unreadable_prompt_line_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json}\n')
    result = runner.invoke(app, ["run", "--policy", "window", "--prompts", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2 and f"{bad}:2: not valid JSON" in " ".join(result.output.split())


def test_predictor_for_another_model_is_refused(prompts, tmp_path):
    pred = tmp_path / "pred"
    ImportancePredictor(PredictorConfig("some-org/other-model", 128, [8, 4])).save(pred)  # tiny-reasoner width
    result = runner.invoke(
        app, ["run", "--policy", "dynts", "--predictor", str(pred), "--prompts", str(prompts), "--out", str(tmp_path)]
    )  # the default model is the tiny reasoner
    assert result.exit_code == 2
    assert "trained for some-org/other-model, not tiny-reasoner" in " ".join(result.output.split())


@pytest.mark.slow
@pytest.mark.smollm2
def test_run_writes_results_and_resumes(prompts, tmp_path):
    out = tmp_path / "runs"
    args = ["run", "-p", "full", "-p", "h2o", "--model", "smollm2-135m", "--prompts", str(prompts), "--out", str(out),
            "--budget", "72", "--window", "8", "--interval", "8", "--max-new-tokens", "40"]
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert "smollm2-135m on prompts.jsonl" in " ".join(first.output.split())
    dirs = sorted(out.iterdir())
    assert [d.name.split("-")[0] for d in dirs] == ["full", "h2o"]
    h2o = dirs[1]
    summary = json.loads((h2o / "summary.json").read_text())
    for key in ("config", "config_hash", "seed", "environment", "model", "metrics"):
        assert key in summary
    assert summary["environment"]["versions"]["torch"]
    assert summary["environment"]["hardware"]["cpu_count_logical"] >= 1
    assert summary["metrics"]["nvml"]["nvml"] in ("unavailable", "ok")
    samples = [json.loads(line) for line in (h2o / "samples.jsonl").read_text().splitlines()]
    assert [s["sample_id"] for s in samples] == ["a", "b"]
    assert samples[0]["answer"] == "5" and isinstance(samples[0]["correct"], bool)
    assert all(s["kv_peak_tokens"] <= 72 + 8 for s in samples)

    # interrupt: drop the summary and the last sample, then rerun -> only that sample is generated again
    (h2o / "summary.json").unlink()
    lines = (h2o / "samples.jsonl").read_text().splitlines()
    (h2o / "samples.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    second = run_cli(*args)
    assert second.exit_code == 0, second.output
    assert "resumed: 1 samples were already done" in second.output
    again = [json.loads(line) for line in (h2o / "samples.jsonl").read_text().splitlines()]
    assert [s["sample_id"] for s in again] == ["a", "b"]
    assert again[1]["output_ids"] == samples[1]["output_ids"]
    assert "already complete, reused" in second.output  # the full run was complete and is not redone


@pytest.mark.slow
def test_console_script_is_installed():
    script = shutil.which("dynts-bench") or str(Path(sys.executable).with_name("dynts-bench"))
    result = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "run" in result.stdout and "sweep" in result.stdout


@pytest.mark.slow
@pytest.mark.smollm2
def test_bench_prints_ratios_against_full(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--context", "96", "--steps", "12", "--repeats", "2", "--budget", "32",
                     "--interval", "4", "--window", "8", "-p", "window", "-p", "snapkv", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "speedup vs full" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert {r["policy"] for r in rows} == {"full", "window", "snapkv"}
    full = next(r for r in rows if r["policy"] == "full")
    assert len(full["step_ms_medians_per_repeat"]) == 2  # one median per repeat
    per_token = 46080  # SmolLM2-135M: 2 x 30 layers x 3 KV heads x 64 dims x 4 bytes
    assert full["kv_bytes_steady"] == (96 + 12 - 1) * per_token
    assert all(r["kv_bytes_steady"] == 36 * per_token for r in rows if r["policy"] != "full")


def test_bench_times_dynts_on_the_tiny_reasoner(tmp_path):
    """A 75-token vocabulary (random prompts must fit it) and the shipped predictor: dynts next to window."""
    from harness.runs.catalog import shipped_predictor

    out = tmp_path / "bench.json"
    result = run_cli("bench", "--model", "tiny-reasoner", "--context", "96", "--steps", "12", "--repeats", "1",
                     "--budget", "48", "--interval", "8", "--window", "16", "-p", "window",
                     "--predictor", str(shipped_predictor("tiny-reasoner")), "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = {r["policy"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"full", "window", "dynts"}
    per_token = 4096  # tiny reasoner: 2 x 4 layers x 4 KV heads x 32 dims x 4 bytes
    assert rows["full"]["kv_bytes_steady"] == (96 + 12 - 1) * per_token
    assert rows["dynts"]["kv_bytes_steady"] == rows["window"]["kv_bytes_steady"] == 56 * per_token
