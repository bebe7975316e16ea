"""Diffusion backbones: what DIFT runs on, behind one protocol (:mod:`.base`).

- :mod:`.base`: the :class:`~.base.Backbone` protocol, :class:`~.base.DiftComponents` (what loading yields).
- :mod:`.catalog`: every backbone's card as plain data -- feature blocks, size rule, presets, benchmark protocols.
- :mod:`.registry`: backbone name -> implementation.
- :mod:`.sd`: Stable Diffusion 1.x/2.x (DIFT_sd), the default.
- :mod:`.cleandift`: CleanDIFT (SD 2.1 with a fine-tuned UNet, no diffusion noise); :mod:`.unet_weights` replaces
  an SD UNet's weights from a safetensors file.
- :mod:`.adm_backbone`: DIFT_adm; :mod:`.adm` (checkpoint loading and caching), :mod:`.adm_convert` (guided-diffusion
  -> diffusers keys), :mod:`.adm_network` (``TruncatedADM``), :mod:`.adm_costs`.
- :mod:`.weights` / :mod:`.hub`: reading weight files without running code; local files or hub files.

Importing this package imports no model library and reads no file; each module loads what it needs when called.
"""
