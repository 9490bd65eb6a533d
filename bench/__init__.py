"""Benchmarks for PRISM in SGLang: end-to-end serving (`bench/serving.py`), simulated 8B cycle cost
(`bench/simulated.py`), and the report that puts them and the offline acceptance evaluation side by side
(`bench/report.py`). The scripts run as `python bench/<name>.py`; this package holds what they share.
"""
