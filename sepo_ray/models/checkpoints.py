"""Read training checkpoints as downloaded (PyTorch Lightning ``.ckpt``) without ever running code from them.

A Lightning checkpoint is a ``torch.save`` zip archive of one dict (``lightning.pytorch`` ``_dump_checkpoint``):

    state_dict        the LightningModule's state dict: ``backbone.*`` (the network), plus other modules' entries
    ema               MDLM's ``ExponentialMovingAverage.state_dict()``: {decay, num_updates, shadow_params}, the
                      shadow_params a list aligned with the trainable parameters of ``backbone.parameters()`` (then
                      ``noise.parameters()``), in registration order (MDLM / DRAKES ``models/ema.py``)
    hyper_parameters  ``dict(model.hparams)``; with Hydra, ``{"config": DictConfig, ...}``, an OmegaConf object
    epoch, global_step, loops, callbacks, optimizer_states, lr_schedulers, ...

Reading: ``torch.load(weights_only=True)`` first. It refuses a file that pickles any global outside PyTorch's
allowlist, and a Hydra-trained checkpoint always does (the OmegaConf config under ``hyper_parameters``). Then
:class:`_InertUnpickler` reads the archive itself: tensors are rebuilt from the archive's storages with
``Tensor.as_strided`` (bounds-checked), a short list of harmless builtins and torch dtypes is allowed, and every
other global (OmegaConf classes, ``typing.Any``, ``os.system`` in a malicious ``__reduce__``, ...) becomes a fresh
subclass of :class:`Opaque`: "calling" it only records its arguments, so no function or class named by the file is
ever called. Why not ``torch.serialization.safe_globals``: it would have to list, and then really construct,
every class of every config library a checkpoint may carry (OmegaConf needs its package installed; an unknown
class still fails); placeholders read any checkpoint's tensors and install nothing.

Plain values of ``hyper_parameters`` survive: an OmegaConf container pickles its children under ``_content`` and
a leaf its value under ``_val``, which :func:`plain` unwraps (``config.time_conditioning`` reads as a bool).
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
_DTYPES = {
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32", "int",
    "int16", "short", "int8", "uint8", "bool", "complex64", "cfloat", "complex128", "cdouble",
}  # fmt: skip
_BUILTINS = {  # constructors that build plain data from plain data (none that allocates by a count)
    "dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "int": int, "long": int,
    "float": float, "complex": complex, "bool": bool, "str": str, "unicode": str, "slice": slice,
}  # fmt: skip


class Opaque:
    """An object of a class the reader does not trust: what pickle asked to build, recorded, never run.

    ``args``: the call's arguments; ``state``: what BUILD passed; ``mapping`` / ``sequence``: SETITEMS / APPENDS.
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state, obj.mapping, obj.sequence = args, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.mapping[key] = value

    def append(self, value):
        self.sequence.append(value)

    def extend(self, values):
        self.sequence.extend(values)

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


@dataclass(frozen=True)
class _StorageType:
    """Stands for ``torch.FloatStorage`` & co. in a persistent id: only its dtype is read."""

    dtype: torch.dtype


def _rebuild_tensor(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    """``torch._utils._rebuild_tensor_v2`` without hooks or metadata: a view of the storage, bounds-checked."""
    if not isinstance(storage, Tensor):
        raise pickle.UnpicklingError("a tensor whose storage is not in the archive")
    return storage.as_strided(tuple(size), tuple(stride), int(storage_offset))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """``torch._utils._rebuild_parameter(_with_state)``: the parameter's data as a plain tensor."""
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("a parameter without tensor data")
    return data


_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "device"): torch.device,
    ("torch", "Size"): torch.Size,
}


class _InertUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip archive; storages come from ``<prefix>/data/<key>``."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, Tensor] = {}
        self.opaque: dict[str, type[Opaque]] = {}

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module
        if (module, name) in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[module, name]
        if module == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "_codecs" and name == "encode":  # how protocol 2 writes bytes
            return _latin1_bytes
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return getattr(torch, name)
        qualname = f"{module}.{name}"
        if qualname not in self.opaque:  # a fresh inert class per global: never the object the file names
            self.opaque[qualname] = type(f"Opaque_{len(self.opaque)}", (Opaque,), {"qualname": qualname})
        return self.opaque[qualname]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.60}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r:.60}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            dtype = storage_type.dtype
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key}: {len(raw)} bytes, expected {numel} x {itemsize}"
                )
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self.storages[key] = flat  # (numel,)
        storage = self.storages[key]
        return storage if storage.dtype == storage_type.dtype else storage.view(storage_type.dtype)


def _latin1_bytes(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol 2 uses it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode outside its bytes use")
    return text.encode("latin1")


def _inert_load(path: Path) -> tuple[Any, tuple[str, ...]]:
    """The object in a torch zip archive, every untrusted global replaced by an :class:`Opaque` class."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} is not a torch checkpoint archive (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        if (
            prefix + "byteorder" in archive.namelist()
            and archive.read(prefix + "byteorder").strip() != b"little"
        ):
            raise ValueError(f"{path} was written on a big-endian machine: not supported")
        unpickler = _InertUnpickler(archive, prefix)
        obj = unpickler.load()
    return obj, tuple(sorted(unpickler.opaque))


def plain(obj: Any, _depth: int = 0) -> Any:
    """The plain data in ``obj``: dicts, lists, str, numbers, bool, None. OmegaConf containers (``_content``) and
    nodes (``_val``), objects pickled with a ``__dict__`` and mappings read as their contents; anything else
    (tensors, placeholders without readable state) as None."""
    if _depth > 64:
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {k: plain(v, _depth + 1) for k, v in obj.items() if isinstance(k, (str, int, bool))}
    if isinstance(obj, (list, tuple)):
        return [plain(v, _depth + 1) for v in obj]
    if isinstance(obj, Opaque):
        state = obj.state[0] if isinstance(obj.state, tuple) and len(obj.state) == 2 else obj.state
        if isinstance(state, Mapping) and "_content" in state:  # OmegaConf DictConfig / ListConfig
            return plain(state["_content"], _depth + 1)
        if isinstance(state, Mapping) and "_val" in state:  # OmegaConf value node
            return plain(state["_val"], _depth + 1)
        if obj.mapping:  # a dict subclass (Lightning's AttributeDict)
            return plain({**obj.mapping, **(state if isinstance(state, Mapping) else {})}, _depth + 1)
        if isinstance(state, Mapping):  # an object's __dict__ (argparse.Namespace, a dataclass)
            return plain(state, _depth + 1)
        if obj.sequence:
            return plain(obj.sequence, _depth + 1)
    return None


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`read_checkpoint` read: tensors and plain values only.

    state_dict: name -> tensor (all the module's entries, prefixes kept); ema: the EMA state (``shadow_params``:
    list of tensors) or None; hyper_parameters: their plain values (see :func:`plain`); opaque: the globals that
    were replaced by inert placeholders (empty when ``torch.load(weights_only=True)`` read the file).
    """

    path: Path
    state_dict: dict[str, Tensor]
    ema: dict[str, Any] | None = None
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    opaque: tuple[str, ...] = ()

    def hparam(self, name: str) -> Any:
        """A hyper-parameter by name: at the top level, else in the Hydra ``config`` (None: not readable)."""
        hp = self.hyper_parameters
        if name in hp:
            return hp[name]
        config = hp.get("config")
        return config.get(name) if isinstance(config, Mapping) else None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A Lightning ``.ckpt`` (or a ``torch.save``-d bare state dict), read without running code from it.

    FileNotFoundError for a missing file; ValueError (one line, naming the file) for anything that is not a
    checkpoint holding a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    opaque: tuple[str, ...] = ()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # a global outside torch's allowlist (e.g. the OmegaConf config): read the archive inertly
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is not a PyTorch checkpoint (not a torch zip archive)") from None
        try:
            obj, opaque = _inert_load(path)
        except ValueError:
            raise
        except Exception as e:  # any failure on a foreign file means "not a checkpoint"
            raise ValueError(
                f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {_line(e)})"
            ) from None
    except Exception as e:
        raise ValueError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {_line(e)})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    state = obj.get("state_dict", obj)  # DRAKES' fine-tuned files: torch.save(model.state_dict()) itself
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a model checkpoint: no 'state_dict' of tensors")
    ema = obj.get("ema") if "state_dict" in obj else None
    if ema is not None and not (
        isinstance(ema, Mapping) and isinstance(ema.get("shadow_params"), (list, tuple))
    ):
        raise ValueError(f"{path}: its 'ema' entry has no list of shadow_params")
    hp = plain(obj.get("hyper_parameters")) if "state_dict" in obj else None
    tensors = {str(k): v.detach().clone() for k, v in state.items()}  # own memory, no hooks from the file
    return Checkpoint(path, tensors, ema, hp if isinstance(hp, dict) else {}, opaque)


def ema_state_dict(
    state_dict: Mapping[str, Tensor], names: Sequence[str], shadow_params: Sequence[Tensor], where: str
) -> dict[str, Tensor]:
    """``state_dict`` with the parameters ``names`` replaced by the EMA's ``shadow_params`` (aligned one to one,
    in the order the EMA was built with); ValueError (one line, prefixed ``where``) on a count or shape mismatch."""
    if len(shadow_params) != len(names):
        raise ValueError(
            f"{where}: the EMA holds {len(shadow_params)} shadow_params, the backbone has {len(names)} trainable "
            "parameters (not this architecture's EMA)"
        )
    out = dict(state_dict)
    for name, shadow in zip(names, shadow_params, strict=True):
        if not isinstance(shadow, Tensor) or tuple(shadow.shape) != tuple(state_dict[name].shape):
            got = tuple(shadow.shape) if isinstance(shadow, Tensor) else type(shadow).__name__
            raise ValueError(
                f"{where}: EMA shadow of {name} has shape {got}, expected {tuple(state_dict[name].shape)}"
            )
        out[name] = shadow
    return out


def split_weights_spec(spec: str | Path) -> tuple[str, str]:
    """``"PATH#ema"`` -> (PATH, "ema"); anything else -> (spec, "model")."""
    text = str(spec)
    return (text[: -len("#ema")], "ema") if text.endswith("#ema") else (text, "model")


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else "no message"
