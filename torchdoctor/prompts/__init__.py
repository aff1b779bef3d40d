"""Jinja2 prompt templates (English and French) for the LLM reasoner; data, shipped as a package."""
