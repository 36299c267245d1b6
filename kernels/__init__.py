"""Numba kernels (CPU, and CUDA twins where a GPU pays off).

Imported as ``disktrain.kernels``; these modules know nothing of disktrain and take and
return NumPy arrays only.
"""
