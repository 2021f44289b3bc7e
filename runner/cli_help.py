"""``python -m runner --help``: the config groups a user picks from, and what each engine option installs.

Written from conf/ and the engine registry at the time it is asked, so it cannot go stale. Hydra's own
help (``--hydra-help``) stays available; its generated page titled the app "bench" and listed the internal
``schema/*`` groups that hold the typed configs.
"""

from __future__ import annotations

from pathlib import Path

USAGE = """\
llm-bench runner: the same model and prompts through LLM inference engines, measured per run.

  python -m runner [key=value ...]          one run (record under outputs/runs/)
  python -m runner -m key=a,b [key=c,d ...]  a sweep: one run per point (outputs/multirun/)
  python -m runner --cfg job [overrides]    print the composed config and exit
  python -m runner --hydra-help             Hydra's own flags

Examples:
  python -m runner engine=llamacpp batch_size=4
  python -m runner -m engine=hf,llamacpp batch_size=1,4,16 isolation=worker
  python -m runner dataset=file 'dataset.path="my prompts.jsonl"'
"""


def _options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _engine_line(conf_dir: Path, option: str) -> str:
    """An engine option and the install command of each optional package it needs (none: built in)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from engines import get_engine_class

    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        engine = OmegaConf.to_object(compose("config", overrides=[f"engine={option}"]).engine)
    needs = get_engine_class(engine.name).requirements(engine)
    return f"    {option:<12} " + ("; ".join(r.install for r in needs) if needs else "installed with the runner")


def help_text(conf_dir: Path) -> str:
    lines = [USAGE, "Config groups (pick one option: group=option):"]
    lines.append("  engine (optional packages it needs):")
    lines += [_engine_line(conf_dir, option) for option in _options(conf_dir, "engine")]
    for group in ("model", "dataset", "scenario"):
        lines.append(f"  {group + ':':<9} {', '.join(_options(conf_dir, group))}")
    lines.append(f"  {'launcher:':<9} hydra/launcher={', '.join(_options(conf_dir, 'hydra/launcher'))} "
                 "(pip install -e '.[launchers]', '.[ray]', '.[submitit]')")
    lines += ["", "Top-level keys: batch_size, generation.*, measure.*, isolation (process | worker | none), timeout_s,",
              "resume, outputs_root, cache_dir. Every key, its type and default: python -m runner --cfg job.",
              "Unknown keys and bad values are refused in one line (exit 2). README.md explains every field."]
    return "\n".join(lines)
