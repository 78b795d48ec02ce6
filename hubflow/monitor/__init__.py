"""Monitoring a published model: compare what it sees and says on new rows with its reference (the test split it
was evaluated and published with), and say whether it drifted or degraded. Plain library, no Prefect:

    settings.Thresholds     when a score alarms (the monitor flow's form)
    stats                   PSI, chi-square, KS, MMD permutation test, Wilson and bootstrap intervals
    signals                 arrays -> Scores (value, threshold, alarm)
    assess                  a kind's monitor role + reference + batch -> MonitorReport
    report                  MonitorReport -> markdown table and a PNG (the Prefect artifact's body)

The kind-specific parts (what a classifier, a causal LM or an embedding model observes) are the kinds' own
`monitor` role: hubflow/kinds/<kind>/monitor.py. flows/monitor.py wires this into Prefect and emits the events.
"""
