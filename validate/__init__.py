"""tierplan: validate."""
