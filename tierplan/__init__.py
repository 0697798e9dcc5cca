"""The `tierplan` console entry point and its subcommands.

This package sits above every other: it imports ``hwmodels``, ``kernels``, ``simulator``,
``planners`` and ``validate``, and none of them imports it.
"""
