"""Runs: the record and its job, planning and submitting, the context of a command, the life
cycle (provision, stop, tear down, repair), following, listing, audit, tags, artifacts and
the project a run belongs to."""
