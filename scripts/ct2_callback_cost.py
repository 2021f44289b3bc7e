"""What CTranslate2's per-token callback costs a call: ``generate_batch`` without a callback, with a callback that
only reads the clock, and with the same callback once its worker thread's Python state is kept alive (what the
engine does: engines/ctranslate2/engine.py ``_keep_thread_state``). Each is timed alternately, the medians compared.

    python scripts/ct2_callback_cost.py --batch-size 32 --rounds 15

On the tiny random Llama (hidden 64) the model's own step is short, so the callback's share shows; the same code
runs any ``model=`` the runner knows (trailing key=value arguments are runner model overrides, e.g. model=smollm2-135m).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]


def main() -> None:
    import ctranslate2
    from fidelity import compose

    from engines.ctranslate2.engine import _keep_thread_state
    from runner.models import prepare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    args, overrides = parser.parse_known_args()
    cfg = compose(["model=tiny-llama-random", *overrides])
    path = prepare(cfg.model, "ct2", None, "float32").path
    generator = ctranslate2.Generator(path, device="cpu", compute_type="float32", intra_threads=1)
    vocab = json.loads((Path(path) / "vocabulary.json").read_text())
    prompts = [[vocab[5 + (i * 7 + j) % 1000] for j in range(16)] for i in range(args.batch_size)]

    def clock_only(step) -> bool:
        time.perf_counter()
        return False

    def clock_kept(step) -> bool:
        _keep_thread_state()
        time.perf_counter()
        return False

    # once kept, a worker thread's state stays kept: the plain callback runs on a Generator (worker thread) of its own
    plain_generator = ctranslate2.Generator(path, device="cpu", compute_type="float32", intra_threads=1)
    sides = {"none": (generator, None), "clock only": (plain_generator, clock_only),
             "clock, state kept": (generator, clock_kept)}
    seconds = {name: [] for name in sides}
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, (gen, callback) in sides.items():
            seconds[name].append(_timed(gen, prompts, args.new_tokens, callback))
    calls = args.batch_size * args.new_tokens
    base = np.median(seconds["none"][1:])
    for name, values in seconds.items():
        median = np.median(values[1:])
        print(f"{name}: {median * 1e3:.1f} ms a generate_batch; the callback adds "
              f"{(median - base) / calls * 1e6:.2f} us a call")


def _timed(generator, prompts, new_tokens: int, callback) -> float:
    start = time.perf_counter()
    generator.generate_batch(prompts, max_length=new_tokens, min_length=new_tokens, sampling_topk=1,
                             include_prompt_in_result=False, callback=callback)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
