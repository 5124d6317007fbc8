"""Loss normalisation of `loop.train_step`, in this process (a DeepSpeed world of one).

The same four examples as one micro batch of 4, or as four micro batches of 1 accumulated, must
give the same loss and the same update, both equal to a plain-torch reference: the summed token
cross-entropy over the step's target tokens divided by their number. The examples have different
lengths, so a per-micro-batch mean (or forgetting DeepSpeed's division by the accumulation
steps) would make the three disagree.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.training.snapshots import write_snapshot
from training.config import resolve
from training.data.batching import make_micro_batches
from training.data.encoding import encode
from training.data.snapshot import read_tasks
from training.data.tokenizer import PAD_ID, build_tokenizer
from training.loop import reduce_window, train_step
from training.model import build_model, token_loss_sum
from training.prepare import deepspeed_config
from training.train import init_distributed

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
LR = 0.5


@pytest.fixture(scope="module")
def device() -> Iterator[torch.device]:
    """A process group of one for this test process (DeepSpeed reads LOCAL_RANK at initialize);
    the environment is restored afterwards, so later launches do not inherit its rank and port."""
    saved = dict(os.environ)
    yield init_distributed()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module", params=["tiny-llama.yaml", "tiny-t5.yaml"])
def setup(request, tmp_path_factory, device):
    cfg = resolve(CONFIGS / request.param, ["optim.grad_clip=0"], 1)
    kind = cfg.model.kind
    examples = read_tasks(write_snapshot(tmp_path_factory.mktemp("snap")), None)
    tokenizer = build_tokenizer([t for e in examples for t in (e.input, e.target)], vocab_size=600, arch=kind)
    encoded, _ = encode(examples, tokenizer, arch=kind, max_source_tokens=256, max_target_tokens=256)
    four = [encoded[i] for i in (0, 3, 4, 9)]  # different lengths: padding differs by micro batch
    assert len({len(e.source_ids) + len(e.target_ids) for e in four}) == 4
    torch.manual_seed(0)
    model = build_model(cfg.model, len(tokenizer))
    return cfg, kind, four, model


def _batches(cfg, kind, four, micro):
    return make_micro_batches(
        four,
        arch=kind,
        micro_batch_size=micro,
        pad_id=PAD_ID,
        packing=False,
        max_seq_len=512,
        seed=1,
        epoch=0,
    )


def _step(cfg, kind, four, model, device, micro, accumulation):
    """One optimizer step of a fresh engine on a copy of `model`: (loss, parameters after)."""
    import deepspeed

    cfg = copy.deepcopy(cfg)
    cfg.batch.micro_batch_size, cfg.batch.gradient_accumulation_steps, cfg.batch.global_batch_size = (
        micro,
        accumulation,
        None,
    )
    ds_config = deepspeed_config(cfg, 1, "fp32") | {"zero_allow_untested_optimizer": True}
    module = copy.deepcopy(model)
    # Plain SGD, so the update is lr x gradient (Adam's first step would hide the gradient's size).
    engine, *_ = deepspeed.initialize(
        model=module, optimizer=torch.optim.SGD(module.parameters(), lr=LR), config=ds_config
    )
    batches = _batches(cfg, kind, four, micro)
    assert len(batches) == accumulation
    totals = train_step(engine, batches, kind, device)
    assert engine.global_steps == 1
    return reduce_window(totals), {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def test_micro_batch_size_and_accumulation_do_not_change_the_step(setup, device):
    cfg, kind, four, model = setup
    reference = copy.deepcopy(model)
    batches = _batches(cfg, kind, four, 4)
    target_tokens = sum(mb.target_tokens for mb in batches)
    loss = sum(token_loss_sum(reference, mb.tensors, kind) for mb in batches) / target_tokens
    loss.backward()
    loss = loss.detach()
    expected = {n: (p - LR * p.grad).detach() for n, p in reference.named_parameters()}

    loss_4x1, params_4x1 = _step(cfg, kind, four, model, device, micro=4, accumulation=1)
    loss_1x4, params_1x4 = _step(cfg, kind, four, model, device, micro=1, accumulation=4)

    assert loss_4x1 == pytest.approx(float(loss), abs=1e-5)
    assert loss_1x4 == pytest.approx(float(loss), abs=1e-5)
    moved = max(float((expected[n] - p.detach()).abs().max()) for n, p in model.named_parameters())
    assert moved > 1e-3  # the step changed the weights noticeably
    for name, value in expected.items():
        torch.testing.assert_close(params_4x1[name], value, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(params_1x4[name], value, atol=1e-5, rtol=1e-4)
