"""The book's study: what chapters 01-13 compute and how they tell it, on top of the library and never under it.

study (the Severstal profiles, their data and the stored grid), sweeps (chapter 07's grids), findings and
conclusions (verdicts in words, chapter 11), compression (chapter 03's tables), unstructured (chapter 03's
structured-vs-unstructured timings), deployment (chapter 10), elpv and elpv_tables (chapter 13's real-data arm),
exercises (Part I's checks), distributed (the study's multi-process fine-tuning command), palette, diagram and
tables (the book's colours, drawings and column names).
"""
from .study import Study

__all__ = ["Study"]
