"""Static detectors: the engine, shared analyses, native rules (`rules/`), peer linters."""
