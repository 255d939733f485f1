"""A CPU rollout for verl's V1 agent loop: Hugging Face sampling with a KV cache (``rollout.name=hf_cpu``).

verl 0.9.1's rollouts need vLLM, SGLang or TRT-LLM servers. The V1 agent loop only needs, per
replica, a Ray actor with ``generate(request_id, prompt_ids, sampling_params, ...) -> TokenOutput``
plus the replica's control calls; the actor workers feed it the trained weights through
``BaseRollout.update_weights`` (verl's ``update_weights(mode="naive")`` path). This module provides
those three pieces:

    HFCPUServer   Ray actor: the model (loaded from ``actor_rollout_ref.model.path``), ancestral
                  sampling with temperature / top-k / top-p and a KV cache, one request at a time;
                  ``log_probs`` are those of the sampled tokens under the temperature-scaled
                  distribution (what verl's engine computes for ``old_log_probs``).
    HFCPUReplica  ``RolloutReplica``: one server per replica, named ``verl_credit_hf_cpu_{rank}``.
    HFCPURollout  ``BaseRollout`` inside each actor worker: collects the full weights (every rank
                  walks verl's generator, which gathers FSDP shards collectively) and the first
                  rank of each replica loads them into that replica's server.

Registered by :func:`register` under ``hf_cpu`` in verl's ``RolloutReplicaRegistry`` and
``_ROLLOUT_REGISTRY``. Sampling is seeded by (``rollout.seed``, weight version, prompt, k-th request
for that prompt), so a run is reproducible whatever verl's random request ids. It is sequential: a
correctness check for tiny models, not a serving engine. Multi-modal inputs are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import ray
import torch
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

logger = logging.getLogger(__name__)

__all__ = ["ROLLOUT_NAME", "HFCPUServer", "HFCPUReplica", "HFCPURollout", "register", "sample"]

ROLLOUT_NAME = "hf_cpu"


def _server_name(replica_rank: int) -> str:
    return f"verl_credit_hf_cpu_{replica_rank}"


def _seed(base: int, key: str) -> int:
    digest = hashlib.sha256(f"{base}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)


@torch.no_grad()
def sample(
    model,
    prompt_ids: list[int],
    max_tokens: int,
    eos_ids: set[int],
    temperature: float,
    top_k: int,
    top_p: float,
    generator,
) -> tuple[list[int], list[float]]:
    """Ancestral sampling with a KV cache: (token ids, log-probs of the sampled tokens).

    ``temperature == 0`` is greedy (log-probs of the untempered distribution). ``top_k <= 0`` and
    ``top_p >= 1`` disable those filters. Stops after an id in ``eos_ids`` (kept) or ``max_tokens``.
    """
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    out = model(input_ids=ids, use_cache=True)
    past, logits = out.past_key_values, out.logits[0, -1].float()
    tokens, logps = [], []
    for _ in range(max_tokens):
        scaled = logits / temperature if temperature > 0 else logits
        logp = torch.log_softmax(scaled, dim=-1)
        if temperature > 0:
            keep = torch.ones_like(logp, dtype=torch.bool)
            if top_k and top_k > 0:
                kth = torch.topk(logp, min(top_k, logp.numel())).values[-1]
                keep &= logp >= kth
            if top_p < 1.0:
                order = torch.argsort(logp, descending=True)
                cum = torch.cumsum(logp[order].exp(), 0)
                drop = cum - logp[order].exp() >= top_p  # keep the smallest prefix reaching top_p
                keep[order[drop]] = False
            probs = torch.where(keep, logp.exp(), torch.zeros_like(logp))
            token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
        else:
            token = int(torch.argmax(logp))
        tokens.append(token)
        logps.append(float(logp[token]))
        if token in eos_ids:
            break
        out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1].float()
    return tokens, logps


class HFCPUServer:
    """One replica's server (a Ray actor; see the module docstring)."""

    def __init__(self, config, model_config, replica_rank: int = 0):
        from transformers import AutoModelForCausalLM
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig, RolloutConfig

        from verl_credit.cpu.platform import limit_threads

        limit_threads()
        config = omega_conf_to_dataclass(config, dataclass_type=RolloutConfig)
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.config, self.replica_rank = config, replica_rank
        path = model_config.local_path
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        tokenizer = model_config.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = {int(e) for e in eos} | (
            {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
        )
        self.max_model_len = int(config.max_model_len or (config.prompt_length + config.response_length))
        self.lock = asyncio.Lock()
        self.weight_version = 0
        self.seen: dict[tuple[int, ...], int] = {}  # prompt -> requests so far under these weights

    def address(self) -> str:
        return _server_name(self.replica_rank)

    def load_weights(self, state: dict, version: int) -> int:
        """Load full (HF-named) weights; returns how many tensors were loaded."""
        result = self.model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        missing = set(result.missing_keys) - tied
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"hf_cpu rollout: weights do not match the model (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]})"
            )
        self.weight_version = version
        self.seen.clear()
        return len(state)

    async def generate(self, request_id, prompt_ids, sampling_params, image_data=None, video_data=None, **kwargs):
        if image_data or video_data or kwargs.get("audio_data"):
            raise ValueError("the hf_cpu rollout is text-only")
        max_tokens = min(int(self.config.response_length), self.max_model_len - len(prompt_ids))
        if max_tokens <= 0:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room under max_model_len {self.max_model_len}"
            )
        # reproducible runs: the k-th request for a prompt under given weights gets the same seed
        # whatever verl's (random) request ids and the order of arrival
        key = tuple(int(t) for t in prompt_ids)
        k = self.seen.get(key, 0)
        self.seen[key] = k + 1
        seed_key = f"{self.weight_version}:{k}:{hashlib.sha256(repr(key).encode()).hexdigest()}"
        generator = torch.Generator().manual_seed(_seed(int(self.config.get("seed", 0) or 0), seed_key))
        async with self.lock:  # one request at a time; yield to the event loop between requests
            tokens, logps = await asyncio.to_thread(
                sample,
                self.model,
                list(prompt_ids),
                max_tokens,
                self.eos_ids,
                float(sampling_params.get("temperature", 1.0)),
                int(sampling_params.get("top_k", -1) or -1),
                float(sampling_params.get("top_p", 1.0)),
                generator,
            )
        return TokenOutput(
            token_ids=tokens,
            log_probs=logps if sampling_params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.weight_version},
        )

    # the replica's control calls: nothing to free or restore on the CPU
    async def wake_up(self):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def abort_all_requests(self, reject_request: bool = False):
        return None

    async def resume_generation(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


class HFCPUReplica(RolloutReplica):
    """One :class:`HFCPUServer` per replica (see the module docstring)."""

    async def launch_servers(self):
        server = (
            ray.remote(HFCPUServer)
            .options(name=_server_name(self.replica_rank), num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(self.config, self.model_config, self.replica_rank)
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = await server.address.remote()


class HFCPURollout(BaseRollout):
    """The worker side: hands the actor's weights to this replica's server."""

    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh, *args, **kwargs)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        c = self.config
        size = c.tensor_model_parallel_size * c.data_parallel_size * c.pipeline_model_parallel_size
        self.replica_rank, self.leader = rank // size, rank % size == 0
        self.version = 0

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise ValueError(f"the hf_cpu rollout takes full named tensors, not {wire_format!r}")
        state = {}
        for name, tensor in weights:  # every rank walks it: FSDP gathers shards collectively
            if self.leader:
                tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
                state[name] = tensor.detach().to("cpu", torch.float32).clone()
        self.version = int(kwargs.get("global_steps") or self.version + 1)
        if self.leader:
            server = ray.get_actor(_server_name(self.replica_rank))
            await server.load_weights.remote(state, self.version)


def register() -> None:
    """Register ``hf_cpu`` with verl's replica and rollout registries (idempotent)."""
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFCPUReplica)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.HFCPURollout"
