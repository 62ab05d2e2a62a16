"""The eval stage and what it measures: metrics, intervals, the report and comparisons between runs."""
