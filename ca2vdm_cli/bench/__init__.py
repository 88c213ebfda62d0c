"""`ca2vdm bench`: setups, the runner, hardware probes, the report and its plot."""
