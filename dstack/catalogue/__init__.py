"""The instance catalogue: instance types with their GPUs and list prices (`data/`), and the
offers that fit a job's resources."""
