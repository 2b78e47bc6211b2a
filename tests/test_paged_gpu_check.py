"""``benchmarks/paged_gpu_check.py`` (the lent GPU machine's compaction check, torch only) runs here with the CPU
standing in for the GPU: every case passes, and a compaction that moved the wrong tokens fails its line."""

from __future__ import annotations

from unittest import mock

import benchmarks.paged_gpu_check as check


def test_every_stride_order_and_dtype_passes_with_the_cpu_standing_in(capsys):
    assert check.main(["--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * len(check.STRIDE_ORDERS) and all(line.startswith("PASS") for line in lines)


def test_a_wrong_move_fails_the_check(capsys):
    import backends.vllm.layouts as layouts

    def moves_nothing(self, plan):
        return None

    with mock.patch.object(layouts.DenseStore, "move", moves_nothing):
        assert check.main(["--device", "cpu"]) == 1
    assert "WRONG tokens" in capsys.readouterr().out


def test_without_a_gpu_it_says_so_in_one_line(capsys):
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert check.main([]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().out
