"""A tiny offline causal LM and tokenizer, for tests, the CPU demo and the credit gym.

    build_tiny_qwen2(path, corpus, vocab_size=300, hidden=32, layers=2, seed=0) -> path

Trains a byte-level BPE on ``corpus`` with the same pre-tokenizer as Qwen2 (digits split one by
one, so ids survive transformers' reload of a qwen2 folder), builds a random-init
``Qwen2ForCausalLM`` and saves both with ``save_pretrained``. Nothing is downloaded. Special
tokens: ``<|endoftext|>`` (pad), ``<|im_end|>`` (eos).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["build_tiny_qwen2", "load_tiny"]

PAD, EOS = "<|endoftext|>", "<|im_end|>"


def build_tiny_qwen2(
    path: str | Path,
    corpus: Iterable[str],
    vocab_size: int = 300,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> Path:
    """Train the tokenizer on ``corpus``, build the model, save both under ``path``; return it."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    path = Path(path)
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    state = bpe.model.__getstate__()
    import json

    model_json = json.loads(state)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model_json["vocab"], merges=merges, eos_token=EOS, pad_token=PAD, unk_token=PAD)
    tokenizer.save_pretrained(path)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def load_tiny(path: str | Path):
    """(model in eval mode, tokenizer) from a folder written by :func:`build_tiny_qwen2`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, tokenizer
