"""tierplan: simulator."""
