"""Search spaces, one YAML file per model family (installed as `allocsearch.searchspaces`)."""
