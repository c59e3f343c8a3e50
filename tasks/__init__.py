"""Thin Prefect tasks: open artifact -> call a pure function -> write artifact atomically -> return a reference."""
