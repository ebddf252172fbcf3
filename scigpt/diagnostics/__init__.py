"""Weight diagnostics: heavy-tailed self-regularization (HTSR) spectra of weight matrices."""
