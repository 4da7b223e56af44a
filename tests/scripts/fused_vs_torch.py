"""Run under TRITON_INTERPRET=1 (CPU): the fused Triton renderer against the torch reference.

Prints one JSON line of measured differences; tests/test_sim_fused.py asserts on them.
"""

import json
import math
import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from darklens.sim import fused  # noqa: E402
from darklens.sim import simulator as S  # noqa: E402
from darklens.sim.presets import get_config  # noqa: E402
from darklens.sim.rng import image_keys, pixel_noise_base, pixel_normal  # noqa: E402


def reference(config, p, keys):
    """The torch path with the hashed noise that CUDA uses (the CPU fast path draws randn)."""
    image = S.render_noise_free(config, p, "cpu")
    if config.noise:
        n = config.image_size
        sigma = torch.sqrt((torch.clamp(image, min=0.0) + config.sky) / p["exposure"][:, None, None]
                           + config.background_rms**2)
        image = image + sigma * pixel_normal(keys, S._NOISE_STREAM, (n, n))
    return image


def fused_images(config, labels, indices):
    keys = image_keys(7, 0, labels, indices)
    p = S.draw_params(config, keys, labels)
    return fused.render_pixels(config, p, pixel_noise_base(keys, S._NOISE_STREAM), "cpu"), p, keys


@triton.jit
def _atan2_kernel(y, x, out, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    m = i < n
    tl.store(out + i, fused._atan2(tl.load(y + i, mask=m), tl.load(x + i, mask=m)), mask=m)


result = {}
for preset, sets in (("model_a", {"noise": "false"}), ("model_a", {}), ("model_i", {})):
    # 40 px over the central arcseconds, so subhalos and vortices land on the arcs
    overrides = {"image_size": "40", "pixel_scale": "0.08", **sets}
    config = get_config(preset, overrides)
    labels, indices = torch.arange(6) % 3, torch.arange(6)
    got, p, keys = fused_images(config, labels, indices)
    ref = reference(config, p, keys)
    name = f"{preset}{'_noise_free' if sets else ''}"
    result[name] = float((got - ref).abs().max() / ref.abs().max())
    # the substructure must change the image: the check above is not vacuous
    no_sub = {k: (torch.zeros_like(v) if k.endswith("theta_E") and k != "theta_E" else v)
              for k, v in p.items()}
    no_sub["sub_count"] = torch.zeros_like(p["sub_count"])
    no_sub["vort_length"] = torch.zeros_like(p["vort_length"])
    bare = fused.render_pixels(config, no_sub, pixel_noise_base(keys, S._NOISE_STREAM), "cpu")
    result[f"{name}_substructure_effect"] = float(
        ((got - bare)[labels > 0].abs().amax((1, 2)) / got.abs().max()).min())
    half, _, _ = fused_images(config, labels[:3], indices[:3])
    result[f"{name}_batch_invariant"] = bool(torch.equal(half, got[:3]))

# render(backend="fused") as a whole (seed words, split ids, min-max, params) against eager
config = get_config("model_iii", {"image_size": "24", "noise": "false"})
labels, indices = torch.tensor([0, 1, 2, 2, 1]), torch.arange(5) + 2**33  # > 32-bit indices
split = torch.tensor([0, 1, 2, 0, 1])
seed = 2**40 + 12345  # both seed words matter
got, p_got = S.render(config, seed, split, labels, indices, "cpu", "fused")
want, p_want = S.render(config, seed, split, labels, indices, "cpu", "eager")
result["render_fused_vs_eager"] = float((got - want).abs().max())
result["render_params_equal"] = all(torch.equal(p_got[k], p_want[k]) for k in p_want)
other, _ = S.render(config, seed + 1, split, labels, indices, "cpu", "fused")
# with_signal: the substructure chi-square map of the fused branch against the eager one
sig_got, _ = S.render(config, seed, split, labels, indices, "cpu", "fused", with_signal=True)
sig_want, _ = S.render(config, seed, split, labels, indices, "cpu", "eager", with_signal=True)
result["signal_image_unchanged"] = bool(torch.equal(sig_got[:, :1], got))
result["signal_fused_vs_eager"] = float((sig_got[:, 1] - sig_want[:, 1]).abs().max()
                                        / sig_want[:, 1].abs().max())
result["signal_per_class_sums"] = [float(sig_got[labels == c, 1].sum()) for c in range(3)]
# and with noise, as training uses it: the map must stay noise-free
noisy = get_config("model_a", {"image_size": "40"})
sig_noisy, _ = S.render(noisy, seed, split, labels, indices, "cpu", "fused", with_signal=True)
sig_ref, _ = S.render(noisy, seed, split, labels, indices, "cpu", "eager", with_signal=True)
result["signal_noisy_fused_vs_eager"] = float((sig_noisy[:, 1] - sig_ref[:, 1]).abs().max()
                                              / sig_ref[:, 1].abs().max())
result["render_seed_changes_images"] = float((other - got).abs().max())

t = torch.linspace(-3.0, 3.0, 13)
y, x = torch.meshgrid(t, t, indexing="ij")
y = torch.cat([y.flatten(), torch.tensor([-0.0, -0.0])])
x = torch.cat([x.flatten(), torch.tensor([-1.0, -2.5])])
out = torch.empty_like(x)
_atan2_kernel[(1,)](y, x, out, x.numel(), BLOCK=256)
ref = torch.atan2(y, x)  # numpy/torch: atan2(-0.0, x < 0) = -pi, atan2(0, 0) = 0
ref[(y == 0) & (x == 0)] = 0.0
result["atan2_max_abs"] = float((out - ref).abs().max())
result["atan2_pi_on_negative_axis"] = float(out[(y == 0) & (x < 0)].abs().min() - math.pi)
print(json.dumps(result))
