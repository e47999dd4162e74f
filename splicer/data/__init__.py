"""The data pipeline: synthetic, CIFAR and image-folder data as device-side batch streams."""

from splicer.data.build import build_data
from splicer.data.bundle import Batches, DataBundle
from splicer.data.throughput import measure_pipeline_throughput

__all__ = ["Batches", "DataBundle", "build_data", "measure_pipeline_throughput"]
