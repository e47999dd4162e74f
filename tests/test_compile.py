"""``train.compile``: the compiled training step computes what the eager one does, and a
compiled run's checkpoints are plain (same keys) so eager runs, evaluation and resume load them.

Inductor's code generation takes minutes on this 2-core CPU, so the tests compile with the
``aot_eager`` backend: the same Dynamo capture and AOTAutograd forward/backward graphs,
without the C++ code generation. benchmarks/ddp_compile.py measures Inductor itself.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from splicer.assembly.build import build_student, compile_spec
from splicer.spec import spec_from_dict
from splicer.training.engine import Runtime, Stage, TrainStep, training_step
from splicer.training.distributed import Distributed
from splicer.training.evaluate import evaluate_run
from splicer.training.methods import create_method
from splicer.training.stage1 import sftn_stage, train_teacher
from splicer.training.stage2 import block_shapes, distill_loss
from tests.test_distributed import PLAIN

FAST = functools.partial(torch.compile, backend="aot_eager")


def plain_spec(**train: object):
    return spec_from_dict({**PLAIN, "train": {**PLAIN["train"], **train}})


def gradients(stage: Stage) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": p.grad.clone() for i, m in enumerate(stage.trained()) for name, p in m.named_parameters()}


def compare_steps(stage: Stage) -> None:
    """Two steps each way from the same weights: the same loss terms, logits and gradients."""
    torch.manual_seed(1)
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(2)]
    initial = [{k: v.clone() for k, v in m.state_dict().items()} for m in stage.trained()]
    results = []
    for step in (TrainStep(stage), FAST(TrainStep(stage))):
        for module, state in zip(stage.trained(), initial, strict=True):
            module.load_state_dict(state)
        stage.train_mode()
        for images, labels in batches:
            for module in stage.trained():
                module.zero_grad(set_to_none=True)
            terms, logits = step(images, labels)
            terms["total"].backward()
        results.append(({k: v.detach() for k, v in terms.items()}, logits.detach(), gradients(stage)))
    (eager_terms, eager_logits, eager_grads), (terms, logits, grads) = results
    assert eager_terms.keys() == terms.keys()
    for name in terms:
        assert torch.allclose(eager_terms[name], terms[name], rtol=1e-4, atol=1e-5), name
    assert torch.allclose(eager_logits, logits, rtol=1e-4, atol=1e-5)
    for name in grads:
        assert torch.allclose(eager_grads[name], grads[name], rtol=1e-3, atol=1e-5), name


def test_compiled_sftn_step_matches_the_eager_step():
    spec = plain_spec()
    torch.manual_seed(0)
    sftn = compile_spec(spec).sftn
    compare_steps(sftn_stage(sftn, spec.loss, "sftn"))


def test_compiled_kd_step_matches_the_eager_step():
    spec = plain_spec()
    torch.manual_seed(0)
    teacher = compile_spec(spec).sftn.teacher.requires_grad_(False)
    student = build_student(spec)
    method = create_method("kd", spec.distill, block_shapes(teacher, spec), block_shapes(student, spec))
    stage = Stage("distill", "kd", student, student, distill_loss(student, teacher, method), extra={"method": method}, frozen=[teacher])
    compare_steps(stage)


def test_compile_auto_is_off_on_the_cpu_and_wraps_only_the_step():
    assert Runtime.create("cpu", Distributed(), compile="auto").compile is False
    runtime = Runtime.create("cpu", Distributed(), compile=True)
    spec = plain_spec()
    stage = sftn_stage(compile_spec(spec).sftn, spec.loss, "sftn")
    keys = set(stage.model.state_dict())
    step = training_step(stage, spec.train, runtime, Distributed())
    assert step is not stage.model and set(stage.model.state_dict()) == keys


def test_a_compiled_run_writes_plain_checkpoints_that_eager_runs_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as patch:
        patch.setattr(torch, "compile", FAST)
        compiled = train_teacher(plain_spec(epochs=1, compile=True), out=tmp_path / "run", quiet=True)
    assert compiled["compile_seconds"] is not None
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    eager_keys = set(compile_spec(plain_spec()).sftn.state_dict())
    assert set(state["model"]) == eager_keys and not any("_orig_mod" in key for key in state["model"])
    scored = evaluate_run(tmp_path / "run", device="cpu")
    assert scored["last"]["top1"] == pytest.approx(compiled["final"]["top1"])
    resumed = train_teacher(plain_spec(epochs=2, compile=False), out=tmp_path / "run", resume=True, quiet=True)
    assert resumed["epochs"] == 2 and resumed["compile_seconds"] is None
