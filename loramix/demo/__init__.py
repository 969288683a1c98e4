"""The demo: LoRA Soups' experiment on the bundled model, through the commands' own job functions."""
