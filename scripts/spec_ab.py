"""Speculative decoding's speed-up on a machine that is not quiet: the same engine with and without
speculation, both loaded, timed in alternating passes (ABBA) over the same prompts, so that load drift hits
both alike. The runner's report pairs two runs measured one after the other; this is the check for when
another job shares the CPU.

    OMP_NUM_THREADS=1 python scripts/spec_ab.py --rounds 4 +experiment=speculative engine.speculative.method=prompt_lookup
    python scripts/spec_ab.py --rounds 4 +experiment=speculative engine=llamacpp engine.n_threads=1 \\
        engine.speculative.method=prompt_lookup

Prints each pass's output tok/s, the speed-up per round (spec / plain, passes of one round averaged) with its
95 % t-interval over rounds, the acceptance counts of all speculative passes, and whether every speculative
output equalled the plain one.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from engines.speculative import SpeculativeConfig
from runner.config import register_configs, to_bench_config
from runner.models import prepare
from runner.plan import plan
from runner.speculative import counts_fields, prepare_draft
from runner.stats import t_ci

CONF = Path(__file__).resolve().parent.parent / "conf"


def one_pass(engine, batches, sampling) -> tuple[float, list[list[int]]]:
    """Output tok/s of one pass over the batches, and the outputs."""
    outputs, start = [], time.perf_counter()
    for batch in batches:
        outputs += [g.token_ids for g in engine.generate(batch, sampling)]
    return sum(map(len, outputs)) / (time.perf_counter() - start), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    args, overrides = parser.parse_known_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = to_bench_config(compose("config", overrides=overrides))
    work = plan(cfg)
    path = prepare(cfg.model, work.engine_cls.model_format, cfg.cache_dir, work.model_variant).path
    spec = work.engine_cls(cfg.engine)
    prepare_draft(cfg, spec)
    plain = work.engine_cls(dataclasses.replace(cfg.engine, speculative=SpeculativeConfig()))
    # both at batch_size, as the runner pairs them (an engine that speculates one sequence at a time pays that)
    batches = [work.prompts[i:i + cfg.batch_size] for i in range(0, len(work.prompts), cfg.batch_size)]
    for engine in (plain, spec):
        engine.load(path)
        one_pass(engine, batches[:1], work.sampling)  # warm-up
    spec.take_spec_counts()
    ratios, exact = [], True
    for round_ in range(args.rounds):
        order = (plain, spec, spec, plain) if round_ % 2 == 0 else (spec, plain, plain, spec)
        rates = {id(plain): [], id(spec): []}
        for engine in order:
            rate, outputs = one_pass(engine, batches, work.sampling)
            rates[id(engine)].append(rate)
            if engine is plain:
                reference = outputs
            else:
                produced = outputs
        exact &= produced == reference
        ratio = (sum(rates[id(spec)]) / 2) / (sum(rates[id(plain)]) / 2)
        ratios.append(ratio)
        print(f"round {round_}: plain {rates[id(plain)]} tok/s, spec {rates[id(spec)]} tok/s, speed-up {ratio:.3f}")
    ci = t_ci(ratios)
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    print(f"speed-up {sum(ratios) / len(ratios):.3f}{interval} (95 % t over {len(ratios)} rounds); greedy output "
          f"identical in every round: {exact}; counts: {counts_fields(spec.take_spec_counts())}")
    plain.close()
    spec.close()


if __name__ == "__main__":
    main()
