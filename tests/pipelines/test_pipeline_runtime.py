"""diffusers' runtime protocol on both pixel pipelines: the properties step callbacks read (`num_timesteps`,
`guidance_scale`, `do_classifier_free_guidance`, `interrupt`), `_interrupt` stopping the loop, latents replaced
mid-loop, and the one shared `__call__` signature / docstring."""

import inspect

import numpy as np
import pytest
import torch

from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from tests.pipelines.test_pipeline_class_conditional import make_pipe as make_cfg_pipe
from tests.utils import scheduler_config, tiny_unet

SHARED_ARGUMENTS = [
    "num_inference_steps",
    "timesteps",
    "generator",
    "latents",
    "eta",
    "output_type",
    "return_dict",
    "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
    "guidance_fn",
    "guidance_strength",
]


def make_unconditional_pipe():
    pipe = UnconditionalDiffusionPipeline(
        unet=tiny_unet(), scheduler=DDPMAncestralScheduler.from_config(scheduler_config())
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPES = {
    "unconditional": (make_unconditional_pipe, {"batch_size": 2}),
    "class_conditional": (make_cfg_pipe, {"class_labels": [3, 7], "guidance_scale": 2.0}),
}


@pytest.fixture(params=list(PIPES))
def pipe_and_conditioning(request):
    make, conditioning = PIPES[request.param]
    return make(), conditioning


def run(pipe, conditioning, steps=4, **kwargs):
    return pipe(
        **conditioning, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt",
        **kwargs,
    ).images  # fmt: skip


def unet_batch_sizes(pipe) -> list[int]:
    """Batch size of every UNet forward pass, appended as they happen."""
    sizes = []
    pipe.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


def test_callback_reads_num_timesteps_and_interrupt(pipe_and_conditioning):
    pipe, conditioning = pipe_and_conditioning
    seen = []

    def callback(p, i, t, tensors):
        seen.append((p.num_timesteps, p.interrupt))
        return tensors

    run(pipe, conditioning, steps=3, callback_on_step_end=callback)
    assert seen == [(3, False)] * 3
    run(pipe, conditioning, steps=5)
    assert pipe.num_timesteps == 5


@pytest.mark.parametrize("guidance_scale, cfg", [(2.0, True), (0.5, True), (1.0, False), (0.0, False)])
def test_callback_reads_guidance_properties(guidance_scale, cfg):
    pipe, seen = make_cfg_pipe(), []

    def callback(p, i, t, tensors):
        seen.append((p.guidance_scale, p.do_classifier_free_guidance))
        return tensors

    run(pipe, {"class_labels": [1], "guidance_scale": guidance_scale}, steps=2, callback_on_step_end=callback)
    assert seen == [(guidance_scale, cfg)] * 2


@pytest.mark.parametrize("stop_after", [0, 2])
def test_interrupt_stops_the_loop(pipe_and_conditioning, stop_after):
    pipe, conditioning = pipe_and_conditioning
    full = run(pipe, conditioning)
    calls, steps_seen = unet_batch_sizes(pipe), []

    def callback(p, i, t, tensors):
        steps_seen.append(i)
        if i == stop_after:
            p._interrupt = True
        return tensors

    images = run(pipe, conditioning, callback_on_step_end=callback)
    assert steps_seen == list(range(stop_after + 1))
    assert len(calls) == stop_after + 1  # one (batched) UNet pass per step run, none after the interrupt
    assert images.shape == full.shape and not torch.equal(images, full)
    calls.clear()
    run(pipe, conditioning)  # the next call starts uninterrupted
    assert len(calls) == 4 and pipe.interrupt is False


def test_callback_replacing_latents_mid_loop_changes_the_output(pipe_and_conditioning):
    pipe, conditioning = pipe_and_conditioning
    reference = run(pipe, conditioning)
    seen = []

    def zero_at_step_1(p, i, t, tensors):
        seen.append(float(tensors["latents"].abs().sum()))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 1 else tensors

    images = run(pipe, conditioning, callback_on_step_end=zero_at_step_1)
    assert not torch.allclose(images, reference, atol=1e-3)
    assert seen[2] < seen[1]  # the step after the replacement started from x = 0
    # The last step's replacement is what comes out: zero latents decode to mid-gray.
    last = run(pipe, conditioning, callback_on_step_end=lambda p, i, t, x: {"latents": torch.zeros_like(x["latents"])})
    torch.testing.assert_close(last, torch.full_like(last, 0.5))


def test_unknown_callback_tensor_input_raises(pipe_and_conditioning):
    pipe, conditioning = pipe_and_conditioning
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs must be a subset of \['latents'\]"):
        run(pipe, conditioning, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"])


def test_callback_can_cut_off_guidance_mid_loop():
    """diffusers' CFG cut-off pattern: `pipe._guidance_scale = 1.0` in a callback turns the batched pass off."""
    pipe = make_cfg_pipe()
    sizes = unet_batch_sizes(pipe)

    def cutoff(p, i, t, tensors):
        if i == 1:
            p._guidance_scale = 1.0
        return tensors

    run(pipe, {"class_labels": [3, 7], "guidance_scale": 2.0}, callback_on_step_end=cutoff)
    assert sizes == [4, 4, 2, 2]


@pytest.mark.parametrize("name", list(PIPES))
def test_call_signature_and_docstring_list_every_sampling_argument(name):
    make, conditioning = PIPES[name]
    pipe = make()
    parameters = list(inspect.signature(pipe.__call__).parameters)
    assert parameters == list(conditioning) + SHARED_ARGUMENTS
    for argument in parameters:
        assert f"\n            {argument} (`" in type(pipe).__call__.__doc__
    # Positional arguments bind in signature order, as in diffusers' pipelines; unknown ones are refused.
    by_position = pipe(*conditioning.values(), 2, None, torch.Generator().manual_seed(0), output_type="np").images
    by_name = pipe(**conditioning, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    np.testing.assert_array_equal(by_position, by_name.images)
    with pytest.raises(TypeError, match="num_steps"):
        pipe(**conditioning, num_steps=2)


@pytest.mark.parametrize("bad, match", [
    ({"latents": torch.full((1, 1, 8, 8), float("nan"))}, "latents must be finite"),
    ({"latents": torch.zeros(1, 1, 8, 8, dtype=torch.long)}, "floating-point"),
    ({"latents": [[0.0]]}, "latents must be a torch.Tensor"),
    ({"eta": -1.0}, r"eta must be a number in \[0, 1\]"),
    ({"eta": 1.5}, r"eta must be a number in \[0, 1\]"),
])  # fmt: skip
def test_bad_latents_and_eta_are_refused_by_name(bad, match):
    pipe = make_unconditional_pipe()
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    if isinstance(bad.get("latents"), torch.Tensor):
        bad = {"latents": bad["latents"].expand(shape).clone()}
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(batch_size=1, num_inference_steps=2, output_type="pt", **bad)
