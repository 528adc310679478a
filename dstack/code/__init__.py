"""A run's code: which files of the project are packaged (ignore rules, never the dstack
home or credentials), the archive, and code archives in the store."""
