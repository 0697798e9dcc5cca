"""tierplan: kernels."""
