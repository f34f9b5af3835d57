"""What a training run checks and settles before its models are built: its output folder (refused, cleared or
trimmed for a resume: custom_pipelines.training.output_dir) and, with `--push_to_hub`, whether a push could work.
Each check fails on every rank together, so no rank waits at a barrier for one that already stopped."""

from __future__ import annotations

from collections.abc import Callable

from accelerate import PartialState

from .output_dir import apply_output_dir_plan, check_writable, plan_output_dir


def prepare_output_dir(args, resume_from: str | None, state: PartialState) -> None:
    """Decide what the run does with its folder (custom_pipelines.training.output_dir): refuse another run's
    folder now, before the models are built, and check the folder can be written. What the decision changes in the
    folder (clearing the old run, trimming a resumed one) waits for `apply_output_dir` in the Trainer, once the
    models and the data have passed their own checks: a run that stops on bad data has deleted nothing.

    Every rank decides (each raises the same error, so none waits at a barrier for a rank that failed)."""
    plan = plan_output_dir(
        args.output_dir,
        resume_from,
        resume_requested=bool(getattr(args, "resume_from_checkpoint", None)),
        overwrite=getattr(args, "overwrite_output_dir", False),
    )
    # every rank has read the folder before rank 0 writes into it (the write probe, accelerate's log folders): a
    # slower rank would otherwise find rank 0's first files and take the fresh folder for another run's
    state.wait_for_everyone()
    _on_main_process(state, lambda: check_writable(args.output_dir))
    args.output_dir_plan, args.resume_step = plan, plan.resume_step


def apply_output_dir(args) -> None:
    """Carry out the plan `prepare_output_dir` made (once): rank 0 changes the folder while the others wait."""
    plan = getattr(args, "output_dir_plan", None)
    if plan is None:
        return
    state = PartialState()
    state.wait_for_everyone()  # every rank has read what it needs from the folder before rank 0 changes it
    _on_main_process(state, lambda: apply_output_dir_plan(args.output_dir, plan))
    args.output_dir_plan = None


def check_push_possible(args, state: PartialState) -> None:
    """`--push_to_hub`: what can fail before training (offline mode, no token, a bad repo id, an unreachable hub,
    a read-only token) fails now, on every rank, with rank 0's one-line reason."""
    from custom_pipelines.hub.push import push_preflight_error

    def check() -> None:
        reason = push_preflight_error(args.hub_model_id, args.hub_token)
        if reason is not None:
            raise ValueError(f"--push_to_hub: {reason}")

    _on_main_process(state, check)


def _on_main_process(state: PartialState, fn: Callable[[], None]) -> None:
    """Run `fn` on rank 0 while the others wait; a ValueError/OSError there is raised on every rank (the others
    would otherwise wait at the next collective until --ddp_timeout)."""
    from accelerate.utils import broadcast_object_list

    error, caught = [None], None
    if state.is_main_process:
        try:
            fn()
        except (ValueError, OSError) as err:
            error, caught = [(isinstance(err, ValueError), str(err))], err
    if state.num_processes > 1:
        broadcast_object_list(error)
    if caught is not None:
        raise caught
    if error[0] is not None:
        is_value_error, message = error[0]
        raise (ValueError if is_value_error else OSError)(f"(on rank 0) {message}")
