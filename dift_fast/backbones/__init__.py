"""Diffusion backbones beyond the default SD 2.1: their weight formats, conversions and truncated networks.

- :mod:`.adm` / :mod:`.adm_convert` / :mod:`.adm_network` / :mod:`.adm_costs`: DIFT_adm (guided-diffusion's
  256x256 unconditional ADM hosted by diffusers' ``UNet2DModel``).
- :mod:`.cleandift`: CleanDIFT's UNet weights for SD 2.1.
- :mod:`.weights`: reading weight files without running code, checking keys and shapes.

Importing this package imports no model library and reads no file; each module loads what it needs when called.
"""
