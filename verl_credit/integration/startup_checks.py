"""Start-up checks that read the data, the tokenizer and user code (driver, before Ray).

Public API:
    data_needs(config, credit) -> DataNeeds   what the run reads from each row, and why
    load_tokenizer(config) -> (tokenizer | None, note)   the model's tokenizer, offline only
    check_data(config, credit, tokenizer)     every row of every local data.train_files / val_files
                                              (``verl_credit.data_check``), prompt lengths against
                                              data.max_prompt_length; returns the files not checked
    check_token_ids(credit, tokenizer)        credit.* token ids inside the tokenizer's vocabulary
    check_scorer_signature(credit)            a user credit.length_reward.scorer takes one ScorerInputs

Prompts longer than the limit (what verl 0.9.1 does with them, read in its source):
    data.filter_overlong_prompts=true   RLHFDataset drops them when it loads the data: a warning line
                                        here (an error when every row would be dropped);
    data.filter_overlong_prompts=false  (verl's default) nothing drops them: the agent loop keeps the last
                                        actor_rollout_ref.rollout.prompt_length tokens (a warning in a worker's
                                        log), whatever data.truncation says (RLHFDataset stores truncation but
                                        never applies it). data.truncation=left asks for exactly that cut: a
                                        warning line. error (the default), right, middle: an error here, since
                                        verl would cut the start of those prompts silently.
"""

from __future__ import annotations

import inspect
import os
import sys
import time

from verl_credit.data_check import DataNeeds, check_file, prompt_lengths

__all__ = ["data_needs", "load_tokenizer", "check_data", "check_token_ids", "check_scorer_signature"]

REWARD_FUNCTIONS_GRADING_TEXT = ("pkg://verl_credit.rewards", "pkg://verl_credit.cpu.smoke_reward")


def _log(message: str) -> None:
    print(f"[verl_credit] {message}", file=sys.stderr)


def data_files(config, key: str) -> list[str]:
    files = config.data.get(key)
    if files is None:
        return []
    return [str(files)] if isinstance(files, str) else [str(f) for f in files]


def is_local(path: str) -> bool:
    return "://" not in path and os.path.exists(path)


def data_needs(config, credit) -> DataNeeds:
    """What the run reads from each row: ``present`` / ``scalar`` say why ``reward_model.ground_truth``
    must be present and not empty / one string or integer-valued number (None where nothing needs it);
    ``template``: how a teacher-forced ground truth is written (or None)."""
    from omegaconf import OmegaConf

    needs = DataNeeds(prompt_key=str(config.data.get("prompt_key", "prompt")))
    if not OmegaConf.select(config, "reward.reward_model.enable", default=False):
        manager = OmegaConf.select(config, "reward.reward_manager.name", default="naive")
        needs.present = f"verl's rule-based reward manager ({manager}) reads it for every rollout"
    reward_path = str(OmegaConf.select(config, "reward.custom_reward_function.path"))
    if reward_path in REWARD_FUNCTIONS_GRADING_TEXT:
        needs.scalar = f"the reward function {reward_path} grades against str(ground_truth)"
    if OmegaConf.select(config, "trainer.v1.trainer_mode") == "credit":
        from verl_credit.integration.scoring_stage import stage_products

        products = stage_products(str(config.algorithm.adv_estimator), credit)
        reference, counterfactual = products["reference"], products["counterfactual"]
        if reference is not None:
            needs.template = reference.answer_template
            needs.scalar = (
                f"algorithm.adv_estimator={config.algorithm.adv_estimator} teacher-forces it as "
                f"credit.variance.answer_template={needs.template!r}"
            )
        elif counterfactual is not None and counterfactual.answer_source == "gold":
            needs.template = counterfactual.gold_template
            needs.scalar = (
                f"credit.counterfactual.answer_source=gold teacher-forces it as "
                f"credit.counterfactual.gold_template={needs.template!r}"
            )
    needs.present = needs.scalar or needs.present  # the feature's reason first
    return needs


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(config):
    """(tokenizer, "") of ``actor_rollout_ref.model.tokenizer_path`` or ``.path`` as verl loads it
    (``hf_tokenizer``, ``custom_chat_template`` applied), from local files only; (None, why) when it
    cannot be loaded offline (a remote path, a model not downloaded yet)."""
    from omegaconf import OmegaConf

    model = OmegaConf.select(config, "actor_rollout_ref.model") or {}
    path = model.get("tokenizer_path") or model.get("path")
    if not path:
        return None, "actor_rollout_ref.model.path is not set"
    path = os.path.expanduser(str(path))
    if "://" in path:
        return None, f"actor_rollout_ref.model.path={path} is remote"
    if (os.path.isabs(path) or path.startswith(".")) and not os.path.exists(path):
        return None, f"{path} does not exist here"
    try:
        from verl.utils.tokenizer import hf_tokenizer

        tokenizer = hf_tokenizer(
            path, trust_remote_code=bool(model.get("trust_remote_code", False)), local_files_only=True
        )
    except Exception as err:  # transformers raises OSError, ValueError, ... for a missing model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"cannot load the tokenizer of {path} offline ({first[:160]})"
    if model.get("custom_chat_template"):
        tokenizer.chat_template = model.get("custom_chat_template")
    return tokenizer, ""


# ----------------------------------------------------------------------------- data


def _length_verdict(config, key: str, path: str, lengths, rows: int) -> None:
    """Warn or fail on prompts longer than the limits (see the module docstring)."""
    import numpy as np
    from omegaconf import OmegaConf

    limit = int(config.data.get("max_prompt_length", 1024))
    cut = int(OmegaConf.select(config, "actor_rollout_ref.rollout.prompt_length", default=limit) or limit)
    filtering = bool(config.data.get("filter_overlong_prompts", False))
    truncation = str(config.data.get("truncation", "error"))
    where = f"data.{key} {path}"
    kept = np.ones(rows, dtype=bool)
    if filtering:
        kept = lengths <= limit
        if not kept.any():
            raise ValueError(
                f"{where}: all {rows} prompts are longer than data.max_prompt_length={limit} tokens and "
                f"data.filter_overlong_prompts=true drops them all: raise data.max_prompt_length to at least "
                f"{int(lengths.min())}"
            )
        over = np.flatnonzero(~kept)
        if len(over):
            _log(
                f"warning: {where}: {len(over)} of {rows} prompts are longer than data.max_prompt_length={limit} "
                f"tokens (the first: row {int(over[0])}, {int(lengths[over[0]])} tokens); "
                "data.filter_overlong_prompts=true: verl drops them"
            )
    over_cut = np.flatnonzero(kept & (lengths > cut))
    if not len(over_cut):
        return
    longest = int(lengths[over_cut].max())
    what = (
        f"{len(over_cut)} of {rows} prompts are longer than actor_rollout_ref.rollout.prompt_length={cut} tokens "
        f"(the first: row {int(over_cut[0])}, {int(lengths[over_cut[0]])} tokens; the longest {longest}); "
        "verl's agent loop keeps "
        f"the last {cut} tokens of each"
    )
    if truncation == "left":
        _log(f"warning: {where}: {what} (data.truncation=left)")
        return
    raise ValueError(
        f"{where}: {what}, silently: verl's RL dataset does not apply data.truncation={truncation}. Raise "
        f"data.max_prompt_length to {longest}, set data.filter_overlong_prompts=true to drop them, or "
        "data.truncation=left to accept the cut"
    )


def check_data(config, credit, tokenizer=None, tokenizer_note: str = "") -> list[str]:
    """Check every row of every local ``data.train_files`` / ``data.val_files`` against what the run
    reads (:func:`data_needs`; ValueError naming the file, the row and the fix), then, with
    ``tokenizer``, the prompts' lengths (module docstring). One summary line per file. Returns the
    files that were not checked (remote or missing) as ``data.<key> <path>``."""
    needs = data_needs(config, credit)
    skipped = []
    from omegaconf import OmegaConf

    limit = int(config.data.get("max_prompt_length", 1024))
    cut = OmegaConf.select(config, "actor_rollout_ref.rollout.prompt_length", default=None)
    limit = min(limit, int(cut)) if cut else limit  # rows under both limits need no tokenizing
    chat_kwargs = dict(config.data.get("apply_chat_template_kwargs") or {})
    can_render = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    for key in ("train_files", "val_files"):
        for path in data_files(config, key):
            if not is_local(path):
                skipped.append(f"data.{key} {path}")
                continue
            start = time.perf_counter()
            try:
                report = check_file(path, needs)
            except ValueError as err:
                raise ValueError(f"data.{key} {err}") from err
            lengths_note = ""
            if can_render:
                lengths, tokenized = prompt_lengths(report.table, needs.prompt_key, tokenizer, limit, chat_kwargs)
                _length_verdict(config, key, path, lengths, report.rows)
                lengths_note = f"; prompt lengths checked ({tokenized} rendered with the chat template)"
            elif tokenizer is not None:
                lengths_note = "; prompt lengths not checked (the tokenizer has no chat template)"
            else:
                lengths_note = f"; prompt lengths not checked ({tokenizer_note or 'no tokenizer'})"
            floats = ""
            if report.float_truths and needs.scalar:
                floats = f"; {report.float_truths} float ground truths, written as integers when teacher-forced"
            _log(
                f"data.{key} {path}: {report.rows} rows read, prompts and reward_model checked "
                f"({time.perf_counter() - start:.1f}s){floats}{lengths_note}"
            )
    return skipped


# ----------------------------------------------------------------------------- options


def check_token_ids(credit, tokenizer) -> None:
    """``credit.counterfactual.placeholder_token_id`` and ``credit.ktae.ignore_token_ids`` must be ids of
    ``tokenizer``'s vocabulary (0 <= id < len(tokenizer)); ValueError naming the key."""
    size = len(tokenizer)
    ids = [("credit.counterfactual.placeholder_token_id", credit.counterfactual.placeholder_token_id)]
    ids += [("credit.ktae.ignore_token_ids", t) for t in credit.ktae.ignore_token_ids or []]
    for key, token in ids:
        if token is not None and not 0 <= int(token) < size:
            raise ValueError(
                f"{key}={token} is not a token id of the model's tokenizer (ids 0..{size - 1}): "
                "use an id of its vocabulary, e.g. its pad or eos id, or null for the default"
            )


def check_scorer_signature(credit) -> None:
    """A user ``credit.length_reward.scorer`` (``module:function``) is called as ``fn(inputs)`` with one
    ``ScorerInputs``: ValueError naming the key when its signature cannot take that call."""
    lr = credit.length_reward
    if not lr.enabled or ":" not in lr.scorer:
        return
    from verl_credit.core.length_reward import resolve_scorer

    fn = resolve_scorer(lr.scorer).fn
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C function: nothing to check against
    try:
        signature.bind(object())
    except TypeError as err:
        raise ValueError(
            f"credit.length_reward.scorer={lr.scorer}: the scorer is called as fn(inputs) with one ScorerInputs "
            f"and returns FloatTensor[B, T], but its signature is {getattr(fn, '__name__', 'fn')}{signature} "
            f"({err})"
        ) from err
