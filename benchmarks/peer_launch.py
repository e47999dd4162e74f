"""Runs one tool of the peer throughput benchmark inside that tool's own virtual environment.

Imports only the standard library, torch and torchvision (and torchdistill where asked), so the same
file starts splicer, RepDistiller's ``train_student.py`` and torchdistill's example script alike:

- ``--threads N``: ``torch.set_num_threads(N)`` and one inter-op thread before the tool starts.
- ``--accept-generated-cifar``: torchvision's CIFAR reader checks the files' MD5 against the real
  archive's and refuses anything else; the benchmark's generated CIFAR-100 files are accepted instead
  (every tool reads them through torchvision, so all three get the same relaxation, nothing else).
- ``--torchdistill-models SRC``: registers RepDistiller's CIFAR ResNets (``SRC/models/resnet.py``) in
  torchdistill's model registry (torchdistill ships no resnet32x4/resnet8x4), and prints the exact
  length of each training epoch's loop (``MetricLogger.log_every`` over the training loader, the span
  torchdistill's own "Total time" line reports to the whole second).
- ``--check-teacher REF CKPT SRC``: RepDistiller's resnet32x4 with ``CKPT`` must give REF's logits.

    python peer_launch.py [options] SCRIPT ARGS...     # as `python SCRIPT ARGS...`
    python peer_launch.py [options] -m MODULE ARGS...  # as `python -m MODULE ARGS...`
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

EPOCH_LINE = "peer_launch: torchdistill training epoch {epoch}: {images} images in {seconds:.6f} s"


def accept_generated_cifar() -> None:
    """Let torchvision's CIFAR readers take files whose checksums are not the published archive's."""
    import torchvision.datasets.cifar as cifar

    cifar.check_integrity = lambda *args, **kwargs: True


def register_repdistiller_models(source: Path) -> None:
    """RepDistiller's resnet32x4 and resnet8x4 under torchdistill model keys of the same names."""
    sys.path.insert(0, str(source))
    from models.resnet import resnet8x4, resnet32x4  # RepDistiller's models/resnet.py
    from torchdistill.models.registry import register_model

    for factory in (resnet32x4, resnet8x4):
        register_model(key=f"repdistiller_{factory.__name__}")(factory)


def time_torchdistill_epochs() -> None:
    """Print the wall time and images of every training epoch's loop (header "Epoch: [k]")."""
    from torchdistill.misc.log import MetricLogger

    original = MetricLogger.log_every

    def timed(self, iterable, log_freq, header=None):
        if not (header or "").startswith("Epoch:"):
            yield from original(self, iterable, log_freq, header)
            return
        images = 0
        started = time.perf_counter()
        for batch in original(self, iterable, log_freq, header):
            yield batch
            images += len(batch[1])
        seconds = time.perf_counter() - started
        print(EPOCH_LINE.format(epoch=header.split("[")[1].rstrip("]"), images=images, seconds=seconds), flush=True)

    MetricLogger.log_every = timed


def check_teacher(reference: Path, checkpoint: Path, source: Path) -> None:
    """Exit non-zero unless RepDistiller's resnet32x4 loaded from ``checkpoint`` gives ``reference``'s logits."""
    import torch

    sys.path.insert(0, str(source))
    from models.resnet import resnet32x4

    expected = torch.load(reference, weights_only=True)
    model = resnet32x4(num_classes=expected["logits"].shape[1])
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        logits = model.eval()(expected["inputs"])
    difference = (logits - expected["logits"]).abs().max().item()
    print(f"peer_launch: teacher logits differ from splicer's by at most {difference:.2e}")
    if not difference < 1e-4:
        sys.exit("peer_launch: RepDistiller's teacher is not splicer's: the weights were mapped wrongly")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--accept-generated-cifar", action="store_true", help="skip torchvision's CIFAR MD5 check")
    parser.add_argument("--torchdistill-models", type=Path, metavar="SRC", help="RepDistiller checkout to register")
    parser.add_argument("--check-teacher", nargs=3, type=Path, metavar=("REF", "CKPT", "SRC"))
    parser.add_argument("-m", dest="module", help="run this module as __main__")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="SCRIPT ARGS... (or ARGS... after -m MODULE)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if args.check_teacher:
        check_teacher(*args.check_teacher)
        return
    if args.accept_generated_cifar:
        accept_generated_cifar()
    if args.torchdistill_models:
        register_repdistiller_models(args.torchdistill_models)
        time_torchdistill_epochs()
    if args.module:
        sys.argv = [args.module, *args.target]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        script = Path(args.target[0]).resolve()
        sys.argv = [str(script), *args.target[1:]]
        sys.path.insert(0, str(script.parent))  # as `python SCRIPT` puts the script's folder first
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
