"""The evaluation room: `typemoe eval` (metrics per source, baselines, perturbations, control, infilling,
ablations) and the fits of the key and meter fusions that ship beside a model."""
