"""The tools that read finished runs: the `s7` command and the reports, evaluations and exports it makes."""
