"""Emit ``sftn.py``: the source of a compiled SFTN, which never imports splicer.

Each block is written as a class whose ``forward`` is the code torch.fx generated for it and
whose ``__init__`` puts the same submodules and tensors at the same paths, so ``SFTN()`` has
exactly the state_dict keys and shapes of ``splicer.build(spec)``. A network is written one of
two ways (see :mod:`splicer.emission.networks`): layer by layer when all its leaf layers are
torch.nn layers (the file then needs only torch), or, for any other model (timm's own layers,
a user's module kept opaque during tracing), over the model itself, which the file creates
from the spec's reference as splicer did. The file's docstring says what it needs.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
import textwrap

from torch import nn

from splicer import __version__
from splicer.assembly import modules as sftn_modules
from splicer.assembly.build import BuildResult
from splicer.emission.networks import EmissionError, NetworkSource, module_expr, network_source, support_functions
from splicer.synthesis.transforms import Resize

__all__ = ["EmissionError", "emit_source"]


def emit_source(result: BuildResult) -> str:
    """The text of ``sftn.py`` for a compiled SFTN."""
    imports: dict[str, int] = {"import torch": 0, "from torch import nn": 0}  # line -> group (0 imports, 1 after)
    own_classes: dict[str, str] = {}  # splicer's transform layers beyond Resize, written out by name
    sftn, spec = result.sftn, result.spec
    teacher = network_source(
        result.teacher, spec.teacher, spec.num_classes, "Teacher", 1, sftn.teacher.blocks, sftn.teacher.head, imports
    )
    # Branch 1 holds every student block from 2 to N: one class each, shared by all branches.
    first_branch = sftn.branches[0]
    student = network_source(
        result.student, spec.branch_network, spec.num_classes, "Student", 2, list(first_branch.blocks), first_branch.head, imports
    )
    transforms = [
        _sequential_expr(branch.transform, f"transform T^{i}", own_classes) for i, branch in enumerate(sftn.branches, 1)
    ]

    header = _header(result, [teacher, student], imports)
    support_objects = [
        *support_functions(
            over_model=bool(teacher.factory or student.factory),
            layer_by_layer=not (teacher.factory and student.factory),
            packed_constants=teacher.packed_constants or student.packed_constants,
        ),
        Resize,
        sftn_modules.BlockNet,
        sftn_modules.Branch,
        sftn_modules.SFTNOutput,
    ]
    support = "\n\n".join(textwrap.dedent(inspect.getsource(obj)) for obj in support_objects)
    support = "\n\n\n".join([support, *own_classes.values()]) if own_classes else support
    sftn_base = textwrap.dedent(inspect.getsource(sftn_modules.SFTN)).replace(
        "class SFTN(nn.Module):", "class _SFTNBase(nn.Module):", 1
    )
    factories = [network.factory for network in (teacher, student) if network.factory]
    import_lines = sorted(imports, key=lambda line: (imports[line], not line.startswith("import"), line))
    preamble = "from __future__ import annotations\n\nfrom collections import OrderedDict\nfrom typing import NamedTuple\n\n"
    preamble += "from torch import Tensor\nfrom torch.nn import functional as F\n"
    main = _main_class(result, teacher, student, transforms)
    init_data = [network.init_data() for network in (teacher, student) if not network.factory]
    body = "\n\n\n".join([support, sftn_base, *factories, *init_data, *teacher.classes, *student.classes, main])
    return header + "\n" + preamble + "\n".join(import_lines) + "\n\n\n" + body


def _main_class(result: BuildResult, teacher: NetworkSource, student: NetworkSource, transforms: list[str]) -> str:
    """The ``SFTN`` class: the teacher's blocks, and one branch per teacher block but the last.

    Everything is created in splicer.build's order (the teacher, the student it traces, then per
    branch a fresh student and its transform), so that under the same ``torch.manual_seed``
    ``SFTN()`` draws the weights ``splicer.build`` drew.
    """
    sftn = result.sftn
    n = len(sftn.teacher.blocks)
    lines = [
        "        # splicer.build's order, so that torch.manual_seed(s); SFTN() draws splicer.build's weights under seed s:",
        "        # the teacher, the student splicer traces, then per branch a fresh student and its transform.",
    ]
    teacher_blocks = ", ".join(teacher.call(k, "model") for k in range(n))
    clone_flags = list(sftn.teacher.clone_inputs)
    teacher_net = f"BlockNet([{teacher_blocks}], {teacher.head_call('model')}, clone_inputs={clone_flags})"
    if teacher.factory:
        lines += ["        model = _teacher_model()", f"        teacher = {teacher_net}"]
    else:
        lines += [
            "        with torch.random.fork_rng(devices=[]):  # the layers' own draws are replaced by the model's",
            f"            teacher = {teacher_net}",
            f"        replay_initialisation([*teacher.blocks, teacher.head], {teacher.init_name})",
        ]
    if student.factory:
        lines.append("        _student_model()  # the student splicer traces: its draws come before the branches'")
    else:
        lines.append(f"        replay_initialisation([], {student.init_name})  # the student splicer traces")
    lines.append("        branches = []")
    for i in range(1, n):
        blocks = ", ".join(student.call(k - 2, "student") for k in range(i + 1, n + 1))
        clone = sftn.branches[i - 1].clone_input
        if student.factory:
            lines.append("        student = _student_model()  # a fresh student per branch, as splicer.build makes")
            lines.append(
                f"        branches.append(Branch({transforms[i - 1]}, [{blocks}], {student.head_call('student')}, "
                f"clone_input={clone}))"
            )
        else:
            lines += [
                "        with torch.random.fork_rng(devices=[]):",
                f"            blocks, head = [{blocks}], {student.head_call('student')}",
                f"        replay_initialisation([*blocks, head], {student.init_name})  # a fresh student per branch",
                f"        branches.append(Branch({transforms[i - 1]}, blocks, head, clone_input={clone}))",
            ]
    lines.append("        super().__init__(teacher, branches)")
    return (
        "class SFTN(_SFTNBase):\n"
        '    """The compiled SFTN: teacher blocks, and one student branch per teacher block but the last."""\n\n'
        "    def __init__(self) -> None:\n" + "\n".join(lines) + "\n"
    )


def _header(result: BuildResult, networks: list[NetworkSource], imports: dict[str, int]) -> str:
    """The module docstring: what the file is, and what it needs to run."""
    spec = result.spec
    title = f'"""Standalone SFTN "{spec.name}": teacher {spec.teacher.model}, student branches {spec.branch_network.model}.\n\n'
    usage = (
        "``SFTN()`` builds the\narchitecture with the state_dict keys of ``splicer.build``, initialised as splicer\n"
        "initialised it (under the same ``torch.manual_seed``, the same weights); load trained weights\n"
        "with ``model.load_state_dict(torch.load(path, weights_only=True))``.\n"
    )
    packages, user_modules = _needs(imports, networks)
    if not packages and not user_modules:
        return title + f"Generated by splicer {__version__} from {result.source}; needs only torch. " + usage + '"""\n'
    title = title.replace('"""Standalone SFTN', '"""SFTN', 1)
    needs = ["- torch"] + [f"- {package}" for package in packages]
    needs += [
        f"- the module {name} importable (run from the folder that holds it, or add that folder to PYTHONPATH)"
        for name in user_modules
    ]
    built = []
    for network in networks:
        if network.factory:
            many = " (a fresh one per branch)" if network.role == "student" else ""
            built.append(f"The {network.role}{many} is created as ``{network.constructor}``; its blocks run over its layers.")
            if network.checkpoint:
                built.append(f"The spec's {network.role} checkpoint ({network.checkpoint}) is not loaded here.")
    built.append(" ".join(usage.split()))
    paragraph = textwrap.fill(" ".join(built), 96, break_long_words=False, break_on_hyphens=False)
    return (
        title
        + f"Generated by splicer {__version__} from {result.source}; it never imports splicer. It needs:\n"
        + "\n".join(needs)
        + "\n\n"
        + paragraph
        + '\n"""\n'
    )


def _needs(imports: dict[str, int], networks: list[NetworkSource]) -> tuple[list[str], list[str]]:
    """The packages beyond torch that the imports need (with the versions generated against), and the user's modules."""
    user_modules = sorted({n.user_module for n in networks if n.user_module})
    user_roots = {name.split(".")[0] for name in user_modules}
    roots: set[str] = set()
    for line in imports:
        words = line.split()
        if words[0] in ("import", "from"):
            roots.add(words[1].split(".")[0])
    roots -= {"torch", "__future__"} | user_roots | set(sys.stdlib_module_names)
    distributions = importlib.metadata.packages_distributions()
    packages = []
    for root in sorted(roots):
        dist = (distributions.get(root) or [root])[0]
        try:
            packages.append(f"{root} (generated with {dist} {importlib.metadata.version(dist)})")
        except importlib.metadata.PackageNotFoundError:
            packages.append(root)
    return packages, user_modules


def _sequential_expr(module: nn.Module, where: str, own_classes: dict[str, str]) -> str:
    children = ", ".join(
        f"{name}={module_expr(child, f'{where}.{name}', own_classes)}" for name, child in module.named_children()
    )
    return f"nn.Sequential(OrderedDict({children}))"
