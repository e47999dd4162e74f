"""Spec validation: every user mistake gives one message naming file, field, value and the fix."""

from __future__ import annotations

import json

import pytest

from splicer.errors import SpecError
from splicer.spec import load_spec
from splicer.spec.schema import Spec
from tests.conftest import REPO, toy_spec


def test_the_paper_spec_loads():
    spec = load_spec(REPO / "specs" / "vgg13_vgg8.yaml")
    assert spec.teacher.blocks == ["stage2", "stage3", "stage4", "stage5"]
    assert (spec.loss.teacher_ce, spec.loss.branch_kl, spec.loss.branch_ce, spec.loss.tau) == (1.0, 3.0, 1.0, 1.0)
    assert spec.source.endswith("vgg13_vgg8.yaml")


def test_unknown_key_names_the_field_and_suggests(write_spec):
    spec = toy_spec()
    spec["teacher"]["blokcs"] = ["layer1"]
    path = write_spec(spec)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: teacher.blokcs: unknown field; did you mean 'blocks'")
    assert "Valid fields here: blocks, checkpoint, head, kwargs, model, num_blocks, pretrained" in message


def test_unknown_top_level_key(write_spec):
    path = write_spec(toy_spec(los={"tau": 2}))
    with pytest.raises(SpecError, match=r"los: unknown field; did you mean 'loss'\?"):
        load_spec(path)


def test_wrong_type_shows_the_value(write_spec):
    path = write_spec(toy_spec(num_classes="many"))
    with pytest.raises(SpecError, match=r"num_classes: Input should be a valid integer.*\(got 'many'\)"):
        load_spec(path)
    path = write_spec(toy_spec(loss={"tau": -1}))
    with pytest.raises(SpecError, match=r"loss.tau: Input should be greater than 0 \(got -1\)"):
        load_spec(path)


def test_unknown_model_name_suggests_the_closest(write_spec):
    spec = toy_spec()
    spec["teacher"]["model"] = "cifar:vgg31"
    path = write_spec(spec)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: teacher.model: unknown CIFAR model 'vgg31'; did you mean")
    assert "Valid: " in str(info.value)


def test_unknown_model_source(write_spec):
    spec = toy_spec()
    spec["student"]["model"] = "keras:vgg8"
    with pytest.raises(SpecError, match="student.model: unknown model source 'keras'; valid sources: cifar, timm, torchvision, python"):
        load_spec(write_spec(spec))


def test_missing_field_and_bad_yaml(write_spec):
    spec = toy_spec()
    del spec["student"]
    with pytest.raises(SpecError, match="student: required field is missing"):
        load_spec(write_spec(spec))
    with pytest.raises(SpecError, match=r"spec.yaml:2:\d+: not valid YAML"):
        load_spec(write_spec("name: x\n  bad: [\n"))
    with pytest.raises(SpecError, match="expected a YAML mapping"):
        load_spec(write_spec("- just\n- a list\n"))


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_too_few_block_ends(write_spec):
    spec = toy_spec()
    spec["teacher"]["blocks"] = ["layer3"]
    with pytest.raises(SpecError, match="teacher.blocks: an SFTN needs at least 2 blocks"):
        load_spec(write_spec(spec))


def test_train_recipe_defaults_and_overrides():
    spec = Spec.model_validate(toy_spec(train={"recipe": "imagenet", "epochs": 5}))
    assert (spec.train.lr, spec.train.batch_size, spec.train.milestones, spec.train.epochs) == (0.1, 256, [30, 60, 90], 5)
    cifar = Spec.model_validate(toy_spec())
    assert (cifar.train.lr, cifar.train.batch_size, cifar.train.epochs, cifar.train.weight_decay) == (0.05, 64, 240, 5e-4)


def test_json_schema_describes_the_spec():
    schema = Spec.model_json_schema()
    assert set(schema["required"]) == {"name", "num_classes", "input_size", "teacher", "student"}
    assert schema["$defs"]["NetworkSpec"]["additionalProperties"] is False
    json.dumps(schema)


def test_transforms_section_defaults_to_the_paper_and_names_valid_kernels(write_spec):
    spec = load_spec(write_spec(toy_spec()))
    assert (spec.transforms.equal_kernel, spec.transforms.activation) == (1, True)
    path = write_spec(toy_spec(transforms={"equal_kernel": 2}))
    with pytest.raises(SpecError, match=r"transforms.equal_kernel: Input should be 1 or 3 \(got 2\)"):
        load_spec(path)


@pytest.mark.parametrize(("cpus", "workers"), [(1, 0), (2, 2), (3, 3), (16, 4)])
def test_data_workers_default_to_the_cpus_this_process_may_use(monkeypatch, cpus, workers):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    spec = Spec(**toy_spec())
    assert spec.data.workers == workers
    assert Spec(**toy_spec(data={"workers": 7})).data.workers == 7  # a spec's own value stands
