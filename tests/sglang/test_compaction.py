"""Compaction inside SGLang's real pools, batch and attention backend (CPU), with the plugin's hooks applied
through SGLang's own ``HookRegistry``: every expectation is computed from logical positions and the tokens'
own vectors, never from the adapter's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed here: backends/sglang/install_cpu_env.sh makes its venv")

import torch  # noqa: E402

from backends.sglang import plugin  # noqa: E402
from tests.sglang.pools import HEAD_DIM, LAYERS, Pools, rope  # noqa: E402
from zoo.base import CacheView, Policy  # noqa: E402
from zoo.schedule import EvictionSchedule  # noqa: E402

SCHEDULE = EvictionSchedule(budget=24, window=4, interval=4)


@dataclass
class EvenRecent(Policy):
    """Keeps even logical positions first, each parity most recent first: a kept set with holes, known exactly."""

    name = "even-recent"

    def score(self, view: CacheView) -> torch.Tensor:
        return view.positions.float() + 10_000.0 * (view.positions % 2 == 0)


def expected_kept(logical: list[int], prompt: int, schedule: EvictionSchedule) -> list[int]:
    """The logical positions ``EvenRecent`` keeps out of ``logical``: prompt + window, then evens, then odds."""
    must = {p for p in logical if p < prompt} | set(logical[-schedule.window :])
    rest = sorted((p for p in logical if p not in must), key=lambda p: (p % 2 == 0, p), reverse=True)
    return sorted(must | set(rest[: schedule.budget - len(must)]))


@pytest.fixture(scope="module", autouse=True)
def hooks():
    plugin.load()
    yield
    plugin._RUNTIME = None


def configure(pools: Pools, policy: Policy | None = None):
    return plugin.configure(policy or EvenRecent(), None, pools.rtp, pools.pool, pools.alloc, pools.server_args)


def row(pools: Pools, req) -> torch.Tensor:
    return pools.rtp.req_to_token[req.kv.req_pool_idx, : int(req.kv.kv_committed_len)].long()


def logical_len(req) -> int:
    """Tokens whose KV has been computed: prompt + every output token but the last (not yet fed back)."""
    return len(req.origin_input_ids) + len(req.output_ids) - 1


def test_compaction_remaps_slots_frees_them_and_keeps_positions_logical():
    pools = Pools()
    runtime = configure(pools)
    req = pools.request("a", list(range(10, 18)), SCHEDULE)  # 8 prompt tokens
    batch = pools.prefill([req])
    logical = list(range(logical_len(req)))
    compactions = 0
    for _ in range(40):
        held = int(batch.seq_lens_cpu[0])
        before_row = row(pools, req).clone()
        free_before = pools.alloc.available_size()
        fb = pools.decode(batch)
        st = runtime.requests["a"]
        if held >= SCHEDULE.budget + SCHEDULE.interval:  # compacted in prepare_for_decode's BEFORE hook
            compactions += 1
            kept = expected_kept(logical, 8, SCHEDULE)
            kept_index = torch.tensor([logical.index(p) for p in kept])
            dropped = held - len(kept)
            # freed slots back in the allocator: + dropped, - the one slot this decode step allocated
            assert pools.alloc.available_size() == free_before + dropped - 1
            new_row = row(pools, req)
            assert new_row[: len(kept)].tolist() == before_row[kept_index].tolist()
            gone = set(before_row.tolist()) - set(new_row.tolist())
            assert len(gone) == dropped
            assert gone <= set(pools.alloc.free_pages.tolist())
            logical = kept
        else:
            assert pools.alloc.available_size() == free_before - 1
        logical.append(logical_len(req) - 1)  # the token this step fed (its KV was just written)
        # lengths are physical everywhere SGLang counts them; the position handed to RoPE is logical
        physical = len(logical)
        assert int(batch.seq_lens[0]) == int(batch.seq_lens_cpu[0]) == physical == st.physical
        assert req.kv.kv_committed_len == req.kv.kv_allocated_len == physical
        assert int(fb.positions[0]) == logical[-1] == len(req.origin_input_ids) + len(req.output_ids) - 2
        # relocation exact per slot: the pool slot of each survivor still holds that token's rotated key/value
        track = pools.tracks["a"]
        slots = row(pools, req)
        for layer in range(LAYERS):
            keys = pools.pool.get_key_buffer(layer)[slots]
            values = pools.pool.get_value_buffer(layer)[slots]
            want_k = rope(torch.stack([track.tokens[p].k[layer] for p in logical]), torch.tensor(logical))
            want_v = torch.stack([track.tokens[p].v[layer] for p in logical])
            torch.testing.assert_close(keys, want_k)
            torch.testing.assert_close(values, want_v)
    assert compactions >= 5
    assert st.compressions == compactions


def test_attention_over_the_compacted_pool_is_attention_over_the_kept_tokens():
    pools = Pools(seed=1)
    configure(pools)
    req = pools.request("a", list(range(20, 26)), SCHEDULE)
    batch = pools.prefill([req])
    for _ in range(30):
        fb = pools.decode(batch)
    assert runtime_compressions(req) > 0
    track = pools.tracks["a"]
    slots = row(pools, req)
    logical = [pos_of(pools, track, s) for s in slots.tolist()]
    query_pos = int(fb.positions[0])
    assert query_pos == logical[-1]
    for layer in range(LAYERS):
        # independent expectation: plain softmax attention, keys/values of the kept logical tokens, RoPE at
        # their logical positions, the query rotated at its own logical position
        q = rope(track.tokens[query_pos].q[layer][None], torch.tensor([query_pos]))[0]  # [H, D]
        k = rope(torch.stack([track.tokens[p].k[layer] for p in logical]), torch.tensor(logical))  # [T, H, D]
        v = torch.stack([track.tokens[p].v[layer] for p in logical])
        weights = torch.softmax(torch.einsum("hd,thd->ht", q, k) / HEAD_DIM**0.5, dim=-1)
        want = torch.einsum("ht,thd->hd", weights, v)
        torch.testing.assert_close(pools.outputs[layer][0], want, rtol=1e-5, atol=1e-5)


def runtime_compressions(req) -> int:
    return plugin.runtime().requests[req.rid].compressions


def pos_of(pools: Pools, track, slot: int) -> int:
    """The logical position of the token whose rotated key sits in pool ``slot`` (found by content)."""
    key = pools.pool.get_key_buffer(0)[slot]
    for token in track.tokens:
        if torch.allclose(rope(token.k[0][None], torch.tensor([token.position]))[0], key):
            return token.position
    raise AssertionError(f"slot {slot} holds no key of this request")


def test_two_requests_compact_independently():
    pools = Pools(seed=2)
    runtime = configure(pools)
    a = pools.request("a", list(range(10, 16)), SCHEDULE)  # 6 prompt tokens: triggers first
    b = pools.request("b", list(range(30, 33)), SCHEDULE)  # 3 prompt tokens
    batch = pools.prefill([a, b])
    seen_alone = False
    for _ in range(40):
        held = [int(x) for x in batch.seq_lens_cpu]
        rows_before = [row(pools, r).clone() for r in (a, b)]
        pools.decode(batch)
        due = [h >= SCHEDULE.budget + SCHEDULE.interval for h in held]
        for r, d, before in zip((a, b), due, rows_before):
            now = row(pools, r)
            if d:
                assert len(now) == SCHEDULE.budget + 1
            else:  # untouched by the other's compaction: the same row plus this step's slot
                assert now[:-1].tolist() == before.tolist()
        seen_alone |= due[0] != due[1]
    assert seen_alone
    assert runtime.requests["a"].compressions > 0 and runtime.requests["b"].compressions > 0


@pytest.mark.parametrize("how", ["finished", "aborted"])
def test_a_request_released_mid_way_leaves_no_state(how):
    pools = Pools(seed=3)
    runtime = configure(pools)
    a = pools.request("a", list(range(10, 16)), SCHEDULE)
    b = pools.request("b", list(range(30, 37)), SCHEDULE)
    batch = pools.prefill([a, b])
    for _ in range(25):
        pools.decode(batch)
    assert runtime.requests["a"].compressions > 0
    held = int(a.kv.kv_committed_len)
    free_before = pools.alloc.available_size()
    rows_before = pools.rtp.available_size()
    if how == "aborted":
        from sglang.srt.managers.schedule_batch import FINISH_ABORT

        a.finished_reason = FINISH_ABORT("client went away")
    else:
        from sglang.srt.managers.schedule_batch import FINISH_LENGTH

        a.finished_reason = FINISH_LENGTH(length=len(a.output_ids))
        a.finished_len = len(a.output_ids)
    pools.release(a)  # SGLang's release_kv_cache: our BEFORE hook forgets the request
    assert "a" not in runtime.requests
    assert pools.alloc.available_size() == free_before + held  # exactly its physical slots come back
    assert pools.rtp.available_size() == rows_before + 1
    batch.filter_batch(keep_indices=[1])
    for _ in range(10):
        pools.decode(batch)  # the other request keeps compacting on its own
    assert int(batch.seq_lens_cpu[0]) == runtime.requests["b"].physical
    # a new request reusing the row starts from a clean state
    c = pools.request("c", list(range(40, 44)), SCHEDULE)
    pools.prefill([c])
    assert runtime.requests["c"].physical == 4 and runtime.requests["c"].dropped == 0


def test_requests_without_our_options_and_engines_without_a_policy_are_untouched():
    pools = Pools(seed=4)
    plugin.configure(None, None, pools.rtp, pools.pool, pools.alloc, pools.server_args)
    assert plugin.runtime() is None
    req = pools.request("a", list(range(10, 16)), SCHEDULE)
    batch = pools.prefill([req])
    for _ in range(40):
        fb = pools.decode(batch)
    assert int(batch.seq_lens_cpu[0]) == logical_len(req) == int(fb.positions[0]) + 1  # vanilla: full cache


def test_unsupported_engine_arguments_are_refused_with_one_line():
    from backends.base import BackendError

    pools = Pools(seed=5)
    for key, value in (("disable_radix_cache", False), ("disable_overlap_schedule", False), ("page_size", 16)):
        args = {**{k: getattr(pools.server_args, k) for k in ("disable_radix_cache", "disable_overlap_schedule",
                                                              "page_size")}, key: value}
        with pytest.raises(BackendError, match=key.replace("_", "-")) as err:
            plugin.configure(EvenRecent(), None, pools.rtp, pools.pool, pools.alloc, args)
        assert "\n" not in str(err.value)
