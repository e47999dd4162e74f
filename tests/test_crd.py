"""CRD: its loss and memory update against a computation written out by hand, its negative
sampling, its gradients, exact resume with its memory banks, and the sample indices the
training streams hand it."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.assembly.build import build_student
from splicer.cli.main import app
from splicer.data import build_data
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.spec.schema import DataSpec, DistillSpec
from splicer.training.methods import create_method
from splicer.training.methods.crd import CRD
from splicer.training.overrides import apply_overrides
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import block_shapes, distill, distill_loss
from tests.conftest import toy_spec
from tests.test_data import write_image_folder
from tests.test_methods import batch_ce, batch_kl

CPU = torch.device("cpu")
runner = CliRunner()

# Six training images in three classes: each anchor has exactly four images of other classes.
LABELS = [0, 0, 1, 1, 2, 2]
STUDENT_SHAPES = [(2, 2, 2)]
TEACHER_SHAPES = [(3, 2, 2)]


def crd(labels: list[int] = LABELS, **options: object) -> CRD:
    spec = DistillSpec(options={"crd": {"embed_dim": 3, "negatives": 4, **options}})
    method = create_method("crd", spec, TEACHER_SHAPES, STUDENT_SHAPES)
    method.bind_data(SimpleNamespace(train_labels=torch.tensor(labels)))
    return method


def values(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator)


# --- the loss and the memory update, by hand ---------------------------------------------


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def embed(feature: list[list[list[float]]], weight: list[list[float]], bias: list[float]) -> list[float]:
    """Average over the spatial positions of each channel, then linear, then unit length."""
    pooled = [sum(sum(row) for row in channel) / sum(len(row) for row in channel) for channel in feature]
    return unit([dot(w, pooled) + b for w, b in zip(weight, bias)])


def one_direction(anchors, bank, indices, labels, z, temperature, count):
    """-(sum log h(positive) + sum log(1 - h(negative))) / B with h = P / (P + K/N), P = exp(v.m / T) / Z."""
    total, negatives = 0.0, 0
    for anchor, index in zip(anchors, indices):
        others = [j for j in range(count) if labels[j] != labels[index]]
        negatives = len(others)
        prior = negatives / count
        p = math.exp(dot(anchor, bank[index]) / temperature) / z
        total += math.log(p / (p + prior + 1e-7))
        for j in others:
            p = math.exp(dot(anchor, bank[j]) / temperature) / z
            total += math.log(prior / (p + prior + 1e-7))
    return -total / len(anchors)


def first_batch_z(anchors, bank, indices, labels, temperature, count):
    """Mean of exp(v.m / T) over each anchor's positive and negatives, times N."""
    scores = []
    for anchor, index in zip(anchors, indices):
        for j in [index] + [j for j in range(count) if labels[j] != labels[index]]:
            scores.append(math.exp(dot(anchor, bank[j]) / temperature))
    return sum(scores) / len(scores) * count


def test_crd_loss_and_memory_update_match_a_hand_computation():
    method = crd()
    method.train()
    with torch.no_grad():
        for name, seed in (("student_memory", 1), ("teacher_memory", 2)):
            getattr(method, name).copy_(values((6, 3), seed))
    params = {name: p.detach().tolist() for name, p in method.named_parameters()}
    student_bank = method.student_memory.tolist()
    teacher_bank = method.teacher_memory.tolist()
    batches = [([0, 3, 4], 10), ([1, 4, 2], 20)]  # image 4 twice: its second step reads its updated rows
    z = None
    for indices, seed in batches:
        s_feat, t_feat = values((3, 2, 2, 2), seed), values((3, 3, 2, 2), seed + 1)
        s_logits, t_logits = values((3, 3), seed + 2), values((3, 3), seed + 3)
        targets = torch.tensor([LABELS[i] for i in indices])
        terms = method(s_logits, t_logits, [s_feat], [t_feat], targets, indices=torch.tensor(indices))

        s_weight, s_bias = params["embed_student.linear.weight"], params["embed_student.linear.bias"]
        t_weight, t_bias = params["embed_teacher.linear.weight"], params["embed_teacher.linear.bias"]
        v_s = [embed(f, s_weight, s_bias) for f in s_feat.tolist()]
        v_t = [embed(f, t_weight, t_bias) for f in t_feat.tolist()]
        if z is None:  # fixed by the first batch, never recomputed
            z = (
                first_batch_z(v_s, teacher_bank, indices, LABELS, 0.07, 6),
                first_batch_z(v_t, student_bank, indices, LABELS, 0.07, 6),
            )
        expected = one_direction(v_s, teacher_bank, indices, LABELS, z[0], 0.07, 6) + one_direction(
            v_t, student_bank, indices, LABELS, z[1], 0.07, 6
        )
        assert terms["feature"].item() == pytest.approx(0.8 * expected, rel=1e-4)
        assert terms["ce"].item() == pytest.approx(0.1 * batch_ce(s_logits.tolist(), targets.tolist()), rel=1e-5)
        kd = 0.9 * 16 * batch_kl(t_logits.tolist(), s_logits.tolist(), 4.0)
        assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)
        assert terms["total"].item() == pytest.approx(terms["ce"].item() + terms["kd"].item() + terms["feature"].item())
        for position, index in enumerate(indices):  # momentum 0.5, then back to unit length
            student_bank[index] = unit([0.5 * m + 0.5 * v for m, v in zip(student_bank[index], v_s[position])])
            teacher_bank[index] = unit([0.5 * m + 0.5 * v for m, v in zip(teacher_bank[index], v_t[position])])
        torch.testing.assert_close(method.student_memory, torch.tensor(student_bank), atol=1e-6, rtol=0)
        torch.testing.assert_close(method.teacher_memory, torch.tensor(teacher_bank), atol=1e-6, rtol=0)
    assert method.normalizers == pytest.approx(list(z), rel=1e-5)


def test_the_buffers_ddp_skips_are_the_memory_banks_and_their_index():
    """Named as DDP sees them inside the wrapped training step; a misspelt name would skip nothing."""
    from torch import nn

    from splicer.training.distributed import rank_synced_buffer_names

    step = nn.ModuleDict({"method": crd()})
    names = rank_synced_buffer_names(step)
    assert set(names) <= dict(step.named_buffers()).keys()
    assert {"method.student_memory", "method.teacher_memory", "method.train_labels"} <= set(names)


def test_crd_defaults_are_the_authors():
    method = create_method("crd", DistillSpec(), [(8, 4, 4)], [(4, 4, 4)])
    assert (method.options.embed_dim, method.options.negatives) == (128, 16384)
    assert (method.options.temperature, method.options.momentum) == (0.07, 0.5)
    assert method.feature_weight == 0.8 and method.needs_indices and method.needs_features
    assert method.embed_student.linear.in_features == 4 and method.embed_teacher.linear.in_features == 8


# --- negatives ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["without_replacement", "with_replacement"])
def test_negatives_come_from_other_classes_and_replay_with_the_step(sampling: str):
    labels = [k % 5 for k in range(100)]
    method = crd(labels, negatives=60, sampling=sampling)
    method.train()
    indices = torch.tensor([0, 7, 13, 99])
    first = method.sample_negatives(indices)
    second = method.sample_negatives(indices)
    assert first.shape == (4, 60)
    label_of = torch.tensor(labels)
    assert (label_of[first] != label_of[indices][:, None]).all()
    if sampling == "without_replacement":
        assert all(len(set(row.tolist())) == 60 for row in first)
    else:  # uniform over the 80 images of other classes
        many = torch.cat([method.sample_negatives(torch.tensor([0])) for _ in range(200)], dim=1)
        counts = torch.bincount(many[0], minlength=100)
        assert counts[label_of == 0].sum() == 0 and (counts[label_of != 0] > 0).all()
    assert not torch.equal(first, second)  # each step draws afresh...
    method.steps = 0
    assert torch.equal(method.sample_negatives(indices), first)  # ...from (seed, step) alone


def test_too_many_negatives_are_clamped_with_a_warning():
    with pytest.warns(UserWarning, match="negatives: 50 is more than the 4 training images"):
        method = crd(negatives=50)
    assert method.negatives == 4


def test_a_single_class_has_no_negatives():
    with pytest.raises(SplicerError, match="at least two classes"):
        crd([3, 3, 3])


def test_unknown_crd_option_is_a_user_error():
    with pytest.raises(SplicerError, match="distill.options.crd.nce_k.*valid fields of crd: embed_dim, negatives"):
        create_method("crd", DistillSpec(options={"crd": {"nce_k": 5}}), TEACHER_SHAPES, STUDENT_SHAPES)


# --- gradients ----------------------------------------------------------------------------


def test_gradients_reach_the_student_and_the_embeddings_but_not_the_teacher():
    spec = spec_from_dict(toy_spec())
    student = build_student(spec)
    teacher = build_student(spec_from_dict(toy_spec(student=toy_spec()["teacher"])))  # left trainable on purpose
    options = DistillSpec(options={"crd": {"negatives": 16}})
    method = create_method("crd", options, block_shapes(teacher, spec), block_shapes(student, spec))
    method.bind_data(SimpleNamespace(train_labels=torch.arange(40) % 10))
    loss = distill_loss(student, teacher, method)
    terms, _ = loss(values((8, 3, 16, 16), 0), torch.arange(8) % 10, torch.arange(8))
    terms["feature"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    last_block = [p for name, p in student.named_parameters() if "layer3" in name]
    assert last_block and all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_block)
    assert not any(b.requires_grad for b in method.buffers())


# --- training and exact resume -------------------------------------------------------------


def crd_spec(**train: object) -> dict:
    return toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 128, "synthetic_test": 64},
        train={"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu", **train},
        distill={"options": {"crd": {"negatives": 64}}},
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("crd-teacher")
    train_teacher(spec_from_dict(crd_spec()), out=out, quiet=True)
    yield out
    torch.set_num_threads(threads)


def test_splicer_distill_trains_crd(teacher: Path, tmp_path: Path):
    spec_file = tmp_path / "toy.yaml"
    spec_file.write_text(yaml.safe_dump(crd_spec(epochs=2), sort_keys=False))
    out = tmp_path / "crd"
    arguments = ["distill", str(spec_file), "--teacher", str(teacher), "--method", "crd", "--out", str(out), "-q"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    records = [yaml.safe_load(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [set(r["terms"]) for r in records] == [{"ce", "kd", "feature"}] * 2
    assert all(math.isfinite(r["loss"]) and r["terms"]["feature"] > 0 for r in records)
    state = torch.load(out / "last.pt", weights_only=True)["extra"]["method"]
    assert state["student_memory"].shape == state["teacher_memory"].shape == (128, 128)
    assert state["_extra_state"]["steps"] == 2 * (128 // 32)


def test_resume_restores_weights_memory_banks_and_negatives(teacher: Path, tmp_path: Path):
    spec = spec_from_dict(crd_spec(epochs=2, milestones=[1]))

    def run(out: Path, epochs: int, resume: bool) -> None:
        distill(apply_overrides(spec, {"epochs": epochs}), teacher, "crd", out=out, resume=resume, quiet=True)

    run(tmp_path / "straight", 2, resume=False)
    run(tmp_path / "resumed", 1, resume=False)
    after_one = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    run(tmp_path / "resumed", 2, resume=True)
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for part in ("model", "extra"):
        flat_a, flat_b = flatten(straight[part]), flatten(resumed[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), key
    banks = ("student_memory", "teacher_memory")
    assert all(not torch.equal(after_one["extra"]["method"][b], resumed["extra"]["method"][b]) for b in banks)
    assert straight["extra"]["method"]["_extra_state"] == resumed["extra"]["method"]["_extra_state"]


def flatten(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
    return flat


# --- sample indices from the training streams ----------------------------------------------


def test_memory_stream_yields_each_index_once_with_its_image():
    spec = DataSpec(dataset="synthetic", synthetic_train=512, synthetic_test=64, augment=False)
    bundle = build_data(spec, (3, 16, 16), num_classes=10, batch_size=64, device=CPU, seed=3)
    plain = [(x, y) for x, y in bundle.train]
    bundle.train.set_epoch(0)
    bundle.train.indexed = True
    indexed = list(bundle.train)
    seen = torch.cat([index for _, _, index in indexed])
    assert sorted(seen.tolist()) == list(range(512))
    stream = bundle.train
    for (images, labels, index), (plain_images, plain_labels) in zip(indexed, plain, strict=True):
        assert torch.equal(images, stream.normalize(stream.images[index]))
        assert torch.equal(labels, bundle.train_labels[index]) and torch.equal(labels, plain_labels)
        assert torch.equal(images, plain_images)  # asking for indices changes nothing else
    assert len(next(iter(bundle.eval))) == 2  # evaluation streams stay (images, labels)


def test_dataloader_stream_yields_each_index_once_with_its_image(tmp_path: Path):
    write_image_folder(tmp_path, classes=2, per_class=4, side=96)
    spec = DataSpec(dataset="imagefolder", root=str(tmp_path), workers=0, val_split=2, augment=False)
    bundle = build_data(spec, (3, 80, 80), num_classes=2, batch_size=2, device=CPU, seed=0)  # > 64 px: DataLoader
    assert bundle.num_train == 6 and len(bundle.train_labels) == 6
    bundle.train.indexed = True
    batches = list(bundle.train)
    seen = torch.cat([index for _, _, index in batches])
    assert sorted(seen.tolist()) == list(range(6))
    dataset = bundle.train.dataset  # a Subset: the val_split images were carved out
    for images, labels, index in batches:
        for image, label, i in zip(images, labels, index.tolist()):
            expected, expected_label = dataset[i]
            assert torch.equal(image, bundle.train.normalize(expected[None])[0])
            assert label == expected_label == bundle.train_labels[i]
