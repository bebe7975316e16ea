"""Glue to other pipelines: hloc's HDF5 files (``dift-fast match-pairs``) and COLMAP databases (pycolmap).

Nothing here is imported by ``import dift_fast``; h5py and pycolmap are imported on first use
(``pip install dift-fast[colmap]``). See docs/interop.md.
"""
