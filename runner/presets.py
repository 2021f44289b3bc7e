"""Random-weights presets (``model.random``): a real architecture's exact shapes (runner.random_model builds them)."""

from __future__ import annotations

from dataclasses import dataclass

from engines.base import ConfigError


@dataclass(frozen=True)
class Preset:
    """LlamaConfig fields that give the shapes; the rest are LlamaConfig's defaults (as Llama-2's)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int = 32000
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5

    def n_params(self) -> int:
        """Parameters of the Llama model (untied embeddings, multi-head attention, RMSNorm weights)."""
        h, i = self.hidden_size, self.intermediate_size
        per_layer = 4 * h * h + 3 * h * i + 2 * h
        return 2 * self.vocab_size * h + self.num_hidden_layers * per_layer + h


PRESETS: dict[str, Preset] = {
    "llama2-7b": Preset(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
    # Llama-2's architecture, vocabulary and tokenizer at toy width: the CPU tests' model (~4.2M parameters).
    "tiny-llama": Preset(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=172),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"model.random={name}: unknown preset; presets: {', '.join(PRESETS)}") from None
