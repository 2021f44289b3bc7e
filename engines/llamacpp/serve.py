"""``python -m engines.llamacpp.serve <llama_cpp.server arguments>``: llama-cpp-python's OpenAI-compatible
server, with llama.cpp's extra CPU buffer types set as the offline engine sets them.

The server has no flag for ``llama_model_params.use_extra_bufts``, and on a CPU with AMX its default (on)
segfaults at the first request (engines/llamacpp/engine.py: use_extra_buffers). LLM_BENCH_LLAMACPP_EXTRA_BUFFERS
("1" / "0", set by the serving backend) replaces the default parameters the server's Llama class asks for.
"""

import os
import runpy

import llama_cpp.llama_cpp as lib

_flag = os.environ.get("LLM_BENCH_LLAMACPP_EXTRA_BUFFERS")
if _flag is not None:
    _defaults = lib.llama_model_default_params

    def _model_params():
        params = _defaults()
        params.use_extra_bufts = _flag == "1"
        return params

    lib.llama_model_default_params = _model_params  # llama_cpp.Llama looks it up on this module per model

runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
