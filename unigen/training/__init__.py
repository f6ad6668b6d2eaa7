"""unigen.training: config, train state, the jitted step, checkpoints and the loop."""
