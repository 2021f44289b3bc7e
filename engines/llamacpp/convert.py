"""GGUF files made by llama.cpp itself: from an HF directory (its ``convert_hf_to_gguf.py``) or requantized from
another GGUF (its library's ``llama_model_quantize``). Paths in, files out: the runner decides what is cached."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from engines.base import ConfigError, require
from engines.llamacpp import LLAMA_CPP


def gguf_ftype(quant_type: str) -> int:
    """llama.cpp's file-type number for a GGUF quantization name (q8_0, q4_k_m, f16, ...; any case)."""
    llama_cpp = require(LLAMA_CPP)
    ftypes = {name[len("LLAMA_FTYPE_MOSTLY_"):].lower(): getattr(llama_cpp, name)
              for name in dir(llama_cpp) if name.startswith("LLAMA_FTYPE_MOSTLY_")}
    ftypes["f32"] = llama_cpp.LLAMA_FTYPE_ALL_F32
    try:
        return ftypes[quant_type.lower()]
    except KeyError:
        raise ConfigError(f"engine.quant_type={quant_type}: not a llama.cpp GGUF type; "
                          f"known: {', '.join(sorted(ftypes))}") from None


def quantize(source: Path, out_file: Path, quant_type: str) -> None:
    """``source`` (a GGUF, possibly quantized already) at ``quant_type``, written to ``out_file``."""
    llama_cpp = require(LLAMA_CPP)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = gguf_ftype(quant_type)
    params.allow_requantize = True  # a quantized GGUF (e.g. the shipped Q4_1) may be the only source
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out_file).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {quant_type} (IQ types need an imatrix)")


def from_hf(hf_dir: str, out_file: Path, tool: Path, model_name: str) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py from ``tool`` (see ``fetch_convert_tool``) on a local HF directory
    (its default --outtype auto: the checkpoint's half precision)."""
    if importlib.util.find_spec("sentencepiece") is None:  # the script imports it for every Llama-type vocab
        raise ConfigError(f"model '{model_name}': converting to GGUF runs llama.cpp's convert_hf_to_gguf.py, "
                          "which needs sentencepiece: pip install sentencepiece (or set model.gguf)")
    path = os.pathsep.join([str(tool / "gguf-py"), str(tool), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(tool / "convert_hf_to_gguf.py"), hf_dir, "--outfile", str(out_file)],
                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir}: {last}")


def convert_tool_name() -> str:
    """The converter's cache name: the one from the installed llama-cpp-python's own sources."""
    return f"llama.cpp-{importlib.metadata.version('llama-cpp-python')}"


def fetch_convert_tool(out: Path) -> None:
    """llama.cpp's HF -> GGUF converter into ``out``, which the llama-cpp-python wheel leaves out.

    Taken from the sdist of the installed llama-cpp-python (its vendor/llama.cpp: the script, its ``conversion``
    package and ``gguf-py``), so the converter is the one the installed library reads.
    """
    version = importlib.metadata.version("llama-cpp-python")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        with tarfile.open(next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix):]
                       .split("/")[0] in ("convert_hf_to_gguf.py", "conversion", "gguf-py")]
            for member in members:
                member.name = member.name[len(prefix):]
            tar.extractall(out, members=members, filter="data")
