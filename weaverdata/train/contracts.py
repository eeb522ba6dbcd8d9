"""What the training loop and a trainer agree on: the leaf contracts of weaverdata.train.

`Task` is what a trainer provides (`PlannerTask`, `VisualizerTask`, or a user's `module:Class`);
`Ranks` is what the loop gives it (rank, world size, collectives); `TrainError` is how either
says a run cannot start or go on. Nothing here imports the loop or a trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from weaverdata.io.storage import Location
    from weaverdata.train.config import TrainConfig
    from weaverdata.train.data import SampleIndex, SampleStream


class TrainError(RuntimeError):
    """A training run that cannot start or go on, with the reason."""


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: Any = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_sum(self, tensor):
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def gather(self, obj) -> list:
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_params(self, module) -> None:
        if self.distributed:
            import torch.distributed as dist

            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


class Task(Protocol):
    name: str
    count_keys: tuple[str, ...]  # the per-step counts `loss` returns, in this order
    schema: str
    kind_column: str | None
    columns: list[str] | None

    def setup(self, cfg: TrainConfig, out: Location, ranks: Ranks) -> None: ...
    def trainable(self) -> Any: ...  # the nn.Module whose parameters are optimized
    def stages(self, train: SampleIndex, steps: int) -> list[tuple[str, SampleIndex, int]]: ...  # (name, pool, last step)
    def next_batch(self, stream: SampleStream) -> Any | None: ...
    def batch_ids(self, batch: Any) -> list[str]: ...
    def loss(self, batch: Any, step: int, ranks: Ranks) -> tuple[Any, Any, dict[str, float]]: ...
    def evaluate(self, samples: list, ranks: Ranks) -> dict[str, float]: ...  # summed counts
    def finish_eval(self, sums: dict[str, float]) -> dict[str, float]: ...
    def save_model(self, folder: str) -> None: ...
    def load_model(self, folder: str) -> None: ...
    def on_checkpoint(self, folder: str, step: int, eval_samples: list) -> None: ...
    def counters(self) -> dict[str, float]: ...
