"""Source for one network's blocks and head in ``sftn.py``: written out layer by layer, or over the model.

A block is a torch.fx GraphModule: fx's forward code over submodules and tensors at their
module paths. Its class in ``sftn.py`` keeps that code as is and rebuilds the paths:

- **layer by layer** when every leaf layer is a torch.nn layer and the model's initialisation
  can be replayed (see :mod:`splicer.emission.initialisation`): each layer is written from its
  ``repr``, which is a constructor call for torch.nn's layers (checked by rebuilding it), its
  tensors are then set by replaying the model's torch.nn.init calls, and the file needs only
  torch;
- **over the model** otherwise (timm's own norm layers, modules that tracing kept opaque, a
  user's layers, an initialisation that is not a list of torch.nn.init calls): the file creates the model from the spec's reference as splicer did
  (``timm.create_model(...)``, the user's factory) and each block takes the model's own
  submodules, parameters and buffers at their paths, exactly as ``fx.GraphModule`` took them
  from the traced model. What tracing added (dropout modules, tensor constants) is written
  out: small constants as ``torch.tensor`` literals, larger ones (timm's Swin V2 attention masks,
  computed from the input size while tracing) packed as their exact bytes, which
  :func:`_unpack_tensor` decodes. CIFAR zoo models are splicer's own, so they can only be written
  layer by layer.
"""

from __future__ import annotations

import base64
import inspect
import sys
import textwrap
import zlib
import types
from dataclasses import dataclass

import torch
from torch import fx, nn

from splicer.assembly.build import NetworkPlan
from splicer.emission.initialisation import (
    InitOp,
    NotReplayable,
    ops_literal,
    record_initialisation,
    replay_initialisation,
)
from splicer.errors import ModelSourceError, SplicerError
from splicer.models.registry import constructor_source, create_model
from splicer.spec.schema import NetworkSpec
from splicer.synthesis.transforms import Resize

# Names torch.fx code generation always puts in a forward's globals, and how to import them.
_STANDARD_GLOBALS = {
    "inf": "from math import inf",
    "nan": "from math import nan",
    "NoneType": "NoneType = type(None)",
    "torch": "import torch",
    "device": "from torch import device",
    "fx_pytree": "import torch.fx._pytree as fx_pytree",
    "pytree": "import torch.utils._pytree as pytree",
}

# Tensor constants that tracing added are written as readable literals up to this many elements, larger ones packed.
_MAX_CONSTANT_ELEMENTS = 4096
_PACKED_LINE = 96  # characters of base64 per line of a packed constant


class EmissionError(SplicerError):
    """The SFTN holds something that cannot be written as source."""


@dataclass
class NetworkSource:
    """The classes written for one network, and how ``SFTN.__init__`` instantiates them."""

    role: str  # teacher, student
    classes: list[str]
    block_names: list[str]
    head_name: str
    factory: str | None = None  # the ``_ROLE_model`` function's source, when written over the model
    constructor: str = ""  # the call that creates the model, e.g. timm.create_model('resnet18', ...)
    user_module: str | None = None  # the user's module a python: reference imports
    checkpoint: str | None = None
    packed_constants: bool = False  # whether its classes call _unpack_tensor
    init_ops: list[InitOp] | None = None  # the model's torch.nn.init calls, when written layer by layer

    @property
    def init_name(self) -> str:
        """The module-level list in ``sftn.py`` that holds :attr:`init_ops`."""
        return f"_{self.role.upper()}_INIT"

    def init_data(self) -> str:
        return ops_literal(self.init_ops or [], self.init_name)

    def call(self, index: int, model_var: str) -> str:
        """The expression that instantiates block ``index``."""
        return f"{self.block_names[index]}({model_var if self.factory else ''})"

    def head_call(self, model_var: str) -> str:
        return f"{self.head_name}({model_var if self.factory else ''})"


def network_source(
    plan: NetworkPlan,
    network: NetworkSpec,
    num_classes: int,
    title: str,
    first: int,
    blocks: list[fx.GraphModule],
    head: fx.GraphModule,
    imports: dict[str, int],
) -> NetworkSource:
    """Classes ``{title}Block{first}``..., ``{title}Head`` for ``blocks`` and ``head`` of one network."""
    role = title.lower()
    names = [f"{title}Block{k + first}" for k in range(len(blocks))] + [f"{title}Head"]
    parts = [*blocks, head]
    own_imports: dict[str, int] = {}
    try:
        classes = [_standalone_class(name, part, own_imports) for name, part in zip(names, parts)]
        ops = record_initialisation(lambda: create_model(network.model, num_classes, network.kwargs))
    except EmissionError as exc:
        reason = str(exc)
    except NotReplayable as exc:
        reason = f"its initialisation cannot be replayed without it: {exc}"
    else:
        imports.update(own_imports)
        return NetworkSource(role, classes, names[:-1], names[-1], init_ops=ops)
    try:
        import_line, constructor = constructor_source(network.model, num_classes, network.kwargs)
    except ModelSourceError as exc:
        raise EmissionError(f"{role} {network.model}: {reason}; and it cannot be created outside splicer: {exc}") from None
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        fresh = create_model(network.model, num_classes, network.kwargs)
    own_imports = {import_line: 0}
    classes = [_over_model_class(name, part, fresh, own_imports) for name, part in zip(names, parts)]
    imports.update(own_imports)
    factory = (
        f"def _{role}_model() -> nn.Module:\n"
        f'    """A fresh {network.model}, created as splicer created it (random initialisation)."""\n'
        f"    return {constructor}"
    )
    user_module = import_line.split()[1] if network.model.startswith("python:") else None
    checkpoint = str(network.checkpoint) if network.checkpoint else None
    packed = any(f"{_unpack_tensor.__name__}(" in text for text in classes)
    return NetworkSource(role, classes, names[:-1], names[-1], factory, constructor, user_module, checkpoint, packed)


def _standalone_class(name: str, block: fx.GraphModule, imports: dict[str, int]) -> str:
    """A class for one block: submodules written from their repr at their paths, fx's forward code as is.

    Its tensors get their values when ``SFTN.__init__`` replays the model's initialisation;
    the zeros written here for tensors without a layer are placeholders of the right shape.
    """
    lines = [f"class {name}(nn.Module):", "    def __init__(self) -> None:", "        super().__init__()"]
    for node in block.graph.nodes:
        if node.op == "call_module":
            module = block.get_submodule(node.target)
            lines.append(f"        _install(self, {node.target!r}, {module_expr(module, node.target)})")
        elif node.op == "get_attr":
            tensor = _get_attr(block, node.target)
            is_param = isinstance(tensor, nn.Parameter)
            if not is_param and node.target not in dict(block.named_buffers()):
                raise EmissionError(f"{name}: {node.target} is a tensor constant, not a parameter or buffer")
            lines.append(
                f"        _install(self, {node.target!r}, torch.zeros({list(tensor.shape)}, dtype={tensor.dtype}), "
                f"parameter={is_param})"
            )
    lines.append(_forward_source(name, block, imports))
    return "\n".join(lines)


def _over_model_class(name: str, block: fx.GraphModule, model: nn.Module, imports: dict[str, int]) -> str:
    """A class for one block that takes ``model``'s submodules and tensors at their paths, fx's forward code as is."""
    lines = [f"class {name}(nn.Module):", "    def __init__(self, model: nn.Module) -> None:", "        super().__init__()"]
    for node in block.graph.nodes:
        if node.op not in ("call_module", "get_attr"):
            continue
        built = _get_attr(block, node.target)
        fresh = _lookup(model, node.target)
        if fresh is not None:
            _check_same(built, fresh, f"{name}: {node.target}")
            lines.append(f"        _share(model, self, {node.target!r})")
        elif isinstance(built, nn.Module):  # added by tracing, e.g. a dropout module
            lines.append(f"        _install(self, {node.target!r}, {module_expr(built, node.target)})")
        else:
            is_param = isinstance(built, nn.Parameter)
            value = _tensor_expr(built, f"{name}: {node.target}", imports)
            lines.append(f"        _install(self, {node.target!r}, {value}, parameter={is_param})")
    lines.append(_forward_source(name, block, imports))
    return "\n".join(lines)


def _forward_source(name: str, block: fx.GraphModule, imports: dict[str, int]) -> str:
    """fx's forward code for ``block``, indented as a method.

    Its globals go to ``imports`` (group 0); what fx puts before ``def forward`` (the
    ``wrap("fn")`` calls that keep autowrapped functions such as timm's opaque to a later
    trace, which Python allows only at module level) goes there too, as group 1, after them.
    """
    code = block.graph.python_code(root_module="self")
    for global_name, value in code.globals.items():
        imports.setdefault(_import_line(global_name, value, name), 0)
    prelude, _, forward = code.src.partition("\ndef forward(")
    for line in prelude.splitlines():
        if line.strip():
            imports[line.strip()] = 1
    return textwrap.indent(("def forward(" + forward).strip("\n").rstrip(), "    ")


def _install(root: nn.Module, path: str, value: nn.Module | torch.Tensor, parameter: bool = False) -> None:
    """Put ``value`` at dotted ``path`` under ``root``, creating empty containers on the way."""
    *parents, leaf = path.split(".")
    for name in parents:
        if not hasattr(root, name):
            root.add_module(name, nn.Module())
        root = getattr(root, name)
    if isinstance(value, nn.Module):
        root.add_module(leaf, value)
    elif parameter:
        root.register_parameter(leaf, nn.Parameter(value))
    else:
        root.register_buffer(leaf, value)


def _share(model: nn.Module, block: nn.Module, path: str) -> None:
    """Put ``model``'s submodule, parameter or buffer at dotted ``path`` under ``block``, the same object.

    As ``torch.fx.GraphModule`` takes them from the traced model: empty containers on the way,
    nothing when a parent is already shared, tensors that are no parameters become buffers.
    """
    *parents, leaf = path.split(".")
    for name in parents:
        source, target = getattr(model, name), getattr(block, name, None)
        if source is target:
            return
        if target is None:
            target = nn.Module()
            setattr(block, name, target)
        model, block = source, target
    value = getattr(model, leaf)
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        block.register_buffer(leaf, value, persistent=leaf not in model._non_persistent_buffers_set)
    else:
        setattr(block, leaf, value)


def support_functions(over_model: bool, layer_by_layer: bool, packed_constants: bool = False) -> list[types.FunctionType]:
    """The helpers the block classes call, for ``sftn.py`` to carry: ``_share`` only where a network is over
    its model, ``replay_initialisation`` only where one is written layer by layer, ``_unpack_tensor``
    only where a large tensor constant is packed."""
    return (
        [_install]
        + ([_share] if over_model else [])
        + ([replay_initialisation] if layer_by_layer else [])
        + ([_unpack_tensor] if packed_constants else [])
    )


def _get_attr(block: nn.Module, target: str) -> nn.Module | torch.Tensor:
    value: object = block
    for part in target.split("."):
        value = getattr(value, part)
    return value  # type: ignore[return-value]


def _lookup(model: nn.Module, target: str) -> nn.Module | torch.Tensor | None:
    """What ``model`` holds at ``target``, None where it holds nothing (tracing added it)."""
    value: object = model
    for part in target.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value if isinstance(value, (nn.Module, torch.Tensor)) else None


def _check_same(built: nn.Module | torch.Tensor, fresh: nn.Module | torch.Tensor, where: str) -> None:
    """The freshly created model must hold what the compiled one held, or the file would build another network."""
    if type(built) is not type(fresh):
        problem = f"{type(fresh).__name__} instead of {type(built).__name__}"
    elif isinstance(built, nn.Module):
        shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
        fresh_shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}  # type: ignore[union-attr]
        problem = "" if shapes == fresh_shapes else f"state_dict {fresh_shapes} instead of {shapes}"
    else:
        problem = "" if built.shape == fresh.shape else f"shape {tuple(fresh.shape)} instead of {tuple(built.shape)}"
    if problem:
        raise EmissionError(f"{where}: the model created from its reference holds {problem} at this path")


def _tensor_expr(tensor: torch.Tensor, where: str, imports: dict[str, int]) -> str:
    """An exact expression for a tensor constant that tracing added: a readable literal when small, else packed bytes.

    A literal of tens of thousands of numbers would bury the file, so a larger constant is written as
    its raw little-endian bytes, zlib-compressed and base64-encoded (masks of a few distinct values
    shrink to little), with its dtype and shape in the call; the imports it needs go to ``imports``.
    """
    tensor = tensor.detach().cpu()
    if tensor.numel() <= _MAX_CONSTANT_ELEMENTS:
        return f"torch.tensor({tensor.tolist()!r}, dtype={tensor.dtype})"
    if tensor.is_complex() or tensor.is_quantized or tensor.layout != torch.strided or sys.byteorder != "little":
        raise EmissionError(f"{where}: cannot write a {tensor.dtype} tensor constant of {tensor.numel()} elements as bytes")
    raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    data = base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
    lines = "".join(f"            {data[i:i + _PACKED_LINE]!r}\n" for i in range(0, len(data), _PACKED_LINE))
    for line in ("import base64", "import sys", "import zlib"):
        imports.setdefault(line, 0)
    return f"{_unpack_tensor.__name__}({tensor.dtype}, {list(tensor.shape)}, (\n{lines}        ))"


def _unpack_tensor(dtype: torch.dtype, shape: list[int], data: str) -> torch.Tensor:
    """A tensor constant written packed: its raw little-endian bytes, zlib-compressed, base64-encoded."""
    if sys.byteorder != "little":
        raise RuntimeError("this file's packed tensor constants are little-endian; load it on a little-endian machine")
    raw = bytearray(zlib.decompress(base64.b64decode(data)))
    return torch.frombuffer(raw, dtype=dtype).reshape(shape).clone()


def module_expr(module: nn.Module, where: str, own_classes: dict[str, str] | None = None) -> str:
    """A constructor expression for a leaf layer, checked by rebuilding it.

    torch.nn layers and :class:`Resize` are written from their repr; with ``own_classes``,
    splicer's other transform layers too, whose class source is then added to ``own_classes``.
    """
    cls = type(module)
    expr = f"nn.{repr(module)}" if cls.__module__.startswith("torch.nn.") else repr(module)
    namespace = {"nn": nn, "torch": torch, "Resize": Resize}
    own = own_classes is not None and cls.__module__.startswith("splicer.synthesis.") and cls is not Resize
    if own:
        namespace[cls.__name__] = cls
    try:
        rebuilt = eval(expr, namespace)  # noqa: S307 - our own repr of a torch.nn or splicer layer
    except Exception:  # noqa: BLE001 - any failure means the repr is not a constructor
        rebuilt = None
    if (
        rebuilt is None
        or type(rebuilt) is not cls
        or repr(rebuilt) != repr(module)
        or {k: v.shape for k, v in rebuilt.state_dict().items()} != {k: v.shape for k, v in module.state_dict().items()}
    ):
        need = "a repr that is its constructor call" if own else "to be a torch.nn layer to be written out"
        raise EmissionError(f"cannot write {where} ({cls.__module__}.{cls.__name__}) as source: it needs {need}")
    if own:
        own_classes[cls.__name__] = textwrap.dedent(inspect.getsource(cls))  # type: ignore[index]
    return expr


def _import_line(name: str, value: object, where: str) -> str:
    if name in _STANDARD_GLOBALS:
        return _STANDARD_GLOBALS[name]
    if isinstance(value, str):  # a string annotation (``x: "Tensor"``) kept on a placeholder
        return f"{name} = {value!r}"
    if isinstance(value, types.ModuleType):
        return f"import {value.__name__} as {name}"
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        return f"from {module} import {qualname} as {name}"
    raise EmissionError(f"{where}: cannot import {name!r} ({value!r}) in the emitted source")
