"""HF -> CTranslate2 with CTranslate2's own converter. Paths in, a directory out: the runner decides what is cached."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from engines.base import require
from engines.ctranslate2 import CTRANSLATE2


def from_hf(hf_dir: str, out: Path, quantization: Optional[str], trust_remote_code: bool) -> None:
    """Convert the HF directory into ``out``, weights stored at ``quantization`` (None: as they are).

    generation_config.json goes along so the engine stops on the same EOS ids as the HF engine.
    """
    from transformers import AutoTokenizer

    ctranslate2 = require(CTRANSLATE2)
    copy = [name for name in ("generation_config.json",) if (Path(hf_dir) / name).is_file()]
    ctranslate2.converters.TransformersConverter(
        hf_dir, copy_files=copy, trust_remote_code=trust_remote_code,
    ).convert(str(out), quantization=quantization, force=True)
    # The engine feeds token strings from vocabulary.json by position, so position must be the
    # tokenizer's id; the converter sorts the vocabulary by id, which gaps in the ids would shift.
    tokens = json.loads((out / "vocabulary.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=trust_remote_code)
    if tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) != tokens[:len(tokenizer)]:
        raise ValueError(f"{hf_dir}: CTranslate2's vocabulary does not follow the tokenizer's ids")
