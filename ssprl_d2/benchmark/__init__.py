"""Benchmarks behind ``tools/benchmark.py``: view generation (a) and the training step (b-d)."""
from .step import bench_training_step, trunk_flops_per_image
from .views import bench_view_generator, random_texture_images, reference_swav_pipeline

__all__ = [
    "bench_view_generator",
    "random_texture_images",
    "reference_swav_pipeline",
    "bench_training_step",
    "trunk_flops_per_image",
]
