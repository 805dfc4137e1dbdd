"""The CoIN step against an independent plain-PyTorch computation of METHOD.md (one process)."""
import dataclasses

import pytest
import torch

from coin.training.batch import collate
from coin.training.config import CoinConfig, ModelConfig
from coin.training.losses import consistency_losses, token_losses
from coin.training.model import CoinModel, load_model, load_tokenizer
from coin.training.step import coin_step

from coin_reference import make_rows, reference_loss


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    mcfg = ModelConfig(name_or_path=tiny_model_dir)
    tok = load_tokenizer(mcfg)
    torch.manual_seed(0)
    lm = load_model(mcfg)
    return tok, lm, make_rows(tok, 4, seed=1)


@pytest.mark.parametrize("pooling", ["last", "prompt_last", "mean"])
@pytest.mark.parametrize("weighting", ["adaptive", "constant", "gradnorm"])
def test_loss_equals_reference(setup, pooling, weighting):
    tok, lm, rows = setup
    cfg = CoinConfig(pooling=pooling, weighting=weighting, weight=0.7, temperature=0.05)
    with torch.no_grad():
        got = coin_step(CoinModel(lm), collate(rows, tok.pad_token_id), cfg).loss
        want = reference_loss(lm, [rows], cfg)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (float(got), float(want))


@pytest.mark.parametrize("objective", ["cit", "sft", "consistency"])
def test_objectives_equal_reference(setup, objective):
    """Each objective's loss against coin_reference's per-sequence full-vocabulary computation
    (sft: originals only; cit: both views; consistency: both views + 0.3 x the JS of the views'
    k-th response-token distributions, from its definition)."""
    tok, lm, rows = setup
    cfg = CoinConfig(objective=objective, consistency_weight=0.3)
    with torch.no_grad():
        out = coin_step(CoinModel(lm), collate(rows, tok.pad_token_id), cfg)
        want = reference_loss(lm, [rows], cfg)
        both = reference_loss(lm, [rows], CoinConfig(objective="cit"))
    assert torch.allclose(out.loss, want, rtol=1e-5, atol=1e-6), (float(out.loss), float(want))
    if objective == "consistency":
        cons = float(out.metrics["cons_loss"])
        assert 0 < cons < 0.6932 and float(out.metrics["ctr_weight"]) == pytest.approx(0.3)
        assert float(out.loss) == pytest.approx(float(both) + 0.3 * cons, rel=1e-5)
        assert float(out.metrics["gen_grad_norm"]) > 0 and float(out.metrics["ctr_grad_norm"]) > 0
    else:
        assert float(out.metrics["ctr_weight"]) == 0.0 and float(out.metrics["cons_loss"]) == 0.0
        assert (float(out.loss) == pytest.approx(float(both))) is (objective == "cit")


def _assert_gradients_match(tok, lm, rows, cfg):
    """Parameter gradients of coin_step equal those of the plain reference (relative error < 1e-4)."""
    lm.zero_grad()
    coin_step(CoinModel(lm), collate(rows, tok.pad_token_id), cfg).loss.backward()
    got = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    reference_loss(lm, [rows], cfg).backward()
    for n, p in lm.named_parameters():
        rel = float((got[n] - p.grad).norm() / p.grad.norm())
        assert rel < 1e-4, (n, rel)
    lm.zero_grad()


@pytest.mark.parametrize("objective", ["coin", "consistency"])
def test_gradients_of_objectives_equal_reference(setup, objective):
    tok, lm, rows = setup
    cfg = CoinConfig(objective=objective, weighting="gradnorm", grad_ratio=0.8)
    _assert_gradients_match(tok, lm, rows, cfg)


@pytest.mark.parametrize("objective", ["coin", "consistency"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_hidden_state_grad_norms_and_gradnorm_weight(setup, objective, pooling):
    """gen_grad_norm / ctr_grad_norm are |dL/dh| of each term over every sequence's final hidden
    states, computed here by autograd on per-sequence leaves; gradnorm's w = grad_ratio * their ratio."""
    from coin_reference import reference_grad_norms

    tok, lm, rows = setup
    cfg = CoinConfig(objective=objective, pooling=pooling, weighting="gradnorm", grad_ratio=0.8)
    out = coin_step(CoinModel(lm), collate(rows, tok.pad_token_id), cfg)
    g_gen, g_reg = reference_grad_norms(lm, [rows], cfg)
    assert float(out.metrics["gen_grad_norm"]) == pytest.approx(float(g_gen), rel=1e-4)
    assert float(out.metrics["ctr_grad_norm"]) == pytest.approx(float(g_reg), rel=1e-4)
    if objective == "coin":
        assert float(out.metrics["ctr_weight"]) == pytest.approx(0.8 * float(g_gen) / float(g_reg), rel=1e-4)
    lm.zero_grad()


@pytest.mark.parametrize("weighting", ["adaptive", "gradnorm"])
def test_grad_norms_off_leaves_the_loss_and_gradnorm_measures_anyway(setup, weighting):
    """grad_norms=False (the trainer's steps between logging steps) changes nothing but the two
    norm metrics (0); gradnorm needs the norms for its weight and measures them regardless."""
    tok, lm, rows = setup
    cfg = CoinConfig(weighting=weighting)
    batch = collate(rows, tok.pad_token_id)
    on, off = (coin_step(CoinModel(lm), batch, cfg, grad_norms=g) for g in (True, False))
    assert float(off.loss) == pytest.approx(float(on.loss), rel=1e-6)
    assert float(off.metrics["ctr_weight"]) == pytest.approx(float(on.metrics["ctr_weight"]), rel=1e-6)
    assert float(on.metrics["gen_grad_norm"]) > 0
    measured = weighting == "gradnorm"
    for k in ("gen_grad_norm", "ctr_grad_norm"):
        assert (float(off.metrics[k]) == pytest.approx(float(on.metrics[k]), rel=1e-6)) if measured \
            else float(off.metrics[k]) == 0


@pytest.mark.parametrize("frozen", [False, True])
def test_consistency_aligns_response_positions(frozen):
    """Pair i's k-th label position of the original meets the k-th of the paraphrase; a view with
    fewer label tokens (a truncated response) bounds the pair; gradients reach both views."""
    torch.manual_seed(0)
    b, t, d, v = 2, 12, 8, 50
    hidden = torch.randn(2 * b, t, d, requires_grad=True)
    head = torch.nn.Linear(d, v, bias=False).requires_grad_(not frozen)
    labels = torch.full((2 * b, t), -100)
    labels[0, 5:9] = 1   # original 0: 4 label tokens at 5..8 (predicted from 4..7)
    labels[2, 7:12] = 1  # paraphrase 0: 5 label tokens at 7..11 -> 4 aligned pairs
    labels[1, 9:12] = 1  # original 1: 3
    labels[3, 10:12] = 1  # paraphrase 1: 2 -> 2 aligned pairs
    js = consistency_losses(hidden, labels, head, chunks=3)
    pairs = [(0, 4 + k, 2, 6 + k) for k in range(4)] + [(1, 8 + k, 3, 9 + k) for k in range(2)]

    def jsd(x, y):
        p, q = head(x).softmax(-1), head(y).softmax(-1)
        m = (p + q) / 2
        return 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()

    want = torch.stack([jsd(hidden[r, i], hidden[s, j]) for r, i, s, j in pairs])
    torch.testing.assert_close(js, want, rtol=1e-5, atol=1e-6)
    (g_got,) = torch.autograd.grad(js.sum(), hidden)
    (g_want,) = torch.autograd.grad(want.sum(), hidden)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)
    assert g_got[2].abs().sum() > 0 and g_got[0].abs().sum() > 0


def test_gradnorm_weight_is_capped(setup):
    tok, lm, rows = setup
    with torch.no_grad():
        out = coin_step(CoinModel(lm), collate(rows, tok.pad_token_id),
                        CoinConfig(weighting="gradnorm", grad_ratio=1e6, max_weight=3.0))
    assert float(out.metrics["ctr_weight"]) == pytest.approx(3.0)


@pytest.mark.parametrize("objective, weighting", [("coin", "adaptive"), ("coin", "gradnorm"), ("coin", "constant"),
                                                  ("consistency", "adaptive")])
def test_weight_warmup_ramps_linearly(setup, objective, weighting):
    """w(step) = min(1, step / N) x w: 0 at the first step, a quarter at step N/4, full from N on."""
    tok, lm, rows = setup
    batch = collate(rows, tok.pad_token_id)
    base = CoinConfig(objective=objective, weighting=weighting, weight=0.7, consistency_weight=0.4)
    ramped = dataclasses.replace(base, weight_warmup_steps=8)
    with torch.no_grad():
        full = float(coin_step(CoinModel(lm), batch, base).metrics["ctr_weight"])
        got = [float(coin_step(CoinModel(lm), batch, ramped, step=s).metrics["ctr_weight"]) for s in (0, 2, 8, 20)]
        loss0 = coin_step(CoinModel(lm), batch, ramped, step=0).loss
        loss2 = coin_step(CoinModel(lm), batch, ramped, step=2).loss
        want2 = reference_loss(lm, [rows], ramped, step=2)
    assert full > 0
    assert got == pytest.approx([0.0, full / 4, full, full], rel=1e-5)
    assert float(loss0) == pytest.approx(float(reference_loss(lm, [rows], CoinConfig(objective="cit"))), rel=1e-5)
    assert torch.allclose(loss2, want2, rtol=1e-5)


def test_weight_cap_binds(setup):
    tok, lm, rows = setup
    cfg = CoinConfig(max_weight=0.25)
    with torch.no_grad():
        out = coin_step(CoinModel(lm), collate(rows, tok.pad_token_id), cfg)
        want = reference_loss(lm, [rows], cfg)
    assert float(out.metrics["ctr_weight"]) == pytest.approx(0.25)
    assert torch.allclose(out.loss, want, rtol=1e-5)


def test_gradients_equal_reference_adaptive(setup):
    tok, lm, rows = setup
    cfg = CoinConfig()
    _assert_gradients_match(tok, lm, rows, cfg)


@pytest.mark.parametrize("pooling", ["last", "prompt_last", "mean"])
def test_padding_side_does_not_matter(setup, pooling):
    tok, lm, rows = setup
    cfg = CoinConfig(pooling=pooling)
    with torch.no_grad():
        right = coin_step(CoinModel(lm), collate(rows, tok.pad_token_id, "right"), cfg).loss
        left = coin_step(CoinModel(lm), collate(rows, tok.pad_token_id, "left"), cfg).loss
    assert torch.allclose(left, right, rtol=1e-5)


def test_metrics(setup):
    tok, lm, rows = setup
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        m = coin_step(CoinModel(lm), batch, CoinConfig()).metrics
    assert set(m) == {"loss", "gen_loss", "ctr_loss", "ctr_weight", "ctr_acc", "pos_cos", "neg_cos", "pool_size",
                      "cons_loss", "gen_grad_norm", "ctr_grad_norm", "tokens", "label_tokens"}
    assert float(m["pool_size"]) == len(rows)
    assert float(m["tokens"]) == float(batch["attention_mask"].sum())
    assert float(m["label_tokens"]) == float((batch["labels"] != -100).sum())
    assert 0 <= float(m["ctr_acc"]) <= 1 and -1 <= float(m["neg_cos"]) <= 1 and -1 <= float(m["pos_cos"]) <= 1


def test_cit_has_no_contrastive_term(setup):
    tok, lm, rows = setup
    cfg = CoinConfig(objective="cit")
    with torch.no_grad():
        out = coin_step(CoinModel(lm), collate(rows, tok.pad_token_id), cfg)
        want = reference_loss(lm, [rows], cfg)
    assert torch.allclose(out.loss, want, rtol=1e-5)
    assert float(out.metrics["ctr_weight"]) == 0.0


def test_truncated_labels_give_finite_loss_and_gradients(setup):
    tok, lm, rows = setup
    cut = [dict(r, prompt_len=len(r["input_ids"]), para_prompt_len=len(r["para_input_ids"])) for r in rows]
    batch = collate(cut, tok.pad_token_id)
    assert (batch["labels"] == -100).all()
    lm.zero_grad()
    out = coin_step(CoinModel(lm), batch, CoinConfig())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lm.parameters())
    lm.zero_grad()


def test_single_pair_pool_is_finite(setup):
    tok, lm, rows = setup
    with torch.no_grad():
        out = coin_step(CoinModel(lm), collate(rows[:1], tok.pad_token_id), CoinConfig())
    assert torch.isfinite(out.loss) and float(out.metrics["ctr_loss"]) == 0.0


@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_lean_lm_loss_equals_full_logits(chunks):
    torch.manual_seed(0)
    n, t, d, v = 4, 40, 16, 500
    hidden = torch.randn(n, t, d, requires_grad=True)
    head = torch.nn.Linear(d, v, bias=False)
    labels = torch.randint(0, v, (n, t))
    labels[:, :25] = -100
    labels[1, :] = -100
    ce, rows = token_losses(hidden, labels, head, chunks)
    lean = ce.mean()
    lean.backward()
    g_lean, g_head = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.weight.grad = None
    naive = torch.nn.functional.cross_entropy(head(hidden)[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100)
    naive.backward()
    assert torch.allclose(lean, naive, atol=1e-5)
    assert torch.allclose(g_lean, hidden.grad, atol=1e-5)
    assert torch.allclose(g_head, head.weight.grad, atol=1e-5)
    assert (rows != 1).all() and rows.numel() == int((labels[:, 1:] != -100).sum())


@pytest.mark.parametrize("chunks", [1, 3, 64])
def test_lean_lm_loss_with_a_frozen_head(chunks):
    """A frozen head (LoRA) takes the path without recomputation: the same per-token losses and
    the same hidden-state gradients under any downstream weighting of the tokens, also when some
    chunks are empty (64 chunks for fewer tokens) or no token carries a label."""
    torch.manual_seed(0)
    n, t, d, v = 4, 30, 16, 500
    hidden = torch.randn(n, t, d, requires_grad=True)
    head = torch.nn.Linear(d, v, bias=False).requires_grad_(False)
    labels = torch.randint(0, v, (n, t))
    labels[:, :20] = -100
    labels[1, :] = -100
    ce, rows = token_losses(hidden, labels, head, chunks)
    weights = torch.rand(ce.shape[0])  # tokens weighted unequally downstream (view means do)
    (ce * weights).sum().backward()
    g_lean = hidden.grad.clone()
    hidden.grad = None
    targets = labels[:, 1:]
    naive = torch.nn.functional.cross_entropy(head(hidden)[:, :-1][targets != -100], targets[targets != -100],
                                              reduction="none")
    (naive * weights).sum().backward()
    torch.testing.assert_close(ce, naive, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_lean, hidden.grad, rtol=0, atol=1e-6)
    assert ce.grad_fn is not None and "FrozenHead" in type(ce.grad_fn).__name__

    hidden.grad = None
    ce, _ = token_losses(hidden, torch.full_like(labels, -100), head, chunks)
    ce.sum().backward()
    assert ce.numel() == 0 and hidden.grad is not None and not hidden.grad.any()


def test_odd_batch_is_rejected(setup):
    tok, lm, rows = setup
    batch = collate(rows, tok.pad_token_id)
    batch = {k: (v[:-1] if torch.is_tensor(v) else v) for k, v in batch.items()}
    with pytest.raises(ValueError, match="even row count"):
        coin_step(CoinModel(lm), batch, dataclasses.replace(CoinConfig()))


def test_flops_per_token_counts_the_head_on_label_tokens_only(setup):
    _, lm, _ = setup
    cfg = lm.config
    decoder = sum(p.numel() for n, p in lm.named_parameters() if n.startswith("model.layers.") or n == "model.norm.weight")
    head = cfg.vocab_size * cfg.hidden_size
    want = 6 * decoder + 12 * cfg.num_hidden_layers * cfg.hidden_size * 100 + 6 * head * 0.25
    assert CoinModel(lm).flops_per_token(100, 0.25) == pytest.approx(want)
