"""The core: errors, atomic outputs, adapters and their profiles, models, targets, data, logging."""
