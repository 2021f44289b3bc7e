"""What slowed the runner's HF figure? HF ``generate`` alone, then with one part of the old measurement added
at a time, rounds alternated, output tok/s of each (issue 16: the runner read 0.81-0.83x of a bare loop).

Variants (the same loaded model, prompts, forced length):
  bare                 model.generate(min_new_tokens=N), nothing else
  streamer             + a streamer stamping each step (generate copies every step's tokens to the host for it)
  events               + the runner's clock now: a stopping criterion recording a CUDA event per step
  thread_sampler       + the old memory sampler: NVML and process-tree RSS read 100 times a second in a thread
  process_sampler      + the sampler now: the same readings in a process of its own

    python scripts/hf_timing_ablation.py --batch-sizes 1,16 --rounds 3 model=llama2-7b-random \\
        dataset=synthetic generation.max_new_tokens=200 engine.dtype=float16
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]


class _Streamer:
    """The runner's old clock: a streamer; ``generate`` calls put(tokens.cpu()) every step."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


class _ThreadSampler:
    """The old sampler: runner.memory's readings from a thread of this process, 100 times a second."""

    def __init__(self, hz: float = 100.0):
        from runner.memory import _Readings

        self.readings, self.interval, self.stop_event = _Readings(os.getpid(), exclude=-1), 1 / hz, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop_event.wait(self.interval):
            self.readings.sample()

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join()


def main() -> None:
    import torch
    from fidelity import compose
    from transformers.generation.stopping_criteria import StoppingCriteriaList

    from engines.hf.engine import _StepClock
    from runner.measure import chunk
    from runner.memory import MemorySampler
    from runner.models import prepare
    from runner.plan import plan

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1")
    parser.add_argument("--batches", type=int, default=2, help="batches per pass (prompts: batch size x this)")
    parser.add_argument("--rounds", type=int, default=3)
    args, overrides = parser.parse_known_args()
    sizes = list(map(int, args.batch_sizes.split(",")))
    cfg = compose([f"dataset.limit={max(sizes) * args.batches}", "engine=hf", *overrides])
    work = plan(cfg)
    engine = work.engine_cls(cfg.engine)
    engine.load(prepare(cfg.model, "hf", cfg.cache_dir).path)
    model, n = engine.model, cfg.generation.max_new_tokens

    def generate(batch, **extra):
        ids, mask = engine._left_pad(batch)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=engine.pad_id, **extra)
        engine.synchronize()

    variants = {  # name: (extra generate arguments for a batch, the sampler running around the pass)
        "bare": (lambda b: {}, None),
        "streamer": (lambda b: {"streamer": _Streamer()}, None),
        "events": (lambda b: {"stopping_criteria": StoppingCriteriaList([_StepClock(engine.device, len(b))])}, None),
        "thread_sampler": (lambda b: {}, _ThreadSampler),
        "process_sampler": (lambda b: {}, lambda: MemorySampler(100.0)),
    }
    for batch_size in sizes:
        prompts = work.prompts[:batch_size * args.batches]
        batches = chunk(prompts, batch_size)
        generate(batches[0])  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds):
            for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
                extra, make_sampler = variants[name]
                sampler = make_sampler() if make_sampler else None
                if sampler:
                    sampler.start()
                start = time.perf_counter()
                for batch in batches:
                    generate(batch, **extra(batch))
                seconds = time.perf_counter() - start
                if sampler:
                    sampler.stop()
                rates[name].append(n * len(prompts) / seconds)
        base = np.mean(rates["bare"])
        print(f"batch {batch_size}, {len(prompts)} prompts x {n} tokens, {args.rounds} rounds:")
        for name, values in rates.items():
            print(f"  {name:<16} {np.mean(values):9.1f} tok/s  x{np.mean(values) / base:.3f} of bare  "
                  f"(rounds: {', '.join(f'{v:.1f}' for v in values)})", flush=True)


if __name__ == "__main__":
    main()
