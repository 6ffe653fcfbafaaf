"""The application: configuration, sessions, the search loop, runners (in process and on Ray),
the entry points `search` and `export`, the planner and plots."""
