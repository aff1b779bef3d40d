"""`python -m agent` runs the torchdoctor CLI."""

from agent.cli import main

main()
