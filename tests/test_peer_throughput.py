"""The pure parts of benchmarks/peer_throughput.py: the CIFAR-100 files and the teacher's renamed weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import peer_data  # noqa: E402
import peer_launch  # noqa: E402


@pytest.fixture
def unchecked_cifar(monkeypatch):
    """torchvision's CIFAR readers without their MD5 check, as peer_launch.py starts every tool."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    peer_launch.accept_generated_cifar()  # patches the same attribute; monkeypatch restores it


def test_generated_cifar100_reads_with_torchvision_and_splicer(tmp_path, unchecked_cifar):
    import torchvision

    from splicer.data.cifar import load_cifar

    peer_data.write_cifar100(tmp_path, train_images=40, test_images=12, seed=3)
    train = torchvision.datasets.CIFAR100(str(tmp_path), train=True)
    test = torchvision.datasets.CIFAR100(str(tmp_path), train=False)
    assert (len(train), len(test)) == (40, 12)
    assert train.data.shape == (40, 32, 32, 3) and len(train.classes) == 100
    image, label = train[0]
    assert image.size == (32, 32) and 0 <= label < 100
    ours = load_cifar("cifar100", str(tmp_path), download=False, train=True)
    assert torch.equal(ours.images[0], torch.from_numpy(train.data[0]).permute(2, 0, 1))
    assert ours.labels.tolist() == train.targets


def test_same_seed_same_files(tmp_path):
    first = peer_data.write_cifar100(tmp_path / "a", 20, 5, seed=1)
    second = peer_data.write_cifar100(tmp_path / "b", 20, 5, seed=1)
    other = peer_data.write_cifar100(tmp_path / "c", 20, 5, seed=2)
    assert (first / "train").read_bytes() == (second / "train").read_bytes()
    assert (first / "train").read_bytes() != (other / "train").read_bytes()


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("stem.conv.weight", "conv1.weight"),
        ("stem.bn.running_var", "bn1.running_var"),
        ("layer1.0.conv1.conv.weight", "layer1.0.conv1.weight"),
        ("layer2.3.conv1.bn.bias", "layer2.3.bn1.bias"),
        ("layer3.4.conv2.conv.weight", "layer3.4.conv2.weight"),
        ("layer3.4.conv2.bn.num_batches_tracked", "layer3.4.bn2.num_batches_tracked"),
        ("layer2.0.shortcut.conv.weight", "layer2.0.downsample.0.weight"),
        ("layer2.0.shortcut.bn.running_mean", "layer2.0.downsample.1.running_mean"),
        ("fc.weight", "fc.weight"),
    ],
)
def test_repdistiller_names(ours, theirs):
    assert peer_data.repdistiller_key(ours) == theirs


def test_every_resnet32x4_tensor_is_renamed_once():
    from splicer.models.cifar.resnet import resnet32x4

    state = resnet32x4(num_classes=100).state_dict()
    renamed = peer_data.repdistiller_state(state)
    assert len(renamed) == len(state) == 206
    assert sum(key.startswith("layer1.0.downsample.") for key in renamed) == 6  # 32 -> 64 channels: a shortcut
    assert all(renamed[peer_data.repdistiller_key(key)] is tensor for key, tensor in state.items())


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="no tensor of splicer's CIFAR ResNet"):
        peer_data.repdistiller_key("head.fc.weight")


@pytest.mark.parametrize("amx", [True, False])
def test_bf16_variants_run_only_where_the_cpu_has_amx(monkeypatch, capsys, amx):
    import peer_throughput

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    tools, skipped = peer_throughput.tools_to_run(peer_throughput.parse_args([]))
    bf16 = {v.name for v in peer_throughput.splicer_variants(1) if v.bf16}
    names = {tool.name for tool in tools}
    assert bf16 and (bf16 <= names if amx else not bf16 & names)
    assert set(skipped) == (set() if amx else bf16)
    assert {"splicer, folded teacher, fp32", "RepDistiller", "torchdistill"} <= names
    soft = [tool.variant for tool in tools if tool.variant is not None and tool.variant.stores_soft_labels]
    assert soft and all(any(s.startswith("distill.soft_labels.views=") for s in v.sets) for v in soft)
