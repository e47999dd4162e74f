"""Stage 1 from a teacher you have (``--from``, ``teacher.pretrained``, ``teacher.head: reset``), the
fine-tuning recipe (``finetune:``: its schedule, ``teacher_lr_mult``, ``freeze_through``, resume) and
``splicer run --sftn-from``."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.assembly.build import compile_spec
from splicer.cli.main import app
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.training.checkpoint import load_checkpoint, teacher_state
from splicer.training.engine import seed_everything
from splicer.training.overrides import start_teacher_from
from tests.conftest import flatten, records, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def tiny(**overrides: object) -> dict:
    """The toy pair on 64 synthetic images: two steps an epoch."""
    return toy_spec(
        name="ft",
        data={"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 32},
        train={"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu"},
        **overrides,
    )


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def refused(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def trained_teacher(run: Path) -> dict[str, torch.Tensor]:
    return teacher_state(load_checkpoint(run / "last.pt"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A standard and an SFTN run of the toy pair (one epoch each), and the spec file."""
    folder = tmp_path_factory.mktemp("sources")
    spec = write(folder / "spec.yaml", tiny())
    cli("train", spec, "--standard", "-o", folder / "standard", "-q")
    cli("train", spec, "-o", folder / "sftn", "-q")
    return {"spec": spec, "standard": folder / "standard", "sftn": folder / "sftn"}


@pytest.mark.slow
def test_a_standard_run_starts_a_fine_tuned_sftn_with_its_blocks_frozen(sources: dict[str, Path], tmp_path: Path):
    """The teacher starts from exactly the standard run's weights; teacher_lr_mult 0 through block 2
    keeps blocks 1-2 (BatchNorm statistics included) bit-identical while block 3, head and branches learn."""
    finetune = {"epochs": 2, "lr": 0.02, "milestones": [1], "teacher_lr_mult": 0, "freeze_through": 2}
    spec = write(tmp_path / "ft.yaml", tiny(finetune=finetune))
    start = compile_spec(start_teacher_from(spec_from_dict(tiny()), str(sources["standard"]))).sftn.teacher
    source = trained_teacher(sources["standard"])
    assert start.state_dict().keys() == source.keys()
    assert all(torch.equal(value, source[key]) for key, value in start.state_dict().items())

    output = cli("train", spec, "--from", sources["standard"], "-o", tmp_path / "run")
    assert "blocks 1-2 are frozen" in output and "BatchNorm in eval mode" in output
    after = load_checkpoint(tmp_path / "run" / "last.pt")
    teacher = teacher_state(after)
    for key, value in source.items():
        frozen = key.startswith(("blocks.0.", "blocks.1."))
        assert torch.equal(teacher[key], value) == frozen or "num_batches" in key, key
    seed_everything(0)
    fresh = compile_spec(spec_from_dict(tiny())).sftn.state_dict()
    branches = {k: v for k, v in after["model"].items() if k.startswith("branches.") and v.is_floating_point()}
    assert any(not torch.equal(value, fresh[key]) for key, value in branches.items())
    epochs = records(tmp_path / "run")
    assert [r["epoch"] for r in epochs] == [1, 2] and [r["lr"] for r in epochs] == pytest.approx([0.02, 0.002])
    assert after["spec"]["teacher"]["checkpoint"] == str(sources["standard"])


@pytest.mark.slow
def test_an_sftn_run_starts_a_fine_tuned_sftn_from_its_teacher_part(sources: dict[str, Path], tmp_path: Path):
    """teacher_lr_mult 0 without freeze_through freezes the whole teacher: it ends as the source's teacher."""
    spec = write(tmp_path / "ft.yaml", tiny(finetune={"epochs": 1, "teacher_lr_mult": 0}))
    output = cli("train", spec, "--from", sources["sftn"] / "last.pt", "-o", tmp_path / "run")
    assert "starts from the sftn teacher in" in output and "blocks 1-3 and head are frozen" in output
    source, teacher = trained_teacher(sources["sftn"]), trained_teacher(tmp_path / "run")
    assert source.keys() == teacher.keys()
    assert all(torch.equal(teacher[key], value) for key, value in source.items())


@pytest.mark.slow
def test_a_timm_state_dict_with_another_class_count_starts_with_a_reset_head(tmp_path: Path):
    """A plain state_dict in timm's own keys, for 7 classes, into a 5-class spec: refused without
    `teacher.head: reset`; with it, every tensor but the classifier's is the file's, the classifier fresh."""
    pair = {
        "name": "timm-ft",
        "num_classes": 5,
        "input_size": [3, 16, 16],
        "teacher": {"model": "timm:resnet10t"},
        "student": {"model": "cifar:resnet8"},
        "data": {"dataset": "synthetic", "synthetic_train": 32, "synthetic_test": 32},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        "finetune": {"epochs": 1, "teacher_lr_mult": 0},
    }
    import timm

    torch.manual_seed(1)
    weights = timm.create_model("resnet10t", num_classes=7).state_dict()
    torch.save(weights, tmp_path / "resnet10t.pt")
    spec = write(tmp_path / "spec.yaml", pair)

    message = refused("train", spec, "--from", tmp_path / "resnet10t.pt", "-o", tmp_path / "no")
    assert "head has 7 classes" in message and "num_classes is 5" in message and "teacher.head: reset" in message
    assert "fc.weight 7x512 -> 5x512" in message

    reset = ("--set", "teacher.head=reset")
    output = cli("train", spec, "--from", tmp_path / "resnet10t.pt", *reset, "-o", tmp_path / "run")
    assert "teacher.head: reset: the weights have 7 classes, the spec 5" in " ".join(output.split())
    assert "freshly initialised fc.bias 7 -> 5, fc.weight 7x512 -> 5x512" in " ".join(output.split())
    teacher = {key.split(".", 2)[-1] if key.startswith("blocks.") else key[5:]: value
               for key, value in trained_teacher(tmp_path / "run").items()}  # fmt: skip
    assert teacher.keys() == weights.keys()
    for key, value in weights.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(teacher[key], value), key
    seed_everything(0)
    fresh = compile_spec(spec_from_dict(pair)).sftn.teacher.head.state_dict()
    assert torch.equal(teacher["fc.weight"], fresh["fc.weight"]) and torch.equal(teacher["fc.bias"], fresh["fc.bias"])

    torch.save({"stem.weight": torch.zeros(1)}, tmp_path / "other.pt")
    message = refused("train", spec, "--from", tmp_path / "other.pt", "-o", tmp_path / "no2")
    assert "they do not fit timm:resnet10t: missing " in message and "unexpected stem.weight" in message


@pytest.mark.slow
def test_resuming_a_fine_tuned_run_ends_with_the_uninterrupted_weights(sources: dict[str, Path], tmp_path: Path):
    """Two parameter groups (blocks 1 at lr x 0.5, the rest at lr) and the same resumed: bit-exact."""
    finetune = {"epochs": 2, "lr": 0.02, "teacher_lr_mult": 0.5, "freeze_through": "layer1"}
    spec = write(tmp_path / "ft.yaml", tiny(finetune=finetune))
    common = ("--from", sources["standard"], "-q")
    cli("train", spec, *common, "-o", tmp_path / "straight")
    cli("train", spec, *common, "-o", tmp_path / "resumed", "--set", "finetune.epochs=1")
    cli("train", spec, *common, "-o", tmp_path / "resumed", "--resume")
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert [g["lr"] for g in straight["optimizer"]["param_groups"]] == pytest.approx([0.02, 0.01])
    for part in ("model", "optimizer"):
        a, b = flatten(straight[part]), flatten(resumed[part])
        assert a.keys() == b.keys()
        for key in a:
            same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
            assert same, key
    assert [r["loss"] for r in records(tmp_path / "resumed")] == [r["loss"] for r in records(tmp_path / "straight")]
    changed = write(tmp_path / "changed.yaml", tiny(finetune={**finetune, "teacher_lr_mult": 0.1}))
    message = refused("train", changed, *common, "-o", tmp_path / "resumed", "--resume")
    assert "finetune.teacher_lr_mult: was 0.5, now 0.1" in message


def test_pretrained_offline_is_refused_with_the_way_to_pass_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No network (every connection fails, empty caches): one message naming --from FILE, no traceback."""
    import huggingface_hub.constants

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = write(tmp_path / "spec.yaml", {
        "name": "pre", "num_classes": 5, "input_size": [3, 16, 16],
        "teacher": {"model": "timm:resnet10t", "pretrained": True, "head": "reset"},
        "student": {"model": "cifar:resnet8"},
        "train": {"epochs": 1, "device": "cpu"},
    })  # fmt: skip
    message = refused("train", spec, "-o", tmp_path / "run")
    assert "teacher.pretrained: could not get the pretrained weights of timm:resnet10t" in message
    assert "splicer train SPEC --from FILE" in message and "timm.create_model('resnet10t', pretrained=True)" in message
    assert not (tmp_path / "run" / "last.pt").exists()

    from splicer.assembly.teacher_start import pretrained_state

    with pytest.raises(SplicerError, match=r"resnet18.*weights='DEFAULT'.*--from FILE"):
        pretrained_state("torchvision:resnet18", {}, "spec.yaml: teacher")
    with pytest.raises(SplicerError, match=r"cifar:resnet8 has no library weights.*--from FILE"):
        pretrained_state("cifar:resnet8", {}, "spec.yaml: teacher")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"finetune": {"freeze_through": 0}}, r"finetune\.freeze_through.*counts blocks from 1"),
        ({"finetune": {"teacher_lr_mult": -1}}, r"finetune\.teacher_lr_mult"),
        ({"finetune": {"epoch": 3}}, r"finetune\.epoch"),
        ({"teacher": {**toy_spec()["teacher"], "pretrained": True, "checkpoint": "x.pt"}}, "keep one"),
        ({"student": {**toy_spec()["student"], "head": "reset"}}, "teacher settings"),
    ],
)
def test_bad_fine_tuning_settings_are_refused_by_the_spec(change: dict, match: str):
    with pytest.raises(SplicerError, match=match):
        spec_from_dict(tiny(**change))


@pytest.mark.slow
def test_freeze_through_must_name_a_teacher_block(sources: dict[str, Path], tmp_path: Path):
    spec = write(tmp_path / "ft.yaml", tiny(finetune={"teacher_lr_mult": 0, "freeze_through": "layer9"}))
    message = refused("train", spec, "--from", sources["standard"], "-o", tmp_path / "run")
    assert "finetune.freeze_through: 'layer9' is no teacher block end; valid: layer1, layer2, layer3" in message
    message = refused("train", sources["spec"], "--from", sources["spec"].parent / "nowhere", "-o", tmp_path / "r2")
    assert "no such run folder or checkpoint file" in message


@pytest.mark.slow
def test_run_trains_the_standard_the_full_and_the_fine_tuned_sftn_side_by_side(tmp_path: Path):
    """--sftn-from scratch,standard: three teacher columns with their training times; the fine-tuned SFTN
    starts from the standard teacher of its seed and follows the spec's finetune: recipe."""
    spec = write(tmp_path / "spec.yaml", tiny(finetune={"epochs": 1, "lr": 0.01}))
    out = tmp_path / "experiment"
    cli("run", spec, "--methods", "kd", "--seeds", "0", "--sftn-from", "scratch,standard", "-o", out, "-q")
    report = json.loads((out / "report.json").read_text())
    assert report["teachers"] == ["standard", "sftn", "sftn-finetuned"]
    kd = report["methods"]["kd"]
    assert kd["delta_finetuned"] == pytest.approx(kd["sftn-finetuned"]["mean"] - kd["standard"]["mean"])
    assert kd["delta"] == pytest.approx(kd["sftn"]["mean"] - kd["standard"]["mean"])
    assert set(report["teacher_seconds"]) == {"standard", "sftn", "sftn-finetuned"}
    finetuned = load_checkpoint(out / "seed0" / "sftn-finetuned" / "last.pt")
    assert finetuned["spec"]["teacher"]["checkpoint"] == str(out / "seed0" / "standard")
    assert records(out / "seed0" / "sftn-finetuned")[0]["lr"] == pytest.approx(0.01)
    markdown = (out / "report.md").read_text()
    assert "| Teacher training method | Standard | SFTN | Δ | SFTN fine-tuned | Δ | Time |" in markdown
    assert "| Teacher training time |" in markdown and "KL SFTN fine-tuned" in markdown
    assert (out / "kd-from-sftn-finetuned").exists() is False and (out / "seed0" / "kd-from-sftn-finetuned").is_dir()

    # Only the fine-tuned SFTN, from the finished runs of a copy (reused, nothing trains again).
    shutil.copytree(out, tmp_path / "two")
    args = ("--methods", "kd", "--seeds", "0", "--sftn-from", "standard", "-o", tmp_path / "two", "--resume", "-q")
    again = cli("run", spec, *args)
    assert "| Teacher training method | Standard | SFTN fine-tuned | Δ | Time |" in again
    assert json.loads((tmp_path / "two" / "report.json").read_text())["teachers"] == ["standard", "sftn-finetuned"]
    message = refused("run", spec, "--sftn-from", "pretrained", "-o", tmp_path / "three")
    assert "--sftn-from pretrained: use scratch, standard or both" in message
