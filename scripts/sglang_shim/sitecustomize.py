"""Put first on PYTHONPATH for SGLang on the GPU machine only (scripts/gpu_suite.sh does): every interpreter,
SGLang's spawned scheduler processes included, imports it at start.

SGLang 0.5.15 registers its own configs for model types that transformers 5.17 (the image's; SGLang pins 5.12.1)
already has, e.g. qwen3_asr, and transformers refuses a second registration: `import` of SGLang's engine fails
with "ValueError: 'qwen3_asr' is already used by a Transformers config". A text-only Llama needs neither
version of those configs, so the second registration is allowed to replace the first. A machine that installs
sglang==0.5.15 with its own transformers pin never needs this.
"""

try:
    from transformers.models.auto import configuration_auto

    _register = configuration_auto._LazyConfigMapping.register

    def _register_again(self, key, value, exist_ok=False):
        return _register(self, key, value, exist_ok=True)

    configuration_auto._LazyConfigMapping.register = _register_again
except ImportError:  # no transformers: nothing to patch
    pass
