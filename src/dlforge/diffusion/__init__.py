"""Gaussian diffusion: noise schedules, schedulers (one reverse step each) and sampling loops."""

from .sampling import generate, img2img, inpaint, outpaint, process_strip
from .schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    NoiseScheduler,
    SchedulerOutput,
    make_scheduler,
)

__all__ = ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "NoiseScheduler", "SchedulerOutput",
           "generate", "img2img", "inpaint", "make_scheduler", "outpaint", "process_strip"]
