"""tierplan: planners."""
