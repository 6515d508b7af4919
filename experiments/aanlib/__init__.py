"""The real-scan experiment: MR -> CT on the Harvard AANLIB brain CT / MR slice pairs.

See README.md beside this file; ``python -m experiments.aanlib --help`` lists the subcommands.
"""
