"""`podium bundle`: everything a stack installs, in one verifiable folder for air-gapped sites."""
