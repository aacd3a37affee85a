"""Training runs recorded live into the run store (what ``mahiax train --run`` does).

One process writes a run: it trains, the probes read each step, the store's writer batches the
rows, and a checkpoint is written atomically every ``checkpoint_every`` steps so that
``--resume`` continues exactly where the last checkpoint left off (RNG states included). A run
that raises is marked failed with its error and step; a killed one is shown as interrupted by
readers once its heartbeat goes stale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mahiax.config import MahiaConfig, config_differences
from mahiax.errors import BadInput, ResumeConflict
from mahiax.store import RunReader, RunWriter, paths, resolve_store_path
from mahiax.telemetry.cadence import Cadence
from mahiax.telemetry.probes import TrainingProbe
from mahiax.training.checkpoint import load_checkpoint, save_checkpoint
from mahiax.training.trainer import StepRecord, Trainer


def checkpoint_path(store: str | Path | None, name: str) -> Path:
    """Where run ``name``'s checkpoint lives: ``<store dir>/checkpoints/<name>.pt``."""
    return paths.checkpoint_path(resolve_store_path(store), name)


class TrainingFailed(RuntimeError):
    """Training raised; the run is stored as failed with the original error and step."""

    def __init__(self, step: int, error: BaseException):
        super().__init__(f"training failed at step {step}: {type(error).__name__}: {error}")
        self.step, self.error = step, error


def stored_config(name: str, store: str | Path | None = None) -> MahiaConfig:
    """The config run ``name`` was recorded with; a catalog run is refused (it cannot resume)."""
    run = RunReader(store).run(name)
    if run["bug"] is not None:
        raise BadInput(
            f"run {name!r} is a bug-catalog run ({run['bug']} / {run['variant']}); "
            "catalog runs are short and cannot be resumed: record a new one with "
            "--bug ID --variant V --run NEW_NAME"
        )
    return MahiaConfig.from_dict(run["config"])


def record_training(
    config: MahiaConfig,
    name: str,
    steps: int,
    *,
    store: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 100,
    cadence: Cadence | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> Trainer:
    """Train run ``name`` up to step ``steps`` (counting resumed ones), writing every step to
    the store; the LR follows ``lr_at(step, lr, warmup_steps, config.max_steps)``.

    With ``resume=True`` the run continues from its checkpoint (from step 0 if it has none
    yet). ``config`` must then equal the stored config in every field but ``max_steps``
    (:func:`mahiax.config.continue_config` builds it from the stored one; a difference raises
    :class:`~mahiax.errors.ResumeConflict`), and ``steps`` must lie past the checkpoint. The
    schedule is the one of a run planned for ``config.max_steps`` steps from the start: the
    stored steps keep the LR they ran with, and the resumed steps take that schedule's LR,
    step for step; resuming with the stored ``max_steps`` reproduces the uninterrupted run
    exactly (RNG states included, so with ``dropout > 0`` too).

    Under ``torchrun`` every rank calls this; rank 0 writes the run (its figures are over the
    global batch) and the checkpoints, the other ranks only train.
    """
    if checkpoint_every < 1:
        raise BadInput(f"checkpoint_every={checkpoint_every} must be a positive integer")
    ckpt = checkpoint_path(store, name)
    state = None
    if resume:
        diff = config_differences(stored_config(name, store), config)
        if diff:
            field, (old, new) = next(iter(diff.items()))
            raise ResumeConflict(name, field, old, new)
        state = load_checkpoint(ckpt) if ckpt.exists() else None
        done = int(state["step"]) if state is not None else 0
        if steps <= done:
            raise BadInput(f"run {name!r} has trained {done} steps already; ask for more "
                           f"(--steps N with N > {done}) to continue it")
    trainer = Trainer(config)
    if state is not None:
        trainer.load_state_dict(state)
    if not trainer.dist.is_main:  # data parallel: rank 0 alone writes the store
        while trainer.step_num < steps:
            record = trainer.step()
            if on_step is not None:
                on_step(record)
        return trainer
    cadence = cadence or Cadence()
    writer = RunWriter(
        name, config.to_dict(), path=store, resume=resume, device=str(trainer.device),
        world_size=trainer.dist.world_size, cadence=cadence.to_dict(),  # kept with the run
    )
    if resume:
        writer.rewind(trainer.step_num)  # rows past the checkpoint are recomputed, not kept
    # reads memory after each forward, in full also at the last step
    probe = TrainingProbe(writer, cadence, trainer=trainer, last_step=steps - 1)
    step = trainer.step_num
    try:
        while trainer.step_num < steps:
            step = trainer.step_num
            record = trainer.step()
            probe.observe(trainer, record)
            writer.heartbeat()
            if on_step is not None:
                on_step(record)
            if trainer.step_num % checkpoint_every == 0:
                writer.flush()  # the store never lags behind the checkpoint
                save_checkpoint(trainer.state_dict(), ckpt)
        if trainer.step_num > 0 and (trainer.step_num - 1) % probe.cadence.snapshot_every:
            probe.snapshot(trainer, trainer.step_num - 1)  # the final state, for the dashboard
        save_checkpoint(trainer.state_dict(), ckpt)
    except KeyboardInterrupt:
        writer.finish("interrupted")
        raise
    except Exception as e:
        writer.finish("failed", error=e, error_step=step)
        raise TrainingFailed(step, e) from e
    else:
        writer.finish("finished")
    finally:
        probe.close()
        writer.close()
    return trainer


def record_bug(
    entry_id: str, variant: str, name: str, steps: int | None = None, *,
    store: str | Path | None = None,
):
    """Train a catalog variant and record each step live: losses, graph size, memory,
    gradient error; a failure is stored with PyTorch's own error type, message and step.
    ``steps`` defaults to the entry's own number of steps."""
    import builtins

    from mahiax.bugs import get
    from mahiax.bugs.harness import harness_config, observing, observing_trainer

    entry = get(entry_id)  # an unknown id fails here, before the store is touched
    steps = entry.steps if steps is None else steps
    # the catalog tag is store data (the Bug lab groups an entry's variants by it); the
    # config is the harness model's, or the one the entry trains the trainer's model with
    config = (entry.run_config(variant, steps) if entry.run_config is not None
              else harness_config())
    cadence = Cadence()  # the probe's, for entries that train with the Trainer itself
    writer = RunWriter(name, config.to_dict(), path=store, catalog=(entry_id, variant),
                       cadence=cadence.to_dict())
    probe = TrainingProbe(writer, cadence)

    def observe_trainer(trainer, record) -> None:
        probe.observe(trainer, record)
        writer.heartbeat()

    def log(row: dict) -> None:
        if row["variant"] != variant:
            return  # a probe run the entry makes to judge the variant, not the variant itself
        step = row["step"]
        writer.log({k: v for k, v in row.items() if k not in ("step", "variant")}, step)
        writer.heartbeat()

    try:
        with observing(log), observing_trainer(observe_trainer):
            out = entry.run(variant, steps)
    except KeyboardInterrupt:
        writer.finish("interrupted")
        writer.close()
        raise
    except Exception as e:
        writer.finish("failed", error=e, error_step=None)
        writer.close()
        raise
    finally:
        probe.close()
    if out.passed:
        writer.finish("finished")
    else:
        exc_type = getattr(builtins, out.error_type or "", None)
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
            exc_type = RuntimeError
        writer.finish("failed", error=exc_type(out.error_message), error_step=out.error_step)
    writer.close()
    return out
