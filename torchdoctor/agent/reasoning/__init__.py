"""Reasoners turn one checklist point's evidence into findings and coverage verdicts."""
