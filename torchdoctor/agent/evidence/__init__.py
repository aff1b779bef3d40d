"""Evidence producers outside the static engine: the probes harness's document, read here."""
