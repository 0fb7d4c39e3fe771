"""Model packages: safetensors weights + a JSON card, loaded without pickle.

A package is a folder holding ``card.json`` and ``weights.safetensors``. The card says everything a
user or a STAC item needs: bands in order, scale, input units, ground sampling distances, receptive
field, architecture and provenance. ``"default"`` names the package shipped inside stacsr.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from stacsr.model.generator import Generator, GeneratorConfig, clamp_consistent
from stacsr.plumbing.timing import Timings, timed

CARD = "card.json"
WEIGHTS = "weights.safetensors"
DEFAULT = "default"


class ModelError(ValueError):
    """A model package that cannot be used (missing, not safetensors, card/weights mismatch)."""


@dataclass(frozen=True)
class ModelCard:
    """What a model is: the contract between its weights and the pipeline."""

    name: str
    version: str
    bands: list[str]  # asset band names in input order, e.g. B02, B03, B04, B08
    common_names: list[str]  # eo common names, same order
    architecture: dict[str, Any]  # GeneratorConfig as a dict
    gsd_in: float = 10.0
    input_unit: str = "reflectance x 10000 (uint16, 0 = nodata)"
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> GeneratorConfig:
        return GeneratorConfig.from_dict(self.architecture)

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def gsd_out(self) -> float:
        return self.gsd_in / self.scale

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(scale=self.scale, gsd_out=self.gsd_out, receptive_radius=self.config.receptive_radius)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as e:
            raise ModelError(f"model card is incomplete: {e}") from None


@dataclass
class ModelPackage:
    """A loaded model: its card, its network (eval mode) and the sha256 of its weights file."""

    card: ModelCard
    generator: Generator
    sha256: str
    weights: bytes = field(repr=False)  # the safetensors file, for shipping to workers
    folder: str | None = None  # the package folder it was loaded from (None: built from bytes)

    def to_bytes(self) -> tuple[str, bytes]:
        """(card JSON, safetensors bytes): what :func:`from_bytes` rebuilds the package from."""
        return json.dumps(self.card.to_dict()), self.weights

    @property
    def receptive_radius(self) -> int:
        return self.generator.receptive_radius

    @property
    def ref(self) -> str:
        """Short identity used in STAC items: ``name@version+sha256[:12]``."""
        return f"{self.card.name}@{self.card.version}+{self.sha256[:12]}"


def default_path() -> Path:
    return Path(str(resources.files("stacsr.model") / "default"))


def resolve(name_or_path: str | Path) -> Path:
    """Folder of a package: ``"default"`` → the shipped one, else a local folder path."""
    return default_path() if str(name_or_path) == DEFAULT else Path(name_or_path)


def load(name_or_path: str | Path = DEFAULT) -> ModelPackage:
    """Load a package folder, checking that its card and weights agree. Never unpickles anything."""
    folder = resolve(name_or_path)
    card_file, weights_file = folder / CARD, folder / WEIGHTS
    if not card_file.is_file() or not weights_file.is_file():
        raise ModelError(f"{folder} is not a model package (needs {CARD} and {WEIGHTS})")
    package = from_bytes(card_file.read_text(), weights_file.read_bytes(), source=str(folder))
    package.folder = str(folder.absolute())
    return package


def from_bytes(card_text: str, weights: bytes, source: str = "<memory>") -> ModelPackage:
    """Build a package from the card's JSON text and the safetensors bytes (how Ray actors get it)."""
    try:
        card = ModelCard.from_dict(json.loads(card_text))
    except json.JSONDecodeError as e:
        raise ModelError(f"model card of {source} is not valid JSON: {e}") from None
    try:
        state = load_safetensors(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"weights of {source} are not a safetensors file ({e})") from None
    generator = load_generator(card, state, source)
    return ModelPackage(card, generator, hashlib.sha256(weights).hexdigest(), weights)


def load_generator(card: ModelCard, state: dict[str, torch.Tensor], source: str) -> Generator:
    """The card's network (eval mode) with the weights ``state`` loaded strictly; ModelError when they disagree."""
    if len(card.bands) != card.config.bands or len(card.common_names) != len(card.bands):
        raise ModelError(
            f"model card of {source} lists {len(card.bands)} bands ({', '.join(card.bands)}) "
            f"but its network takes {card.config.bands}"
        )
    generator = Generator(card.config)
    _load_state(generator, state, source)
    return generator.eval()


TRAINING_ONLY = "to_images."  # the generator's intermediate heads, used by MSG-GAN training only


def _load_state(generator: Generator, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; a package without the training-only heads gets them zeroed."""
    own = generator.state_dict()
    state = {**{k: torch.zeros_like(v) for k, v in own.items() if k.startswith(TRAINING_ONLY)}, **state}
    expected = {k: tuple(v.shape) for k, v in own.items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise ModelError(f"model card of {source} disagrees with its weights (first differences: {diff})")
    generator.load_state_dict(state)


def save(card: ModelCard, generator: Generator, folder: str | Path) -> ModelPackage:
    """Write a package folder (card + safetensors weights) and return it as loaded."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", "name": card.name})
    (folder / CARD).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return load(folder)


PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Predictor:
    """Runs a package's generator on uint16 arrays and returns uint16 DN (0 kept for nodata only).

    ``precision`` ``"bf16"`` or ``"fp16"`` runs the network in half precision (see
    :meth:`~stacsr.model.generator.Generator.forward`); ``"fp32"`` is exact. On a GPU, batches travel as
    16-bit integers through pinned host memory with copies that do not block, and come back as 16-bit
    integers: a quarter of float32's bytes each way. :meth:`launch` queues a batch and returns at once, so the
    caller can read the next batch while the device works. ``timings`` (benchmarks) receives ``transfer`` and
    ``model`` seconds; on a GPU that synchronises around each stage.
    """

    def __init__(
        self,
        package: ModelPackage,
        device: str | None = None,
        threads: int | None = None,
        precision: str = "fp32",
        timings: Timings | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # channels-last convolutions run 1.3–1.5× faster on this CPU (make bench) and suit GPUs too
        self.generator = copy.deepcopy(package.generator).to(self.device, memory_format=torch.channels_last).eval()
        self.scale = package.card.scale
        self.consistent = package.card.config.consistent
        self.dtype = PRECISIONS[precision]
        self.timings = timings
        self._cuda = self.device.type == "cuda"
        self._sync = torch.cuda.synchronize if self._cuda else None
        if self._cuda and self.dtype is None:
            # fp32 means fp32: PyTorch's default TF32 convolutions put CUDA up to 3 DN off the CPU, fp32 within 1
            # (tests/device/gpu_check.py on an H200). A process-wide switch; the half precisions are unaffected.
            torch.backends.cudnn.allow_tf32 = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(N, bands, h, w)`` uint16 → ``(N, bands, h·scale, w·scale)`` uint16."""
        return self.launch(batch)()

    @torch.inference_mode()
    def launch(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        """Queue ``batch`` on the device; the returned function waits for its output (uint16)."""
        with timed(self.timings, "transfer", self._sync):
            x = self._to_device(batch)
        with timed(self.timings, "model", self._sync):
            y = self.generator(x, self.dtype)
            if self.consistent:  # clipping must not undo the block means the network made equal to the input
                y = clamp_consistent(y, x, self.scale)
            y = y.round_().clamp_(1, 65535).to(torch.int32)
        if not self._cuda:
            out = y.numpy().astype(np.uint16)
            return lambda: out
        with timed(self.timings, "transfer", self._sync):
            host = torch.empty(y.shape, dtype=torch.int16, pin_memory=True)
            host.copy_(y.to(torch.int16), non_blocking=True)  # two's complement: the uint16 bits, wrapped
            done = torch.cuda.Event()
            done.record()

        def result() -> np.ndarray:
            done.synchronize()
            return host.numpy().view(np.uint16)

        return result

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        if not self._cuda:
            return torch.from_numpy(batch.astype(np.float32, copy=False)).contiguous(memory_format=torch.channels_last)
        bits = torch.from_numpy(np.ascontiguousarray(batch).view(np.int16)).pin_memory()
        x = bits.to(self.device, non_blocking=True).to(torch.int32) & 0xFFFF  # back to 0…65535 on the device
        return x.to(torch.float32).contiguous(memory_format=torch.channels_last)
