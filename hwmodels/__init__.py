"""tierplan: hwmodels."""
