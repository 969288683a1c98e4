"""LoRA Soups' CAT: the concatenated layer with learned weights, the α table, and the fit-cat job."""
