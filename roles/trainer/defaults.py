"""Defaults of role trainer; a node gets it when the stack labels it `trainer: "true"`."""

DEFAULTS = {
    # The trainer's venvs (one per build, behind the link `venv`) and its script.
    "trainer_home": "/opt/podium/trainer",
    # Where wheelhouses shipped from the control machine land (shared with the engines).
    "trainer_wheelhouses": "/opt/podium/wheelhouses",
}
