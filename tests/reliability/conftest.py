"""Reliability tests: killed runs, concurrent runs, bad options and bad inputs, per package
(``test_<package>_*.py``). Each failure must be one readable line and exit status 2, before long work."""
