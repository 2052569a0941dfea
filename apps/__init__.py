"""Applications over the stages: what needs more than one stage at once (the demo, the
consistency check), which the stages themselves never import."""
