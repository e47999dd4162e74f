"""The data pipeline: augmentation, determinism, splits, sources and the image-folder cache."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from splicer.data import build_data, measure_pipeline_throughput
from splicer.data import imagefolder
from splicer.data.augment import crop_flip, crop_padding
from splicer.data.imagefolder import load_image_folder
from splicer.data.memory import area_resize, channel_stats
from splicer.data.splits import carve, stratified_split
from splicer.errors import SplicerError
from splicer.spec.schema import DataSpec

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


def synthetic_bundle(batch_size: int = 64, seed: int = 0, size: int = 16, **data):
    spec = DataSpec(dataset="synthetic", synthetic_train=512, synthetic_test=128, **data)
    return build_data(spec, (3, size, size), num_classes=10, batch_size=batch_size, device=CPU, seed=seed)


def write_image_folder(root: Path, classes: int, per_class: int, side: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """train/ and test/ with PNG and JPEG files; returns the PNG images (lossless) by path."""
    generator = torch.Generator().manual_seed(seed)
    pngs = {}
    for split in ("train", "test"):
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=generator)
                suffix = ".png" if i % 2 == 0 else ".jpg"
                path = folder / f"{i:03d}{suffix}"
                Image.fromarray(pixels.numpy()).save(path)
                if suffix == ".png":
                    pngs[str(path)] = pixels.permute(2, 0, 1)
    return pngs


# --- augmentation -------------------------------------------------------------------------


def test_crop_is_a_slice_of_the_padded_image():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    pad = 2
    top, left = torch.randint(0, 2 * pad + 1, (16,)), torch.randint(0, 2 * pad + 1, (16,))
    flip = torch.arange(16) % 2 == 0
    out = crop_flip(images, pad, top, left, flip)
    padded = F.pad(images, (pad, pad, pad, pad))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for b in range(16):
        window = padded[b, :, top[b] : top[b] + 8, left[b] : left[b] + 8]
        assert torch.equal(out[b], window.flip(-1) if flip[b] else window)


def test_centred_crop_with_flip_mirrors_the_image():
    images = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    centre = torch.full((4,), 2)
    assert torch.equal(crop_flip(images, 2, centre, centre, torch.zeros(4, dtype=torch.bool)), images)
    assert torch.equal(crop_flip(images, 2, centre, centre, torch.ones(4, dtype=torch.bool)), images.flip(-1))


def test_crop_padding_scales_with_the_image():
    assert [crop_padding(side) for side in (32, 16, 8, 4, 64)] == [4, 2, 1, 1, 8]


def test_training_batches_have_the_model_input_shape_and_dtype():
    bundle = synthetic_bundle(batch_size=64)
    assert len(bundle.train) == 512 // 64
    batches = list(bundle.train)
    assert len(batches) == len(bundle.train)
    images, labels = batches[0]
    assert images.shape == (64, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(bundle.train.labels.tolist())
    assert sum(len(y) for _, y in bundle.eval) == bundle.num_eval == 128
    assert bundle.eval_name == "test" and bundle.num_train == 512


def test_augmentation_changes_training_images_but_not_eval_images():
    plain = synthetic_bundle(augment=False)
    augmented = synthetic_bundle(augment=True)
    (x_plain, y_plain), (x_aug, y_aug) = next(iter(plain.train)), next(iter(augmented.train))
    assert torch.equal(y_plain, y_aug)  # same shuffle
    assert not torch.allclose(x_plain, x_aug)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain.eval, augmented.eval))


def test_normalisation_gives_zero_mean_unit_std():
    bundle = synthetic_bundle(augment=False)
    images = torch.cat([x for x, _ in bundle.train])
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (images.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_channel_stats_match_float_computation():
    images = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    as_float = images.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), as_float.mean(dim=(0, 2, 3)))
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), as_float.std(dim=(0, 2, 3), unbiased=False))


def test_area_resize_averages_pixel_blocks():
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    expected = F.avg_pool2d(images.float(), 2).round().to(torch.uint8)
    assert torch.equal(area_resize(images, (16, 16)), expected)


# --- determinism --------------------------------------------------------------------------


def epoch_labels(bundle) -> torch.Tensor:
    return torch.cat([y for _, y in bundle.train])


def test_shuffle_is_determined_by_seed_and_epoch():
    first, again, other_seed = synthetic_bundle(seed=1), synthetic_bundle(seed=1), synthetic_bundle(seed=2)
    epoch0 = [x for x, _ in first.train]
    assert all(torch.equal(a, b) for a, b in zip(epoch0, (x for x, _ in again.train)))
    assert not torch.equal(epoch0[0], next(iter(other_seed.train))[0])
    # Iterating advances the epoch; set_epoch replays one.
    epoch1 = [x for x, _ in first.train]
    assert not torch.equal(epoch0[0], epoch1[0])
    first.train.set_epoch(1)
    assert torch.equal(next(iter(first.train))[0], epoch1[0])
    again.train.set_epoch(0)
    assert torch.equal(next(iter(again.train))[0], epoch0[0])


def test_throughput_is_positive_and_leaves_the_epoch_alone():
    bundle = synthetic_bundle()
    bundle.train.set_epoch(3)
    assert measure_pipeline_throughput(bundle, batches=20) > 0
    assert bundle.train.epoch == 3


# --- splits -------------------------------------------------------------------------------


def test_stratified_split_is_disjoint_proportional_and_fixed():
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate([100, 200, 300, 400])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    picked, rest = stratified_split(labels, 100)
    assert len(picked) == 100 and len(rest) == 900
    assert set(picked.tolist()).isdisjoint(rest.tolist())
    assert sorted(picked.tolist() + rest.tolist()) == list(range(1000))
    counts = torch.bincount(labels[picked], minlength=4).tolist()
    assert all(abs(c - e) <= 1 for c, e in zip(counts, [10, 20, 30, 40]))
    assert torch.equal(stratified_split(labels, 100)[0], picked)


def test_carve_takes_validation_first_then_the_subset():
    labels = torch.arange(1000) % 10
    train, val = carve(labels, val_split=100, train_subset=300)
    assert len(val) == 100 and len(train) == 300
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert torch.bincount(labels[val]).tolist() == [10] * 10
    assert torch.bincount(labels[train]).tolist() == [30] * 10
    with pytest.raises(SplicerError, match="train_subset: 901"):
        carve(labels, val_split=100, train_subset=901)
    with pytest.raises(SplicerError, match="val_split: 1000"):
        carve(labels, val_split=1000, train_subset=None)


def test_val_split_replaces_the_test_split():
    bundle = synthetic_bundle(val_split=100, train_subset=200)
    assert bundle.eval_name == "val" and bundle.num_eval == 100 and bundle.num_train == 200
    assert len(bundle.train) == 200 // 64
    train_images = {tuple(img.flatten().tolist()) for img in bundle.train.images}
    assert not any(tuple(img.flatten().tolist()) in train_images for img in bundle.eval.images)


def test_resize_must_agree_with_input_size():
    with pytest.raises(SplicerError, match="input_size"):
        build_data(DataSpec(resize=16), (3, 32, 32), 10, 64, CPU, 0)


# --- sources ------------------------------------------------------------------------------


def test_synthetic_task_is_learnable():
    torch.manual_seed(0)
    spec = DataSpec(dataset="synthetic", synthetic_train=1024, synthetic_test=256)
    bundle = build_data(spec, (3, 16, 16), num_classes=10, batch_size=64, device=CPU, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for images, labels in bundle.train:
            loss = F.cross_entropy(model(images), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in bundle.eval)
    assert correct / bundle.num_eval > 0.5  # chance is 0.1


def test_synthetic_data_ignores_the_training_seed():
    assert torch.equal(synthetic_bundle(seed=0).eval.images, synthetic_bundle(seed=5).eval.images)


def test_missing_cifar_names_the_root_and_the_fix(tmp_path):
    spec = DataSpec(dataset="cifar10", root=str(tmp_path))
    with pytest.raises(SplicerError) as error:
        build_data(spec, (3, 32, 32), 10, 64, CPU, 0)
    assert str(tmp_path) in str(error.value) and "data.download: true" in str(error.value)
    with pytest.raises(SplicerError, match="data.root"):
        build_data(DataSpec(dataset="cifar100"), (3, 32, 32), 100, 64, CPU, 0)


def test_image_folder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    pngs = write_image_folder(tmp_path, classes=3, per_class=4, side=8)
    spec = DataSpec(dataset="imagefolder", root=str(tmp_path), workers=0)
    bundle = build_data(spec, (3, 8, 8), num_classes=3, batch_size=4, device=CPU, seed=0)
    assert bundle.num_train == 12 and bundle.num_eval == 12 and bundle.class_names == ["class0", "class1", "class2"]
    cache = tmp_path / ".splicer-cache"
    assert sorted(p.name for p in cache.iterdir()) == ["test-8x8-RGB.pt", "train-8x8-RGB.pt"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(imagefolder, "_decode_all", no_decoding)
    train = load_image_folder(tmp_path / "train", (8, 8), 3, workers=0)
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    paths = [p for p in pngs if "/train/" in p]
    for path in paths:  # PNGs are lossless: decoded pixels are the written ones
        index = sorted(str(p) for p in (tmp_path / "train").rglob("*.*")).index(path)
        assert torch.equal(train.images[index], pngs[path])
    monkeypatch.undo()
    resized = build_data(spec.model_copy(update={"resize": 4}), (3, 4, 4), 3, 4, CPU, 0)
    assert resized.eval.images.shape == (12, 3, 4, 4) and (cache / "train-4x4-RGB.pt").exists()


def test_image_folder_cache_is_refreshed_when_files_change(tmp_path):
    write_image_folder(tmp_path, classes=2, per_class=2, side=8)
    first = load_image_folder(tmp_path / "test", (8, 8), 3, workers=0)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "test" / "class1" / "zzz.png")
    second = load_image_folder(tmp_path / "test", (8, 8), 3, workers=0)
    assert len(first) == 4 and len(second) == 5
    assert torch.equal(second.images[-1][0], torch.full((8, 8), 255, dtype=torch.uint8))


def test_image_folder_cache_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_image_folder(data, classes=2, per_class=2, side=8)
    (data / ".splicer-cache").write_text("a file where the cache folder would go: the root cache is unusable")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    load_image_folder(data / "test", (8, 8), 3, workers=0)
    assert [p.name for p in (tmp_path / "home-cache" / "splicer" / "imagefolder").glob("*/*.pt")] == ["test-8x8-RGB.pt"]
    monkeypatch.setattr(imagefolder, "_decode_all", None)  # a second load must not decode
    assert len(load_image_folder(data / "test", (8, 8), 3, workers=0)) == 4


def test_image_folder_class_count_mismatch_names_both(tmp_path):
    write_image_folder(tmp_path, classes=3, per_class=1, side=8)
    spec = DataSpec(dataset="imagefolder", root=str(tmp_path), workers=0)
    with pytest.raises(SplicerError, match=r"3 class folders .* num_classes: 5"):
        build_data(spec, (3, 8, 8), num_classes=5, batch_size=4, device=CPU, seed=0)


def test_large_images_use_the_imagenet_pipeline(tmp_path):
    write_image_folder(tmp_path, classes=2, per_class=3, side=96)
    spec = DataSpec(dataset="imagefolder", root=str(tmp_path), workers=0, val_split=2)
    bundle = build_data(spec, (3, 80, 80), num_classes=2, batch_size=2, device=CPU, seed=0)
    assert bundle.eval_name == "val" and bundle.num_train == 4 and bundle.num_eval == 2
    assert bundle.mean == (0.485, 0.456, 0.406)
    assert len(bundle.train) == 2
    images, labels = next(iter(bundle.train))
    assert images.shape == (2, 3, 80, 80) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert [x.shape[0] for x, _ in bundle.eval] == [2]
    assert not (tmp_path / ".splicer-cache").exists()


def test_real_cifar10_test_split_loads_from_the_shared_archive():
    tool = REPO.parent / "shared" / "tools" / "cifar10-root"
    archive = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
    if not tool.exists() or not archive.exists() or shutil.which("tar") is None:
        pytest.skip("the CIFAR-10 archive (../shared/data/cifar10-jpg.tar.gz) is not available")
    result = subprocess.run([str(tool)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.skip(f"cifar10-root failed: {result.stderr.strip()}")
    root = Path(result.stdout.strip())
    test = load_image_folder(root / "test", (16, 16), 3, workers=2)
    assert test.images.shape == (10000, 3, 16, 16)
    assert len(test.classes) == 10 and torch.bincount(test.labels).tolist() == [1000] * 10
