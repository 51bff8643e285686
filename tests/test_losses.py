import math

import pytest
import torch
import torch.nn.functional as F

from pruneopd.method.losses import (
    chunked_token_loss,
    forward_kl,
    full_rkl,
    jsd,
    masked_token_mean,
    sampled_rkl,
    topk_rkl,
    topk_rkl_from_candidates,
)


def _logits(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _ref_kl(p, q):
    # KL[p || q] from explicit probabilities, float64
    return (p * (p.log() - q.log())).sum(-1)


# ---------------------------------------------------------------- sampled_rkl


def test_sampled_rkl_value_and_grad():
    s = torch.tensor([[-0.5, -2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[-1.5, -1.0, -1.0]], dtype=torch.float64)
    loss = sampled_rkl(s, q)
    # A = -(s - q) = [-1, 1, 0]; loss = -A * s = [1 * -0.5, -1 * -2.0, 0] = [-0.5, 2.0, 0]
    torch.testing.assert_close(loss, torch.tensor([[-0.5, 2.0, 0.0]], dtype=torch.float64))
    loss.sum().backward()
    # gradient is -sg(A) = s - q, not the derivative of (s - q) * s
    torch.testing.assert_close(s.grad, torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64))


def test_sampled_rkl_zero_when_equal_and_no_teacher_grad():
    s = torch.tensor([[-0.3, -4.0]], requires_grad=True)
    q = s.detach().clone().requires_grad_(True)
    loss = sampled_rkl(s, q)
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert torch.all(s.grad == 0)
    assert q.grad is None


# ---------------------------------------------------------------- topk_rkl


def test_topk_rkl_golden_v4_k2():
    p_s = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    p_t = torch.tensor([0.1, 0.6, 0.2, 0.1], dtype=torch.float64)
    student = p_s.log().view(1, 1, 4).requires_grad_(True)
    teacher = p_t.log().view(1, 1, 4)
    loss = topk_rkl(student, teacher, k=2)
    # candidates {0, 1}; p~ = [4/7, 3/7]
    # r_0 = -(log .4 - log .1) * 4/7 = -log(4) * 4/7 ; r_1 = -(log .3 - log .6) * 3/7 = log(2) * 3/7
    r0, r1 = -math.log(4) * 4 / 7, math.log(2) * 3 / 7
    expected = -(r0 * math.log(0.4) + r1 * math.log(0.3))
    assert loss.shape == (1, 1)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # by hand: -(0.792168 * 0.916291 - 0.297063 * 1.203973) = -(0.725856 - 0.357656)
    assert loss.item() == pytest.approx(-0.368200, abs=1e-6)
    loss.sum().backward()
    # d/dz of -sum_v r_v s_v with d s_v / d z = onehot_v - p_S
    onehot = torch.eye(4, dtype=torch.float64)
    expected_grad = -(r0 * (onehot[0] - p_s) + r1 * (onehot[1] - p_s))
    torch.testing.assert_close(student.grad.view(4), expected_grad)


def test_topk_rkl_matches_loop_reference():
    s_logits = _logits(2, 3, 7, seed=1).requires_grad_(True)
    t_logits = _logits(2, 3, 7, seed=2)
    k = 3
    loss = topk_rkl(s_logits, t_logits, k)
    loss.sum().backward()

    ref = torch.zeros(2, 3, dtype=torch.float64)
    ref_grad = torch.zeros(2, 3, 7, dtype=torch.float64)
    for b in range(2):
        for t in range(3):
            p = torch.softmax(s_logits[b, t].detach(), -1)
            pt = torch.softmax(t_logits[b, t], -1)
            ids = sorted(range(7), key=lambda v, p=p: -p[v].item())[:k]
            z = sum(p[v] for v in ids)
            for v in ids:
                r = -(p[v].log() - pt[v].log()) * p[v] / z
                ref[b, t] += -r * p[v].log()
                ref_grad[b, t] += -r * (torch.eye(7, dtype=torch.float64)[v] - p)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(s_logits.grad, ref_grad)


def test_topk_rkl_from_candidates_grad_and_zero():
    s = torch.tensor([[[-0.2, -1.9, -3.0]]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[[-0.7, -1.1, -2.0]]], dtype=torch.float64)
    topk_rkl_from_candidates(s, q).sum().backward()
    p = s.detach().exp() / s.detach().exp().sum()
    torch.testing.assert_close(s.grad, (s.detach() - q) * p)  # d/ds = -r = (s - q) p~
    same = topk_rkl_from_candidates(s.detach(), s.detach())
    assert torch.all(same == 0)


def test_topk_rkl_zero_when_equal():
    x = _logits(2, 3, 6, seed=3)
    assert torch.all(topk_rkl(x, x.clone(), 4) == 0)


# ---------------------------------------------------------------- full divergences


def test_full_rkl_and_forward_kl_match_kl_div():
    s = _logits(2, 3, 5, seed=4)
    t = _logits(2, 3, 5, seed=5)
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    # F.kl_div(input, target) = KL(target || input)
    ref_rkl = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    ref_fkl = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(full_rkl(s, t), ref_rkl)
    torch.testing.assert_close(forward_kl(s, t), ref_fkl)
    assert not torch.allclose(ref_rkl, ref_fkl)  # the two directions really differ here


def test_full_rkl_analytic_grad():
    s = _logits(2, 3, 5, seed=6).requires_grad_(True)
    t = _logits(2, 3, 5, seed=7)
    kl = full_rkl(s, t)
    kl.sum().backward()
    ps, pt = torch.softmax(s.detach(), -1), torch.softmax(t, -1)
    expected = ps * (ps.log() - pt.log() - kl.detach().unsqueeze(-1))
    torch.testing.assert_close(s.grad, expected)


def test_forward_kl_analytic_grad():
    s = _logits(2, 3, 5, seed=8).requires_grad_(True)
    t = _logits(2, 3, 5, seed=9)
    forward_kl(s, t).sum().backward()
    torch.testing.assert_close(s.grad, torch.softmax(s.detach(), -1) - torch.softmax(t, -1))


@pytest.mark.parametrize("fn", [full_rkl, forward_kl, lambda s, t: jsd(s, t, 0.3)])
def test_divergences_gradcheck_and_zero(fn):
    s = _logits(1, 2, 4, seed=10).requires_grad_(True)
    t = _logits(1, 2, 4, seed=11)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,))
    torch.testing.assert_close(fn(t, t.clone()), torch.zeros(1, 2, dtype=torch.float64))


def test_jsd_endpoints():
    s, t = _logits(2, 3, 5, seed=12), _logits(2, 3, 5, seed=13)
    torch.testing.assert_close(jsd(s, t, 0.0), forward_kl(s, t))
    torch.testing.assert_close(jsd(s, t, 1.0), full_rkl(s, t))


@pytest.mark.parametrize("beta", [0.5, 0.3])
def test_jsd_matches_mixture_reference(beta):
    s, t = _logits(2, 3, 5, seed=14), _logits(2, 3, 5, seed=15)
    ps, pt = torch.softmax(s, -1), torch.softmax(t, -1)
    m = (1 - beta) * ps + beta * pt  # TRL: mixture weights student by (1 - beta)
    ref = beta * _ref_kl(pt, m) + (1 - beta) * _ref_kl(ps, m)
    torch.testing.assert_close(jsd(s, t, beta), ref)


def test_jsd_symmetric_at_half():
    s, t = _logits(2, 3, 5, seed=16), _logits(2, 3, 5, seed=17)
    torch.testing.assert_close(jsd(s, t, 0.5), jsd(t, s, 0.5))
    assert not torch.allclose(jsd(s, t, 0.3), jsd(t, s, 0.3))


def test_jsd_rejects_bad_beta():
    x = _logits(1, 1, 3)
    with pytest.raises(ValueError, match="beta"):
        jsd(x, x, 1.5)


def test_bf16_inputs_are_upcast():
    s, t = _logits(2, 3, 8, seed=18), _logits(2, 3, 8, seed=19)
    s16, t16 = s.bfloat16(), t.bfloat16()
    out = full_rkl(s16, t16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, full_rkl(s16.float(), t16.float()))


# ---------------------------------------------------------------- chunked


CHUNKED_CASES = [
    (full_rkl, {}),
    (forward_kl, {}),
    (jsd, {"beta": 0.3}),
    (topk_rkl, {"k": 3}),
]


@pytest.mark.parametrize("fn,kwargs", CHUNKED_CASES)
def test_chunked_matches_plain(fn, kwargs):
    n, h, v = 7, 3, 11
    sh, sw = _logits(n, h, seed=20), _logits(v, h, seed=21)
    th, tw = _logits(n, h, seed=22), _logits(v, h, seed=23)

    sh1, sw1 = sh.clone().requires_grad_(True), sw.clone().requires_grad_(True)
    plain = fn((sh1 @ sw1.T).unsqueeze(0), (th @ tw.T).unsqueeze(0), **kwargs).squeeze(0)
    (plain * torch.arange(1.0, n + 1, dtype=torch.float64)).sum().backward()

    sh2, sw2 = sh.clone().requires_grad_(True), sw.clone().requires_grad_(True)
    chunked = chunked_token_loss(fn, sh2, sw2, th, tw, chunk_size=3, **kwargs)
    (chunked * torch.arange(1.0, n + 1, dtype=torch.float64)).sum().backward()

    assert chunked.shape == (n,)
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(sh2.grad, sh1.grad)
    torch.testing.assert_close(sw2.grad, sw1.grad)


def test_chunked_saves_no_logits_for_backward():
    n, h, v = 9, 2, 13
    sh, sw = _logits(n, h, seed=24).requires_grad_(True), _logits(v, h, seed=25)
    th, tw = _logits(n, h, seed=26), _logits(v, h, seed=27)
    saved_shapes = []

    def pack(x):
        saved_shapes.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = chunked_token_loss(full_rkl, sh, sw, th, tw, chunk_size=4)
    assert saved_shapes  # the hook is live
    assert all(shape[-1] != v for shape in saved_shapes), saved_shapes  # no [.., V] logits kept
    loss.sum().backward()
    assert sh.grad is not None


def test_chunked_rejects_bad_chunk_size():
    x = _logits(2, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_loss(full_rkl, x, x, x, x, chunk_size=0)


# ---------------------------------------------------------------- masked_token_mean


def test_masked_token_mean_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")]])
    mult = torch.tensor([[1.0, 0.5, 2.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1*1 + 2*0.5 + 4*1) / 3 valid tokens = 2
    assert masked_token_mean(loss, mult, mask).item() == pytest.approx(2.0)
    # (1 + 2 + 4) / 3 without a multiplier
    assert masked_token_mean(loss, None, mask.bool()).item() == pytest.approx(7 / 3)


def test_masked_token_mean_all_masked_is_zero():
    loss = torch.tensor([[float("nan"), 1.0]], requires_grad=True)
    out = masked_token_mean(loss, torch.ones(1, 2), torch.zeros(1, 2))
    assert out.item() == 0.0
    out.backward()
    assert torch.all(loss.grad == 0)
