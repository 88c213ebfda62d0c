"""Run a script (or -m module) with the sampler's predicted x0 clamped to [-LIM, LIM] (0: off).
Usage: python benchmarks/sprites/clip_x0.py LIM SCRIPT.py ARGS...  |  LIM -m ca2vdm_cli eval ..."""

import runpy
import sys

from ca2vdm_cli.sampling.ddpm import Diffusion

orig = Diffusion.predict_x0
lim = float(sys.argv.pop(1))
if lim > 0:
    Diffusion.predict_x0 = lambda self, x, eps, i: orig(self, x, eps, i).clamp(-lim, lim)
sys.argv = sys.argv[1:]
if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(sys.argv[0], run_name="__main__")
