"""Soft labels computed once (distill.soft_labels): the store holds the teacher's logits on the stored
views, training draws only stored views and gets the live teacher's loss on them, an interrupted
precompute resumes to the same store, a distillation resumes bit-exactly, and what cannot use a
store (a feature method, streamed data, another run's store) is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from splicer.data import build_data
from splicer.errors import SplicerError
from splicer.experiments.experiment import check_methods
from splicer.spec import Spec, spec_from_dict
from splicer.training import soft_labels
from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint, teacher_state, weights_digest
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime
from splicer.training.overrides import apply_overrides
from splicer.training.runs import RunDir
from splicer.training.soft_labels import keep_top, open_soft_labels, rebuild_logits, soft_label_loss
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill, distill_loss, method_for_pair
from tests.conftest import flatten, records, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")
VIEWS = 3


def base_spec(**train: object) -> Spec:
    return spec_from_dict(
        toy_spec(
            data={"dataset": "synthetic", "synthetic_train": 96, "synthetic_test": 32},
            train={"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu", **train},
        )
    )


def with_soft_labels(spec: Spec, *settings: str) -> Spec:
    """Soft labels from the fp32 teacher, on every CPU: the tests compare them with the fp32 teacher run live."""
    assignments = [f"distill.soft_labels.views={VIEWS}", "distill.teacher_precision=fp32", *settings]
    return apply_overrides(spec, assignments=assignments)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "sftn"
    train_teacher(base_spec(), out=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def soft_run(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("soft") / "kd"
    distill(with_soft_labels(base_spec()), teacher, "kd", out=out, quiet=True)
    return out


def chunk(run: Path, index: int = 0) -> dict:
    return torch.load(run / "soft_labels" / f"chunk-{index:05d}.pt", weights_only=True)


def frozen_teacher(teacher: Path) -> torch.nn.Module:
    checkpoint = load_checkpoint(teacher / "last.pt")
    return network_from_checkpoint(checkpoint, teacher / "last.pt", base_spec()).eval()


def store_of(run: Path, teacher: Path, spec: Spec, method: str = "kd"):
    """The run's finished store loaded as training loads it, with the data and the teacher it was computed on."""
    data = build_data(spec.data, spec.input_size, spec.num_classes, 32, torch.device("cpu"), spec.train.seed)
    net = frozen_teacher(teacher)
    digest = weights_digest(teacher_state(load_checkpoint(teacher / "last.pt")))
    runtime, dist = Runtime(torch.device("cpu")), Distributed()
    labels = open_soft_labels(spec, method, RunDir(run), net, digest, data, runtime, dist, "test", quiet=True)
    return labels, data, net


def test_stored_logits_are_the_teachers_on_the_stored_views(soft_run: Path, teacher: Path):
    stored = chunk(soft_run)
    spec = with_soft_labels(base_spec())
    _, data, net = store_of(soft_run, teacher, spec)
    pad = data.train.pad
    assert stored["logits"].shape == (96, VIEWS, 10) and stored["logits"].dtype == torch.float32
    assert stored["top"].min() >= 0 and stored["top"].max() <= 2 * pad and stored["flip"].any() and not stored["flip"].all()
    index = torch.tensor([0, 5, 95])
    for view in range(VIEWS):
        crops = tuple(stored[name][index, view].long() if name != "flip" else stored[name][index, view]
                      for name in ("top", "left", "flip"))
        with torch.no_grad():
            live = net(data.train.augmented(index, crops))
        torch.testing.assert_close(stored["logits"][index, view], live, rtol=1e-5, atol=1e-5)
    assert not torch.equal(stored["logits"][:, 0], stored["logits"][:, 1])  # the views differ
    facts = json.loads((soft_run / "summary.json").read_text())["meta"]["soft_labels"]
    assert facts["views"] == VIEWS and facts["keep"] == "full" and facts["teacher_images"] == 96 * VIEWS
    assert facts["store_bytes"] == (soft_run / "soft_labels" / "chunk-00000.pt").stat().st_size
    assert facts["precompute_seconds"] > 0


def test_training_draws_only_stored_views_and_gets_the_live_teachers_loss(soft_run: Path, teacher: Path):
    spec = with_soft_labels(base_spec())
    labels, data, net = store_of(soft_run, teacher, spec)
    student = network_from_checkpoint(load_checkpoint(soft_run / "last.pt"), soft_run / "last.pt", spec).eval()
    method = method_for_pair(spec, "kd", net, student)
    stream = labels.batches(data.train)
    stored = chunk(soft_run)
    drawn = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        for images, targets, logits in stream:
            # Each row's stored logits name its image and view; the batch image is that view, exactly.
            # (Two views of one image may have the same crop and flip, hence the same logits: take the first.)
            same = (stored["logits"].flatten(0, 1)[:, None] == logits[None]).all(dim=2)
            assert same.any(dim=0).all()
            row = same.int().argmax(dim=0)
            image, view = row // VIEWS, row % VIEWS
            crops = (stored["top"][image, view].long(), stored["left"][image, view].long(), stored["flip"][image, view])
            assert torch.equal(images, data.train.augmented(image, crops))
            assert torch.equal(targets, data.train.labels[image])
            drawn.append(torch.stack([image, view, torch.full_like(image, epoch)], dim=1))
            live_terms, _ = distill_loss(student, net, method)(images, targets)
            stored_terms, _ = soft_label_loss(student, method, labels)(images, targets, logits)
            for name in live_terms:
                torch.testing.assert_close(stored_terms[name], live_terms[name], rtol=1e-5, atol=1e-6)
    drawn = torch.cat(drawn)
    per_epoch = [drawn[drawn[:, 2] == e] for e in (0, 1)]
    assert all(len(set(part[:, 0].tolist())) == len(part) for part in per_epoch)  # each image once per epoch
    first, second = (dict(zip(p[:, 0].tolist(), p[:, 1].tolist())) for p in per_epoch)
    assert any(first[i] != second[i] for i in first.keys() & second.keys())  # views drawn anew each epoch
    stream.set_epoch(1)
    again = [batch[2] for batch in stream]
    stream.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(again, [batch[2] for batch in stream]))  # a function of the epoch


def test_an_interrupted_precompute_resumes_to_the_same_store(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(soft_labels, "CHUNK_IMAGES", 40)  # 96 images: three chunks
    spec = with_soft_labels(base_spec(), "distill.soft_labels.keep=4")
    distill(spec, teacher, "dkd", out=tmp_path / "straight", quiet=True)
    real_save, written = soft_labels.save_atomic, []

    def save_then_stop(payload: dict, path: Path) -> None:
        if written:
            raise KeyboardInterrupt
        real_save(payload, path)
        written.append(path)

    monkeypatch.setattr(soft_labels, "save_atomic", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        distill(spec, teacher, "dkd", out=tmp_path / "resumed", quiet=True)
    monkeypatch.setattr(soft_labels, "save_atomic", real_save)
    store = tmp_path / "resumed" / "soft_labels"
    assert sorted(p.name for p in store.glob("chunk-*.pt")) == ["chunk-00000.pt"]
    assert not json.loads((store / "manifest.json").read_text())["complete"]
    with pytest.raises(SplicerError, match="soft labels being computed.*--resume"):
        distill(spec, teacher, "dkd", out=tmp_path / "resumed", quiet=True)
    distill(spec, teacher, "dkd", out=tmp_path / "resumed", resume=True, quiet=True)
    for index in range(3):
        a, b = chunk(tmp_path / "straight", index), chunk(tmp_path / "resumed", index)
        assert a.keys() == b.keys() == {"format", "chunk", "top", "left", "flip", "values", "classes", "rest"}
        assert all(torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key] for key in a)
    assert json.loads((store / "manifest.json").read_text())["complete"]


def test_a_resumed_distillation_ends_with_the_uninterrupted_weights(teacher: Path, tmp_path: Path):
    spec = with_soft_labels(base_spec(epochs=2, milestones=[1]))

    def train(out: Path, epochs: int, resume: bool) -> None:
        distill(apply_overrides(spec, {"epochs": epochs}), teacher, "dist", out=out, resume=resume, quiet=True)

    train(tmp_path / "straight", 2, resume=False)
    train(tmp_path / "resumed", 1, resume=False)
    train(tmp_path / "resumed", 2, resume=True)
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    flat_a, flat_b = flatten(straight["model"]), flatten(resumed["model"])
    assert flat_a.keys() == flat_b.keys()
    assert all(torch.equal(flat_a[key], flat_b[key]) for key in flat_a)
    assert [r["loss"] for r in records(tmp_path / "resumed")] == [r["loss"] for r in records(tmp_path / "straight")]


def test_a_store_of_other_settings_or_another_teacher_is_refused_and_kept(
    soft_run: Path, teacher: Path, tmp_path: Path
):
    store = tmp_path / "run" / "soft_labels"
    store.mkdir(parents=True)
    manifest = json.loads((soft_run / "soft_labels" / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps(manifest))
    other_views = apply_overrides(with_soft_labels(base_spec()), assignments=["distill.soft_labels.views=4"])
    with pytest.raises(SplicerError, match=r"computed for other settings.*views: was 3, now 4"):
        distill(other_views, teacher, "kd", out=tmp_path / "run", resume=True, quiet=True)
    manifest["fingerprint"]["teacher_digest"] = "0" * 64
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SplicerError, match="teacher_digest: was 0000"):
        distill(with_soft_labels(base_spec()), teacher, "kd", out=tmp_path / "run", resume=True, quiet=True)
    assert json.loads((store / "manifest.json").read_text()) == manifest  # nothing overwritten
    bf16 = apply_overrides(with_soft_labels(base_spec()), assignments=["distill.teacher_precision=bf16"])
    with pytest.raises(SplicerError, match="teacher_precision: was fp32, now bf16"):  # e.g. resumed on a CPU with AMX
        distill(bf16, teacher, "kd", out=tmp_path / "run", resume=True, quiet=True)


def test_methods_that_read_more_than_logits_are_refused_before_anything_runs(teacher: Path, tmp_path: Path):
    spec = with_soft_labels(base_spec())
    with pytest.raises(SplicerError, match="fitnets reads more of the teacher than its logits.*dist, dkd, kd"):
        distill(spec, teacher, "fitnets", out=tmp_path / "fitnets", quiet=True)
    assert not (tmp_path / "fitnets").exists()
    with pytest.raises(SplicerError, match="crd reads more"):
        check_methods(spec, ["kd", "crd"])
    assert check_methods(spec, ["kd", "dkd", "dist"]) == ["kd", "dkd", "dist"]


def test_streamed_image_folders_are_refused_with_the_reason():
    spec = spec_from_dict(
        toy_spec(
            input_size=[3, 96, 96],
            data={"dataset": "imagefolder", "root": "/nowhere"},
            distill={"soft_labels": {"views": 2}},
        )
    )
    with pytest.raises(SplicerError, match="stream from disk.*random resized crops.*in-memory data"):
        soft_labels.check_soft_labels(spec, "kd")


def test_the_spec_option_is_set_and_checked_from_the_command_line():
    spec = apply_overrides(base_spec(), assignments=["distill.soft_labels.views=4"])
    assert spec.distill.soft_labels is not None and spec.distill.soft_labels.views == 4
    assert spec.distill.soft_labels.keep == "full"
    for setting, message in (
        ("distill.soft_labels.keep=0", "keep is full .* or a positive number of top logits"),
        ("distill.soft_labels.keep=10", "10 top logits of 10 classes keep them all"),
        ("distill.soft_labels.views=0", "greater than or equal to 1"),
        ("distill.soft_labels.view=2", "did you mean 'views'"),
    ):
        with pytest.raises(SplicerError, match=message):
            apply_overrides(base_spec(), assignments=[setting])
    with pytest.raises(SplicerError, match="are all the same image; use views: 1"):
        apply_overrides(base_spec(), assignments=["distill.soft_labels.views=2", "data.augment=false"])


def test_top_k_keeps_the_top_probabilities_and_shares_the_rest_equally():
    torch.manual_seed(0)
    logits, k, tau = torch.randn(5, 2, 12) * 3, 4, 4.0
    kept = keep_top(logits, k, tau)
    assert kept["classes"].dtype == torch.int16
    rebuilt = rebuild_logits(kept["values"], kept["classes"], kept["rest"], 12, tau)
    teacher, student = F.softmax(logits / tau, dim=-1), F.softmax(rebuilt / tau, dim=-1)
    classes = kept["classes"].long()
    torch.testing.assert_close(student.gather(-1, classes), teacher.gather(-1, classes))
    others = student.scatter(-1, classes, math.nan)
    remainder = (1 - teacher.gather(-1, classes).sum(-1, keepdim=True)) / (12 - k)
    torch.testing.assert_close(others[~others.isnan()].view(5, 2, 12 - k), remainder.expand(5, 2, 12 - k))
