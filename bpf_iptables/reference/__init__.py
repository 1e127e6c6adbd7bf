"""Reference semantics: netfilter's verdicts and counters, in plain Python."""
