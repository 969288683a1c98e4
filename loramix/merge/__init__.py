"""Merging LoRA adapters without data: the methods, their tensor operations, factoring and the job."""
