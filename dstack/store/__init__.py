"""Stores: the interface and its local, S3 and GCS implementations, the pending view of a
bucket not created yet, a job's log and artifact sync into a store, and secrets kept there."""
