"""`python -m torchdoctor` runs the torchdoctor CLI."""

from torchdoctor.agent.cli import main

main()
