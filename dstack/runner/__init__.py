"""The runner, which executes a job on the target machine (`python -m dstack.runner`), with
its job script, the bootstrap that starts it, the job's Python environment, and the salvage
of a run whose runner is gone."""
