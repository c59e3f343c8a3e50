"""Prefect flows wiring medflow's stage tasks."""
