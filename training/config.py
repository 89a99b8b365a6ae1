"""Training configuration: one dataclass, read from YAML, overridden from the command line.

Every field has a default, so ``opengallery train --protocol mnist5k --loss mel`` works with no
file; ``--config FILE`` reads a YAML mapping of the same field names, and explicit command-line
options win over the file. Unknown keys and bad values are a :class:`ConfigError` whose message
names the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from training.augment import AugmentParams

LOSSES = (
    "softmax",
    "garbage",
    "eos",
    "mel",
    "objectosphere",
    "arcface",
    "cosface",
    "cac",
    "simloss",
)
NETWORKS = ("lenetpp", "resnet")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "none")


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved as ``config.yaml`` in the run directory)."""

    # data
    protocol: str = "mnist5k"  # "mnist5k", "digits", "glyphs" or an image-folder root
    known: list[Any] | None = None  # class lists; None = the protocol's defaults
    negative: list[Any] | None = None
    unknown: list[Any] | None = None
    gallery: list[Any] | None = None  # open world: enrolled at evaluation, never trained on
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # train/val/test
    split_seed: int = 0  # the data split; fixed while the training seed varies
    image_size: int = 64  # H = W for image-folder data (built-in data is 28x28)
    color: str = "RGB"  # "L" or "RGB" for image-folder data
    # augmentation (training/augment.py): None = on for image-folder data, off for built-in
    augment: bool | None = None
    augment_params: dict[str, Any] = field(default_factory=dict)  # overrides of the defaults
    # network
    network: str = "lenetpp"
    embedding_dim: int = 32
    width: int = 32  # channels of the first stage; later stages double it
    # loss
    loss: str = "softmax"
    loss_params: dict[str, Any] = field(default_factory=dict)
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 10  # epochs between decays ("step" schedule)
    gamma: float = 0.1
    balanced: bool = False  # class-balanced sampling (negatives count as one class)
    max_steps: int | None = None  # stop each epoch after this many steps (tests, smoke runs)
    # reproducibility and hardware
    seed: int = 0
    deterministic: bool = True
    threads: int | None = None  # CPU threads of torch (None: its default); 1 is reproducible
    # across machines and fastest on a busy shared machine
    device: str = "auto"  # "auto", "cpu", "cuda"
    amp: bool = True  # mixed precision; used on CUDA only

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}")

        choice("loss", LOSSES)
        choice("network", NETWORKS)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("color", ("L", "RGB"))
        choice("device", ("auto", "cpu", "cuda"))
        for name in ("embedding_dim", "width", "epochs", "batch_size", "step_size", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps <= 0
        ):
            raise ConfigError(f"max_steps must be a positive integer or null; got {self.max_steps}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ConfigError(f"threads must be a positive integer or null; got {self.threads!r}")
        if not isinstance(self.lr, int | float) or self.lr <= 0:
            raise ConfigError(f"lr must be a positive number; got {self.lr!r}")
        if (
            len(self.split) != 3
            or any(not isinstance(s, int | float) or s < 0 for s in self.split)
            or not 0.999 <= sum(self.split) <= 1.001
            or min(self.split) <= 0
        ):
            raise ConfigError(
                f"split must be three positive fractions train/val/test summing to 1; "
                f"got {self.split}"
            )
        if not isinstance(self.loss_params, dict):
            raise ConfigError(f"loss_params must be a mapping; got {self.loss_params!r}")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise ConfigError(f"augment must be true, false or null; got {self.augment!r}")
        self.augment_parameters()

    def augment_parameters(self) -> AugmentParams:
        """The :class:`training.augment.AugmentParams` of this run (validated)."""
        from training.augment import AugmentParams

        return AugmentParams.from_dict(self.augment_params)

    def augments(self) -> bool:
        """Whether training augments: ``augment``, or by default only for image folders."""
        from training.data import BUILTIN

        return self.augment if self.augment is not None else self.protocol not in BUILTIN

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a configuration must be a mapping of fields; got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown configuration field {unknown[0]!r}; "
                f"known fields: {', '.join(sorted(names))}"
            )
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(str(error)) from None

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- YAML file (if any) <- overrides whose value is not None."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must hold a mapping of configuration fields")
        data.update(loaded or {})
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(data)
