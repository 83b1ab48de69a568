"""Optimizations of a model's weights, in the pipeline's order: variant -> prune -> quantize.

``pipeline`` builds a recipe's PyTorch model (``build(recipe) -> OptimizedModel``); ``variants`` names and
finds distilled students, ``distill`` trains one; ``prune`` and ``quantize`` change a model in place;
``stats`` is what a build reports.
"""
