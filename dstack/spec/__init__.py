"""The workflow spec: models and field types, the loader of `.dstack/workflows*`, YAML
positions and problems (file, line, "did you mean"), the provider registry, the files a
workflow names, and env files."""
