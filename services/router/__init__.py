"""Router service: validation, fan-out, routing gate, fusion, applicability, abstention, decision heads, the public API and OIP v2."""

# The built-in tasks' names (router/tasks.py TASKS, which a test keeps equal to this), here
# where the command line can read them without importing torch.
BUILT_IN_TASKS = ("screenshot_triage", "medical_report")
