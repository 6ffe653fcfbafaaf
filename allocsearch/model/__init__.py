"""Everything that touches torch and transformers: loading, family specs, space and costs from a
model, data, pruners, the supernet cache, composing candidates, dense passes, evaluation, export."""
