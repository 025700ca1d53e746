"""Safety evaluation: behaviour sets, attacks, judges, model organisms (research artefacts for measuring and
explaining refusal, never for producing harm)."""
