"""The study's report: which runs exist (`study`), their numbers (`collect`), tables and figures.

Only the notebooks import this package; nothing else in studylib depends on it.
"""
