"""What the runner adds inside HF's (and ExLlamaV2's) decoding loop, measured in place: its step clock and its
memory sampler switched on and off within the same ``generate`` calls (issue 16).

A whole-run ratio of the runner to HF's bare loop (scripts/fidelity.py) is as noisy as the host when the engine
is bound by it: one thread's speed on the device's H200 varied 12-29 % from second to second. But only two
parts of the runner are live while HF decodes (everything else runs before or after the timed batches): the
step clock (engines/hf/engine.py ``_StepClock``, called by ``generate`` once per step) and the memory sampler
(runner/memory.py, a process of its own polling NVML and /proc). Here both run exactly as in the runner, and are
switched per block of a few decoding steps (the sampler by SIGSTOP / SIGCONT, sent at every block boundary in
every state alike): the four on/off combinations in a random order within each group of four consecutive
blocks (~1 s), so each group compares the four at one host speed. An effect is the mean over groups of the log
ratio of the blocks' mean step time, with a 95 % t interval; the runner's whole in-loop cost is both on against
both off. Each step is timed by the host clock, read in every state (eager HF waits for the device at every
step: generate's stopping check reads a device flag).

ExLlamaV2 (``--engine exllamav2``, its default unpaged path) has no hook: the runner's timing is its own decoding
loop. There the first factor is the step itself: the runner's (``_decode_step``: forward, pick, stamp, bookkeeping)
or ExLlamaV2's bare one (scripts/bare_loops.py), switched per block in the same loop over the same cache; both end
by copying the ids to the host, so the host clock at a step's end is the device's.

    python scripts/step_ab.py --engine hf --batch-size 1 --seconds 60 model=llama2-7b-random dataset=synthetic

Trailing key=value arguments are runner overrides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from fidelity import CONFIGS, DEFAULTS, compose  # noqa: E402

STATES = [(False, False), (True, False), (False, True), (True, True)]  # (clock, sampler)
HF_CONFIGS = [label for label in CONFIGS if label.startswith("hf")]


def effects(blocks: list[dict]) -> dict[str, dict]:
    """Per factor: the step-time slowdown (exp of the mean log ratio, minus 1) with a 95 % t interval over groups.
    ``blocks``: ``{"group", "clock", "sampler", "step_s"}``; a group without all four states is left out."""
    from runner.stats import t_half_width

    groups: dict[int, dict] = {}
    for b in blocks:
        groups.setdefault(b["group"], {})[(b["clock"], b["sampler"])] = math.log(b["step_s"])
    full = [g for g in groups.values() if len(g) == 4]
    per_group = {
        "clock": [((g[1, 0] - g[0, 0]) + (g[1, 1] - g[0, 1])) / 2 for g in full],
        "sampler": [((g[0, 1] - g[0, 0]) + (g[1, 1] - g[1, 0])) / 2 for g in full],
        "runner": [g[1, 1] - g[0, 0] for g in full],  # both, as the runner runs, against neither, as the bare loop
    }
    out = {}
    for name, values in per_group.items():
        mean = float(np.mean(values)) if values else float("nan")
        half = t_half_width(values) or 0.0  # not t_ci: that clips at 0 (rates), and a log ratio may be negative
        low, high = mean - half, mean + half
        out[name] = {"slowdown": math.expm1(mean), "ci_low": math.expm1(low), "ci_high": math.expm1(high)}
    levels = [np.mean(list(g.values())) for g in full]
    out["groups"] = len(full)
    out["between_groups_cv"] = float(np.std(levels, ddof=1)) if len(levels) > 1 else None  # the host's swings
    out["within_group_sd"] = float(np.std(per_group["runner"], ddof=1) / math.sqrt(2)) if len(full) > 1 else None
    return out


class Switchboard:
    """Stamps every decoding step (``tick``), and at each block boundary moves to the next state of a random order
    per group: (runner's part on, memory sampler on). The sampler is paused and resumed by signals."""

    def __init__(self, sampler_pid: int | None, block_steps: int, seed: int = 0):
        self.sampler_pid, self.block_steps = sampler_pid, block_steps
        self._rng = np.random.default_rng(seed)
        self.blocks: list[dict] = []
        self._order: list[tuple] = []
        self.state = STATES[0]

    def begin_call(self) -> None:
        self._stamp_count, self._last, self._block = 0, 0.0, None

    def _switch(self) -> None:
        if self._block is not None:  # a switch comes every block_steps stamps: the block is complete
            steps = self._block.pop("steps")[1:]  # the first step of a block carries the switch itself
            self.blocks.append({**self._block, "step_s": float(np.mean(steps))})
        if not self._order:
            self._order = [STATES[i] for i in self._rng.permutation(4)]
            self._group = len(self.blocks) // 4
        self.state = self._order.pop(0)
        if self.sampler_pid is not None:  # a signal at every boundary, in every state
            os.kill(self.sampler_pid, signal.SIGCONT if self.state[1] else signal.SIGSTOP)
        self._block = {"group": self._group, "clock": self.state[0], "sampler": self.state[1], "steps": []}

    def tick(self) -> tuple[bool, bool]:
        """A step just ended (the first stamp of a call: the prefill): the state the next step runs in."""
        stamp, self._stamp_count = time.perf_counter(), self._stamp_count + 1
        if self._stamp_count > 1:
            self._block["steps"].append(stamp - self._last)
        self._last = stamp
        if (self._stamp_count - 1) % self.block_steps == 0:
            self._switch()
        return self.state

    def end_call(self) -> float:
        """Drop the call's unfinished block and group; the seconds spent after the call (none here)."""
        self._order, self._block = [], None
        del self.blocks[len(self.blocks) // 4 * 4:]
        return 0.0


class HFSwitchboard(Switchboard):
    """generate's stopping criterion: ticks, and calls the runner's real step clock when the state says so."""

    def __init__(self, engine, batch_size: int, sampler_pid: int | None, block_steps: int, seed: int = 0):
        import torch

        from engines.hf.engine import _StepClock

        super().__init__(sampler_pid, block_steps, seed)
        self._make_clock = lambda: _StepClock(engine.device, batch_size)
        self._never = torch.zeros(batch_size, dtype=torch.bool, device=engine.device)

    def begin_call(self) -> None:
        super().begin_call()
        self.clock = self._make_clock()

    def __call__(self, input_ids, scores, **kwargs):
        if self.tick()[0]:
            self.clock(input_ids, scores)
        return self._never

    def end_call(self) -> float:
        """Also read the clock as the runner does after generate: the seconds that takes."""
        super().end_call()
        start = time.perf_counter()
        self.clock.step_times()
        return time.perf_counter() - start


def _hf_caller(engine, prompts: list[list[int]], sampler_pid: int | None):
    """(board, call(new_tokens) -> seconds after it): HF generate with the switchboard as its stopping criterion."""
    import torch
    from transformers import StoppingCriteriaList

    ids, mask = engine._left_pad(prompts)
    board = HFSwitchboard(engine, len(prompts), sampler_pid, block_steps=8)

    def call(new_tokens: int) -> float:
        board.begin_call()
        with torch.inference_mode():
            engine.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=engine.pad_id, **engine._cache_kwargs(),
                                  stopping_criteria=StoppingCriteriaList([board]))
        return board.end_call()

    return board, call


def _exllamav2_caller(engine, prompts: list[list[int]], sampler_pid: int | None):
    """The runner's unpaged ExLlamaV2 loop, each step either the runner's own (engine._decode_step: forward, pick,
    stamp, bookkeeping) or ExLlamaV2's bare step (scripts/bare_loops.py), as the state says."""
    import torch

    from bare_loops import exllamav2_step
    from engines.base import Generation, SamplingSpec

    if engine.config.paged:
        sys.exit("--engine exllamav2: engine.paged=true decodes through ExLlamaV2's generator; step_ab compares the "
                 "runner's own (unpaged) loop")
    board = Switchboard(sampler_pid, block_steps=8)

    def call(new_tokens: int) -> float:
        engine._ensure_cache(prompts, new_tokens)
        sampling = SamplingSpec(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        gens = [Generation(token_ids=[], token_times=[]) for _ in prompts]
        board.begin_call()
        with torch.inference_mode():  # as the engine's generate runs
            decoding = engine._prefill(prompts)
            state = board.tick()
            for _ in range(new_tokens):
                if state[0]:
                    engine._decode_step(decoding, sampling, gens)
                else:
                    decoding.last = exllamav2_step(engine, decoding.last, decoding.mask, decoding.offsets)
                state = board.tick()
        return board.end_call()

    return board, call


CALLERS = {**{label: _hf_caller for label in HF_CONFIGS}, "exllamav2": _exllamav2_caller}
RUNNER_PART = {**{label: "the step clock" for label in HF_CONFIGS},
               "exllamav2": "the runner's decoding step (against ExLlamaV2's bare step)"}


def measure(label: str, batch_size: int, seconds: float, block_s: float, overrides: list[str]) -> dict:
    from runner.memory import MemorySampler
    from runner.models import prepare
    from runner.plan import plan

    cfg = compose([*DEFAULTS, *CONFIGS[label], f"batch_size={batch_size}", f"dataset.limit={batch_size}", *overrides])
    work = plan(cfg)
    engine = work.engine_cls(cfg.engine)
    engine.load(prepare(cfg.model, work.engine_cls.model_format, cfg.cache_dir, work.model_variant).path)
    sampler = MemorySampler(cfg.measure.memory_sample_hz)
    sampler.start()
    try:
        board, call = CALLERS[label](engine, list(work.prompts[:batch_size]), sampler.pid)
        call(33)  # the first call pays for CUDA's lazy set-up: timing it made the blocks too short
        calibrate = time.perf_counter()
        call(33)
        step_s = (time.perf_counter() - calibrate) / 33
        board.block_steps = max(3, round(block_s / step_s))
        new_tokens = 4 * 4 * board.block_steps + 1  # four groups a call: a static cache's shape stays fixed
        call(new_tokens)  # warm-up (a compiled decode step compiles here), not counted
        board.blocks.clear()
        read_s, calls, end = [], 0, time.monotonic() + seconds
        while time.monotonic() < end:
            read_s.append(call(new_tokens))
            calls += 1
    finally:
        if sampler.pid is not None:
            os.kill(sampler.pid, signal.SIGCONT)
        sampler.stop()
        engine.close()
    sampled = sampler.fields()
    mean_step = float(np.mean([b["step_s"] for b in board.blocks]))
    return {"config": label, "batch_size": batch_size, "device": str(getattr(engine, "device", "cuda")),
            "block_steps": board.block_steps, "calls": calls, "new_tokens_per_call": new_tokens,
            "mean_step_ms": mean_step * 1e3,
            # the rate the sampler ran at (at most 10 Hz without a GPU), and its samples over what it would take
            # running throughout: about half, as it runs in half the blocks
            "memory_sample_hz": sampled["memory_sample_hz_target"],
            "sampler_running_share": sampled["memory_sample_hz_achieved"] / sampled["memory_sample_hz_target"],
            "clock_read_after_call_ms": float(np.mean(read_s)) * 1e3,
            "clock_read_share_of_call": float(np.mean(read_s)) / (mean_step * new_tokens),
            **effects(board.blocks), "blocks": board.blocks}


def pool(results: list[dict]) -> dict[tuple, dict]:
    """Several runs' blocks per (config, batch size) as one set of groups (each run's groups kept apart)."""
    blocks: dict[tuple, list] = {}
    for r in results:
        into = blocks.setdefault((r["config"], r["batch_size"]), [])
        offset = 1 + max((b["group"] for b in into), default=-1)
        into += [{**b, "group": b["group"] + offset} for b in r["blocks"]]
    return {key: effects(value) for key, value in blocks.items()}


def _share(e: dict) -> str:
    return f"{e['slowdown']:+.2%} [{e['ci_low']:+.2%}, {e['ci_high']:+.2%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="hf", choices=list(CALLERS))
    parser.add_argument("--batch-sizes", default="1")
    parser.add_argument("--seconds", type=float, default=60.0, help="timed generate calls per batch size")
    parser.add_argument("--block-s", type=float, default=0.1,
                        help="about this long a block of steps in one state (at least 3 steps): the host swings fast")
    parser.add_argument("--out", type=Path, help="write the raw figures here (.json)")
    parser.add_argument("--pool", type=Path, nargs="+", help="measure nothing: pool the groups of these --out files")
    args, overrides = parser.parse_known_args()
    if args.pool:
        for (label, batch_size), e in pool([r for f in args.pool for r in json.loads(f.read_text())]).items():
            print(f"{label} batch {batch_size}: {e['groups']} groups; {RUNNER_PART[label]} {_share(e['clock'])}, sampler "
                  f"{_share(e['sampler'])}, both {_share(e['runner'])}; runner / bare speed {1 / (1 + e['runner']['slowdown']):.3f} "
                  f"[{1 / (1 + e['runner']['ci_high']):.3f}, {1 / (1 + e['runner']['ci_low']):.3f}]")
        return
    results = []
    for batch_size in map(int, args.batch_sizes.split(",")):
        r = measure(args.engine, batch_size, args.seconds, args.block_s, overrides)
        if r["groups"] < 2:
            sys.exit(f"--seconds {args.seconds:g}: {r['groups']} complete group(s) of four blocks at batch {batch_size}, "
                     "no interval; give it more seconds")
        results.append(r)
        print(f"{r['config']} batch {batch_size} on {r['device']}: {r['groups']} groups of 4 blocks x {r['block_steps']} "
              f"steps, step {r['mean_step_ms']:.2f} ms (host swings between groups {r['between_groups_cv']:.1%}, "
              f"within a group {r['within_group_sd']:.1%}); slowdown of a step by {RUNNER_PART[r['config']]} {_share(r['clock'])}, "
              f"by the memory sampler at {r['memory_sample_hz']:g} Hz {_share(r['sampler'])}, by both (the runner "
              f"against the bare loop) {_share(r['runner'])}" + (f"; reading the clock after a call "
              f"{r['clock_read_after_call_ms']:.2f} ms ({r['clock_read_share_of_call']:.3%} of the call)"
              if r["config"] in HF_CONFIGS else ""), flush=True)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
