"""What inspect reports: delta norms, cosines and sign conflicts, arranged per layer and module."""
