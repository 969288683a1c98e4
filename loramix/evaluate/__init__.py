"""Evaluation: metrics, batched generation, the program sandbox and the eval job."""
