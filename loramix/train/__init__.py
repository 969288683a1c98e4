"""Training: the optimiser loop shared by train-skill and fit-cat, and the train-skill job."""
