"""The high-entropy token filter: vectorised threshold and mask against the loop reference, the two
loss denominators against the losses they stand for (verl's vanilla PPO loss), metrics, bad input."""

import math

import pytest
import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.config.actor import ActorConfig

from verl_credit.core.token_filter import (
    entropy_threshold,
    filter_advantages,
    high_entropy_mask,
    high_entropy_mask_loop,
    token_filter_metrics,
)


def _batch(seed, B=7, T=11, ties=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    entropy = torch.rand(B, T, generator=g) * 3
    if ties:
        entropy = (entropy * 2).round() / 2  # few distinct values: ties at the threshold
    entropy = torch.where(mask.bool(), entropy, torch.full_like(entropy, 99.0))  # padding must never count
    adv = torch.randn(B, T, generator=g) * mask
    return entropy, mask, adv


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantile", [0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_equals_loop(seed, quantile, ties):
    entropy, mask, _ = _batch(seed, ties=ties)
    keep, tau = high_entropy_mask(entropy, mask, quantile)
    keep_ref, tau_ref = high_entropy_mask_loop(entropy, mask, quantile)
    assert torch.equal(keep, keep_ref)
    assert (
        float(tau) == pytest.approx(float(tau_ref)) == pytest.approx(float(entropy_threshold(entropy, mask, quantile)))
    )
    n = int(mask.sum())
    k = math.ceil(quantile * n - 1e-9)
    assert int(keep.sum()) >= k  # at least k kept
    if not ties:
        assert int(keep.sum()) == k  # exactly k with distinct entropies
    assert not bool((keep & ~mask.bool()).any())  # padding (entropy 99) never kept


def test_threshold_over_the_whole_batch_not_per_row():
    # row 0 has all the high entropies: a per-row quantile would keep tokens of row 1 too
    entropy = torch.tensor([[5.0, 6.0, 7.0, 8.0, 9.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    mask = torch.ones(2, 5, dtype=torch.long)
    keep, tau = high_entropy_mask(entropy, mask, 0.2)
    assert float(tau) == 8.0
    assert keep.tolist() == [[False, False, False, True, True], [False] * 5]


def _loss(adv, old, logp, mask):
    cfg = ActorConfig(strategy="fsdp", ppo_mini_batch_size=1, ppo_micro_batch_size_per_gpu=1, rollout_n=1)
    loss, _ = get_policy_loss_fn("vanilla")(old, logp, adv, mask.float(), "token-mean", cfg)
    return loss


@pytest.mark.parametrize("seed", range(4))
def test_denominators_are_the_masked_losses_they_stand_for(seed):
    entropy, mask, adv = _batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    old = -torch.rand(adv.shape, generator=g) * 2
    logp = (old + 0.4 * torch.randn(adv.shape, generator=g)).requires_grad_(True)  # some ratios clipped
    keep, _ = high_entropy_mask(entropy, mask, 0.3)
    n_valid, n_kept = int(mask.sum()), int(keep.sum())

    def grad(loss):
        (g_,) = torch.autograd.grad(loss, logp)
        return g_

    # "all": the per-token loss times the mask, divided by all valid tokens (TRL's aggregation)
    g_all = grad(_loss(filter_advantages(adv, keep, mask, "all"), old, logp, mask))
    g_ref_all = grad(_loss(adv, old, logp, keep.long()) * n_kept / n_valid)
    torch.testing.assert_close(g_all, g_ref_all, rtol=1e-5, atol=1e-7)
    # "kept": the mean over the kept tokens only
    g_kept = grad(_loss(filter_advantages(adv, keep, mask, "kept"), old, logp, mask))
    g_ref_kept = grad(_loss(adv, old, logp, keep.long()))
    torch.testing.assert_close(g_kept, g_ref_kept, rtol=1e-5, atol=1e-7)
    # dropped tokens get exactly no gradient in both
    dropped = mask.bool() & ~keep
    assert bool((g_all[dropped] == 0).all()) and bool((g_kept[dropped] == 0).all())
    assert bool((g_all[keep] != 0).any())


def test_metrics():
    entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    adv = torch.tensor([[1.0, 1.0, 2.0, 4.0], [-2.0, 0.0, 0.0, 0.0]])
    keep, tau = high_entropy_mask(entropy, mask, 0.4)  # k = ceil(0.4 * 5) = 2: entropies 4 and 3
    m = token_filter_metrics(entropy, mask, keep, adv, tau)
    assert m["kept_fraction"] == pytest.approx(2 / 5)
    assert m["threshold"] == 3.0
    assert m["entropy_kept/mean"] == pytest.approx(3.5)
    assert m["entropy_dropped/mean"] == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    assert m["advantage_mass_kept"] == pytest.approx(6.0 / 10.0)
    assert not any("min" in k or "max" in k for k in m)  # verl reduces by substring


@pytest.mark.parametrize("quantile", [0, 0.0, 1.5, -0.1, "0.2", None, True, float("nan")])
def test_bad_quantile(quantile):
    entropy, mask, _ = _batch(0)
    with pytest.raises(ValueError, match="quantile"):
        high_entropy_mask(entropy, mask, quantile)


def test_bad_input():
    entropy, mask, adv = _batch(1)
    entropy[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"not finite.*row 0, position 0"):
        high_entropy_mask(entropy, mask, 0.2)
    with pytest.raises(ValueError, match="denominator"):
        filter_advantages(adv, mask.bool(), mask, "mean")
    with pytest.raises(ValueError, match="shape"):
        filter_advantages(adv[:, :-1], mask.bool(), mask)
    empty, tau = high_entropy_mask(torch.zeros(2, 3), torch.zeros(2, 3), 0.2)
    assert not bool(empty.any()) and math.isnan(float(tau))
