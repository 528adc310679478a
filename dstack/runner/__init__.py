"""The runner, which executes a job on the target machine (`python -m dstack.runner`), with
its job script, the bootstrap that starts it and the job's Python environment."""
