"""Shared test setup: quiet TensorFlow, and keep every test's files in its own tmp dir."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
